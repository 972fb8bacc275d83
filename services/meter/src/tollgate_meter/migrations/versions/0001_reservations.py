"""reservations ledger

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reservations",
        sa.Column("request_id", sa.Text, primary_key=True),
        sa.Column("principal", sa.Text, nullable=False),
        sa.Column("model", sa.Text),
        sa.Column("reserved_input", sa.Integer, nullable=False),
        sa.Column("reserved_output", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("input_tokens", sa.Integer),
        sa.Column("output_tokens", sa.Integer),
        sa.Column("cost_usd", sa.Numeric(18, 8)),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("settled_at", sa.DateTime(timezone=True)),
        schema="meter",
    )
    op.create_index(
        "reservations_principal_created", "reservations", ["principal", "created_at"],
        schema="meter",
    )


def downgrade() -> None:
    op.drop_table("reservations", schema="meter")

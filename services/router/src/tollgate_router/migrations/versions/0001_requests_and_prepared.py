"""request journal and prepared responses

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
        "requests",
        sa.Column("request_id", sa.Text, primary_key=True),
        sa.Column("principal", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="1"),
        sa.Column("records", sa.Text),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint(
            "state IN ('started', 'streaming', 'settling', 'settled')", name="requests_state"
        ),
        schema="router",
    )
    op.create_index("requests_updated", "requests", ["updated_at"], schema="router")
    op.create_table(
        "prepared_responses",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("model_scope", sa.Text, nullable=False),
        sa.Column("principal", sa.Text),
        sa.Column("scope_principal", sa.Text, nullable=False),
        sa.Column("response", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.UniqueConstraint("key", "model_scope", "scope_principal", name="prepared_scope"),
        schema="router",
    )
    op.create_index("prepared_expires", "prepared_responses", ["expires_at"], schema="router")


def downgrade() -> None:
    op.drop_table("prepared_responses", schema="router")
    op.drop_table("requests", schema="router")

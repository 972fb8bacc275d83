"""token windows: principals, tiers, buckets, monthly periods; reservations remember their
bucket and decision

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TOKENS = (
    ("input_tokens", sa.BigInteger), ("output_tokens", sa.BigInteger),
    ("reserved_input", sa.BigInteger), ("reserved_output", sa.BigInteger),
    ("requests", sa.BigInteger),
)


def _counters() -> list[sa.Column[int]]:
    return [sa.Column(name, type_, nullable=False, server_default="0") for name, type_ in _TOKENS]


def upgrade() -> None:
    op.create_table(
        "principals",
        sa.Column("principal", sa.Text, primary_key=True),
        sa.Column("tier", sa.Text),
        sa.Column("windows", JSONB),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        schema="meter",
    )
    op.create_table(
        "tiers",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("spec", JSONB, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        schema="meter",
    )
    op.create_table(
        "buckets",
        sa.Column("principal", sa.Text, primary_key=True),
        sa.Column("bucket_start", sa.DateTime(timezone=True), primary_key=True),
        *_counters(),
        schema="meter",
    )
    op.create_table(
        "periods",
        sa.Column("principal", sa.Text, primary_key=True),
        sa.Column("period_start", sa.Date, primary_key=True),
        *_counters(),
        schema="meter",
    )
    op.add_column("reservations", sa.Column("bucket_start", sa.DateTime(timezone=True)),
                  schema="meter")
    op.add_column("reservations", sa.Column("period_start", sa.Date), schema="meter")
    op.add_column("reservations", sa.Column("tier", sa.Text), schema="meter")
    op.add_column("reservations", sa.Column("rejection", JSONB), schema="meter")
    op.add_column("reservations", sa.Column("released_at", sa.DateTime(timezone=True)),
                  schema="meter")
    op.create_index("reservations_open", "reservations", ["created_at"], schema="meter",
                    postgresql_where=sa.text("status = 'reserved'"))
    op.create_index("reservations_principal_model", "reservations", ["principal", "model"],
                    schema="meter")


def downgrade() -> None:
    op.drop_index("reservations_principal_model", "reservations", schema="meter")
    op.drop_index("reservations_open", "reservations", schema="meter")
    for column in ("released_at", "rejection", "tier", "period_start", "bucket_start"):
        op.drop_column("reservations", column, schema="meter")
    for table in ("periods", "buckets", "tiers", "principals"):
        op.drop_table(table, schema="meter")

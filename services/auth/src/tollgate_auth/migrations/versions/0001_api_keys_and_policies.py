"""api keys and group policies

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.Text, primary_key=True),
        sa.Column("principal", sa.Text, nullable=False),
        sa.Column("groups", ARRAY(sa.Text), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("key_hash", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        schema="auth",
    )
    op.create_index("api_keys_principal", "api_keys", ["principal"], schema="auth")
    op.create_table(
        "group_policies",
        sa.Column("group_name", sa.Text, primary_key=True),
        sa.Column("models", ARRAY(sa.Text), nullable=False),
        sa.Column("tier", sa.Text),
        sa.Column("rank", sa.Integer, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        schema="auth",
    )


def downgrade() -> None:
    op.drop_table("group_policies", schema="auth")
    op.drop_table("api_keys", schema="auth")

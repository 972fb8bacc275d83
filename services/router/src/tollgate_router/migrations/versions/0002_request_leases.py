"""request leases: which attempt works on a request, and until when

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "requests", sa.Column("owner", sa.Text, nullable=False, server_default=""), schema="router"
    )
    op.add_column(
        "requests", sa.Column("lease_until", sa.DateTime(timezone=True)), schema="router"
    )


def downgrade() -> None:
    op.drop_column("requests", "lease_until", schema="router")
    op.drop_column("requests", "owner", schema="router")

"""finished reservations by age, so the sweeper can prune them in batches

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("reservations_finished", "reservations", ["created_at"], schema="meter",
                    postgresql_where=sa.text("status <> 'reserved'"))


def downgrade() -> None:
    op.drop_index("reservations_finished", "reservations", schema="meter")

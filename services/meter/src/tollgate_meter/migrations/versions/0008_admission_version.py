"""admission without the principal's row lock: meter.principals.admissions

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# How many batches of the principal's requests have been decided: an admission reads it with
# the counters and writes its decisions only if it is still what it read (a compare-and-set),
# instead of locking the row for a whole transaction. The lock-taking reads of 0004 and 0005
# are no longer called.
_FUNCTIONS = {
    "0004_admission_state": "meter.admission_state(text, text, timestamptz, date)",
    "0005_admission_batches": "meter.admission_state_many(text, text[], timestamptz, date)",
}


def upgrade() -> None:
    op.add_column(
        "principals",
        sa.Column("admissions", sa.BigInteger, nullable=False, server_default="0"),
        schema="meter",
    )
    for signature in _FUNCTIONS.values():
        op.execute(f"DROP FUNCTION IF EXISTS {signature}")


def downgrade() -> None:
    for module in _FUNCTIONS:
        path = Path(__file__).with_name(f"{module}.py")
        spec = importlib.util.spec_from_file_location(f"meter_{module}", path)
        assert spec is not None and spec.loader is not None
        migration = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(migration)
        migration.upgrade()
    op.drop_column("principals", "admissions", schema="meter")

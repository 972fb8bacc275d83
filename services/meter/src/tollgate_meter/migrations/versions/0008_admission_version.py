"""admission without the principal's row lock: meter.principals.admissions

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

import importlib.util
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# How many batches of the principal's requests have been decided: an admission reads it with
# the counters and writes its decisions only if it is still what it read (a compare-and-set),
# instead of locking the row for a whole transaction.
#
# The lock-taking reads of 0004 and 0005 are no longer called by this release, but replicas of
# the previous one call them until a rolling upgrade replaces them. From here on they count
# the admission they lock the row for, so the two kinds of replica stay exact side by side:
# a batch this release read before such a lock loses its compare-and-set, and the lock, taken
# after this release's write (which holds the row while it runs), is followed by a read that
# sees what it wrote. A later release drops them.
_LOCK = (
    "SELECT p.tier, p.windows INTO tier, windows\n"
    "    FROM meter.principals p WHERE p.principal = p_principal FOR UPDATE;"
)
_LOCK_COUNTING = (
    "UPDATE meter.principals p SET admissions = p.admissions + 1\n"
    "    WHERE p.principal = p_principal RETURNING p.tier, p.windows INTO tier, windows;"
)
_CREATE = (
    "INSERT INTO meter.principals AS p (principal) VALUES (p_principal)\n"
    "    ON CONFLICT (principal) DO UPDATE SET principal = EXCLUDED.principal"
)
_CREATE_COUNTING = (
    "INSERT INTO meter.principals AS p (principal, admissions) VALUES (p_principal, 1)\n"
    "    ON CONFLICT (principal) DO UPDATE SET admissions = p.admissions + 1"
)
_STALE_COMMENT = "-- an existing row is locked without writing a new version of it\n"
_PREVIOUS = ("0004_admission_state", "0005_admission_batches")


def _previous(name: str) -> ModuleType:
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"meter_migration_{name}", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"migration {name} not found beside {__file__}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _counting(function: str) -> str:
    counting = function.replace(_LOCK, _LOCK_COUNTING).replace(_CREATE, _CREATE_COUNTING)
    if counting.count("admissions + 1") != 2:
        raise RuntimeError("the lock statements of an earlier admission function were not found")
    return counting.replace(_STALE_COMMENT, "")


def upgrade() -> None:
    op.add_column(
        "principals",
        sa.Column("admissions", sa.BigInteger, nullable=False, server_default="0"),
        schema="meter",
    )
    for name in _PREVIOUS:
        op.execute(_counting(_previous(name)._FUNCTION))


def downgrade() -> None:
    for name in _PREVIOUS:
        _previous(name).upgrade()  # CREATE OR REPLACE: the functions as they were
    op.drop_column("principals", "admissions", schema="meter")

"""admission's row lock and reads in one round trip: meter.admission_state()

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Two statements in one call. The first takes the principal's row lock (creating the row if
# need be); the second reads the earlier decision and the counters. They must be separate
# statements: under READ COMMITTED a statement that waited for the lock still reads with the
# snapshot it started with, and would miss what the lock's previous holder committed. A
# VOLATILE function takes a fresh snapshot for each statement it runs, so the second
# statement sees it, and the client pays one round trip instead of two.
_FUNCTION = """
CREATE OR REPLACE FUNCTION meter.admission_state(
  p_principal text, p_request text, p_oldest timestamptz, p_month date,
  OUT tier text, OUT windows jsonb, OUT previous json, OUT buckets json, OUT period json)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  -- an existing row is locked without writing a new version of it
  SELECT p.tier, p.windows INTO tier, windows
    FROM meter.principals p WHERE p.principal = p_principal FOR UPDATE;
  IF NOT FOUND THEN
    INSERT INTO meter.principals AS p (principal) VALUES (p_principal)
    ON CONFLICT (principal) DO UPDATE SET principal = EXCLUDED.principal
    RETURNING p.tier, p.windows INTO tier, windows;
  END IF;
  SELECT
    (SELECT json_build_object('tier', r.tier, 'rejection', r.rejection)
       FROM meter.reservations r WHERE r.request_id = p_request),
    (SELECT json_agg(json_build_object(
         'bucket_start', b.bucket_start, 'input_tokens', b.input_tokens,
         'output_tokens', b.output_tokens, 'reserved_input', b.reserved_input,
         'reserved_output', b.reserved_output, 'requests', b.requests))
       FROM meter.buckets b WHERE b.principal = p_principal AND b.bucket_start >= p_oldest),
    (SELECT json_build_object(
         'input_tokens', m.input_tokens, 'output_tokens', m.output_tokens,
         'reserved_input', m.reserved_input, 'reserved_output', m.reserved_output,
         'requests', m.requests)
       FROM meter.periods m WHERE m.principal = p_principal AND m.period_start = p_month)
  INTO previous, buckets, period;
END
$$
"""


def upgrade() -> None:
    op.execute(_FUNCTION)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS meter.admission_state(text, text, timestamptz, date)")

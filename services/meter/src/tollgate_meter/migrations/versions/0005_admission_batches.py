"""admission decides a principal's pending requests in one transaction:
meter.admission_state_many()

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# As meter.admission_state() (0004), for several requests of one principal at once: the
# principal's row lock, then, with a fresh snapshot, the earlier decisions of any of the
# requests (an object keyed by request id) and the counters.
_FUNCTION = """
CREATE OR REPLACE FUNCTION meter.admission_state_many(
  p_principal text, p_requests text[], p_oldest timestamptz, p_month date,
  OUT tier text, OUT windows jsonb, OUT previous json, OUT buckets json, OUT period json)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  SELECT p.tier, p.windows INTO tier, windows
    FROM meter.principals p WHERE p.principal = p_principal FOR UPDATE;
  IF NOT FOUND THEN
    INSERT INTO meter.principals AS p (principal) VALUES (p_principal)
    ON CONFLICT (principal) DO UPDATE SET principal = EXCLUDED.principal
    RETURNING p.tier, p.windows INTO tier, windows;
  END IF;
  SELECT
    (SELECT json_object_agg(r.request_id,
         json_build_object('tier', r.tier, 'rejection', r.rejection))
       FROM meter.reservations r WHERE r.request_id = ANY(p_requests)),
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
    op.execute(
        "DROP FUNCTION IF EXISTS meter.admission_state_many(text, text[], timestamptz, date)"
    )

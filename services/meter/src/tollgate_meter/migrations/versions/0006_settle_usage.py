"""settlement in one round trip: meter.settle_usage()

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# What PostgresLedger.settle did in five statements, in one call: lock the request's row
# (recording usage for a request never admitted in the bucket and month it happened in),
# replace its reservation by the usage in its bucket, then its month — the order admission
# and the sweeper change counters in — and mark it settled. False when it already was.
_FUNCTION = """
CREATE OR REPLACE FUNCTION meter.settle_usage(
  p_request text, p_principal text, p_model text, p_input integer, p_output integer,
  p_cost numeric, p_now timestamptz, p_bucket timestamptz, p_period date)
RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  r record;
  v_bucket timestamptz := p_bucket;
  v_period date := p_period;
  v_ri integer := 0;
  v_ro integer := 0;
  v_requests integer := 0;
BEGIN
  SELECT status, bucket_start, period_start, reserved_input, reserved_output INTO r
    FROM meter.reservations WHERE request_id = p_request FOR UPDATE;
  IF FOUND THEN
    IF r.status = 'settled' THEN
      RETURN false;
    END IF;
    v_bucket := r.bucket_start;
    v_period := r.period_start;
    IF r.status = 'reserved' THEN
      v_ri := r.reserved_input;
      v_ro := r.reserved_output;
    END IF;
  ELSE
    v_requests := 1;
    INSERT INTO meter.reservations (request_id, principal, model, reserved_input,
      reserved_output, status, created_at, bucket_start, period_start)
    VALUES (p_request, p_principal, p_model, 0, 0, 'reserved', p_now, v_bucket, v_period);
  END IF;
  INSERT INTO meter.buckets AS b (principal, bucket_start, input_tokens, output_tokens,
    reserved_input, reserved_output, requests)
  VALUES (p_principal, v_bucket, p_input, p_output, -v_ri, -v_ro, v_requests)
  ON CONFLICT (principal, bucket_start) DO UPDATE SET
    input_tokens = b.input_tokens + EXCLUDED.input_tokens,
    output_tokens = b.output_tokens + EXCLUDED.output_tokens,
    reserved_input = b.reserved_input + EXCLUDED.reserved_input,
    reserved_output = b.reserved_output + EXCLUDED.reserved_output,
    requests = b.requests + EXCLUDED.requests;
  INSERT INTO meter.periods AS m (principal, period_start, input_tokens, output_tokens,
    reserved_input, reserved_output, requests)
  VALUES (p_principal, v_period, p_input, p_output, -v_ri, -v_ro, v_requests)
  ON CONFLICT (principal, period_start) DO UPDATE SET
    input_tokens = m.input_tokens + EXCLUDED.input_tokens,
    output_tokens = m.output_tokens + EXCLUDED.output_tokens,
    reserved_input = m.reserved_input + EXCLUDED.reserved_input,
    reserved_output = m.reserved_output + EXCLUDED.reserved_output,
    requests = m.requests + EXCLUDED.requests;
  UPDATE meter.reservations SET status = 'settled', input_tokens = p_input,
    output_tokens = p_output, cost_usd = p_cost, model = coalesce(model, p_model),
    settled_at = p_now
  WHERE request_id = p_request;
  RETURN true;
END
$$
"""


def upgrade() -> None:
    op.execute(_FUNCTION)


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION IF EXISTS meter.settle_usage(text, text, text, integer, integer,"
        " numeric, timestamptz, timestamptz, date)"
    )

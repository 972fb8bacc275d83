"""settlement of a batch of usage records in one round trip: meter.settle_usages()

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# meter.settle_usage() for many requests at once (each request once in the arrays), in one
# transaction. The locks are taken in the order the rest of the ledger takes them, so a batch
# never waits in a cycle with an admission, the sweeper or another batch: the batch's
# reservation rows (by request id), then every bucket (by principal and start), then every
# month (likewise). Calling settle_usage() once per request in one statement would lock a
# month before the next request's bucket, the reverse of an admission's order.
# Returns the requests settled now; the others were settled before.
_FUNCTION = """
CREATE OR REPLACE FUNCTION meter.settle_usages(
  p_requests text[], p_principals text[], p_models text[], p_inputs integer[],
  p_outputs integer[], p_costs numeric[], p_now timestamptz, p_buckets timestamptz[],
  p_periods date[])
RETURNS SETOF text LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  v_new text[];
BEGIN
  PERFORM 1 FROM meter.reservations WHERE request_id = ANY(p_requests)
    ORDER BY request_id FOR UPDATE;
  -- usage of a request never admitted: recorded in the bucket and month it happened in
  WITH added AS (
    INSERT INTO meter.reservations (request_id, principal, model, reserved_input,
      reserved_output, status, created_at, bucket_start, period_start)
    SELECT x.r, x.p, x.m, 0, 0, 'reserved', p_now, x.b, x.per
    FROM unnest(p_requests, p_principals, p_models, p_buckets, p_periods) AS x(r, p, m, b, per)
    WHERE NOT EXISTS (SELECT 1 FROM meter.reservations WHERE request_id = x.r)
    ORDER BY x.r
    RETURNING request_id)
  SELECT coalesce(array_agg(request_id), '{}') INTO v_new FROM added;

{buckets}
{periods}
  RETURN QUERY
  UPDATE meter.reservations AS r SET status = 'settled', input_tokens = x.i,
    output_tokens = x.o, cost_usd = x.c, model = coalesce(r.model, x.m), settled_at = p_now
  FROM unnest(p_requests, p_models, p_inputs, p_outputs, p_costs) AS x(r, m, i, o, c)
  WHERE r.request_id = x.r AND r.status <> 'settled'
  RETURNING r.request_id;
END
$$
"""

# One table's counters (buckets or months) changed by the batch, each row once, in key order.
_COUNTERS = """
  INSERT INTO meter.{table} AS t (principal, {key}, input_tokens, output_tokens,
    reserved_input, reserved_output, requests)
  SELECT w.principal, w.{key}, sum(w.i), sum(w.o), -sum(w.ri), -sum(w.ro), sum(w.n)
  FROM meter._usages_to_settle(p_requests, p_principals, p_inputs, p_outputs, v_new) AS w
  GROUP BY w.principal, w.{key} ORDER BY w.principal, w.{key}
  ON CONFLICT (principal, {key}) DO UPDATE SET
    input_tokens = t.input_tokens + EXCLUDED.input_tokens,
    output_tokens = t.output_tokens + EXCLUDED.output_tokens,
    reserved_input = t.reserved_input + EXCLUDED.reserved_input,
    reserved_output = t.reserved_output + EXCLUDED.reserved_output,
    requests = t.requests + EXCLUDED.requests;"""

# What each request of a batch not yet settled changes: its usage, for the principal the
# record names (as meter.settle_usage() does), in its reservation's bucket and month, giving back what it still holds reserved (its rows are locked by then).
_WORK = """
CREATE OR REPLACE FUNCTION meter._usages_to_settle(
  p_requests text[], p_principals text[], p_inputs integer[], p_outputs integer[],
  p_new text[])
RETURNS TABLE (principal text, bucket_start timestamptz, period_start date, i bigint,
  o bigint, ri bigint, ro bigint, n bigint)
LANGUAGE sql STABLE AS $$
  SELECT x.p, r.bucket_start, r.period_start, x.i, x.o,
    CASE WHEN r.status = 'reserved' THEN r.reserved_input ELSE 0 END,
    CASE WHEN r.status = 'reserved' THEN r.reserved_output ELSE 0 END,
    CASE WHEN r.request_id = ANY(p_new) THEN 1 ELSE 0 END
  FROM unnest(p_requests, p_principals, p_inputs, p_outputs) AS x(r, p, i, o)
  JOIN meter.reservations AS r ON r.request_id = x.r
  WHERE r.status <> 'settled'
$$
"""


def upgrade() -> None:
    op.execute(_WORK)
    op.execute(
        _FUNCTION.replace(
            "{buckets}", _COUNTERS.format(table="buckets", key="bucket_start")
        ).replace("{periods}", _COUNTERS.format(table="periods", key="period_start"))
    )


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION IF EXISTS meter.settle_usages(text[], text[], text[], integer[],"
        " integer[], numeric[], timestamptz, timestamptz[], date[])"
    )
    op.execute(
        "DROP FUNCTION IF EXISTS meter._usages_to_settle(text[], text[], integer[], integer[],"
        " text[])"
    )

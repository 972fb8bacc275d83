-- Athena: parameters are year, month, day (integers) of one UTC day, in that order, e.g.
-- aws athena start-query-execution --query-string file://latency-by-model.sql \
--   --execution-parameters 2026 11 22 --query-execution-context Database=tollgate ...
-- The partition predicate prunes the scan to that day.
-- approx_percentile: Athena's quantiles are approximate (a q-digest), DuckDB's exact.
SELECT model, count(*) AS requests,
       approx_percentile(time_to_first_token_ms, 0.5)  AS ttft_p50,
       approx_percentile(time_to_first_token_ms, 0.95) AS ttft_p95,
       approx_percentile(time_to_first_token_ms, 0.99) AS ttft_p99,
       approx_percentile(latency_ms, 0.5)  AS latency_p50,
       approx_percentile(latency_ms, 0.95) AS latency_p95,
       approx_percentile(latency_ms, 0.99) AS latency_p99
FROM tollgate.logs
WHERE year = ? AND month = ? AND day = ? AND status = 'ok'
GROUP BY model
ORDER BY model;

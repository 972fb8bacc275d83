-- Athena: parameters are year, month, day (integers) of one UTC day, in that order, e.g.
-- aws athena start-query-execution --query-string file://usage-by-day.sql \
--   --execution-parameters 2026 11 22 --query-execution-context Database=tollgate ...
-- The partition predicate prunes the scan to that day.
-- (for a range of days, replace the day predicate by one on year/month)
SELECT date(finished_at) AS day, count(*) AS requests, count(DISTINCT principal) AS users,
       sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
       sum(cost_usd) AS cost_usd
FROM tollgate.logs
WHERE year = ? AND month = ? AND day = ?
GROUP BY date(finished_at)
ORDER BY day;

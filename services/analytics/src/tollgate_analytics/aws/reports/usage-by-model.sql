-- Athena: parameters are year, month, day (integers) of one UTC day, in that order, e.g.
-- aws athena start-query-execution --query-string file://usage-by-model.sql \
--   --execution-parameters 2026 11 22 --query-execution-context Database=tollgate ...
-- The partition predicate prunes the scan to that day.
SELECT model, count(*) AS requests,
       sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
       sum(input_tokens + output_tokens) AS total_tokens, sum(cost_usd) AS cost_usd
FROM tollgate.logs
WHERE year = ? AND month = ? AND day = ?
GROUP BY model
ORDER BY total_tokens DESC, model;

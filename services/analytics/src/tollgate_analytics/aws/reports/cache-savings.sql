-- Athena: parameters are year, month, day (integers) of one UTC day, in that order, e.g.
-- aws athena start-query-execution --query-string file://cache-savings.sql \
--   --execution-parameters 2026 11 22 --query-execution-context Database=tollgate ...
-- The partition predicate prunes the scan to that day.
WITH per_model AS (
  SELECT model,
         count_if(cache_hit) AS cache_hits,
         count(*) AS requests,
         sum(IF(cache_hit, input_tokens + output_tokens, 0)) AS tokens_saved,
         sum(IF(cache_hit, 0, cost_usd)) AS paid_usd,
         sum(IF(cache_hit, 0, input_tokens + output_tokens)) AS paid_tokens
  FROM tollgate.logs
  WHERE year = ? AND month = ? AND day = ?
  GROUP BY model
)
SELECT model, requests, cache_hits,
       round(CAST(cache_hits AS double) / requests, 4) AS hit_rate,
       tokens_saved,
       round(coalesce(tokens_saved * paid_usd / nullif(paid_tokens, 0), 0), 6) AS cost_saved_usd
FROM per_model
ORDER BY cache_hits DESC, model;

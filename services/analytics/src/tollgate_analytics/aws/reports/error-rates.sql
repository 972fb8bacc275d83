-- Athena: parameters are year, month, day (integers) of one UTC day, in that order, e.g.
-- aws athena start-query-execution --query-string file://error-rates.sql \
--   --execution-parameters 2026 11 22 --query-execution-context Database=tollgate ...
-- The partition predicate prunes the scan to that day.
SELECT model, coalesce(error_type, status) AS error_type, count(*) AS errors,
       round(CAST(count(*) AS double) / arbitrary(total), 4) AS rate
FROM (
  SELECT *, count(*) OVER (PARTITION BY model) AS total
  FROM tollgate.logs
  WHERE year = ? AND month = ? AND day = ?
)
WHERE status <> 'ok'
GROUP BY model, coalesce(error_type, status)
ORDER BY model, errors DESC;

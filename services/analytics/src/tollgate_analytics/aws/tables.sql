-- Glue/Athena tables over the Tollgate analytics dataset in S3, with partition projection:
-- no crawler and no MSCK REPAIR, Athena computes the year/month/day/hour partitions itself.
-- Replace s3://YOUR-BUCKET/analytics with TOLLGATE_ANALYTICS_S3_BUCKET/_PREFIX and set the
-- projection ranges' first year. Files under _segments/ are the sink's markers, not data;
-- they are outside both table locations.

CREATE DATABASE IF NOT EXISTS tollgate;

CREATE EXTERNAL TABLE IF NOT EXISTS tollgate.logs (
  request_id             string,
  principal              string,
  groups                 array<string>,
  model                  string,
  provider               string,
  status                 string,
  error_type             string,
  input_tokens           bigint,
  output_tokens          bigint,
  cost_usd               decimal(18,8),
  cache_hit              boolean,
  retries                int,
  fallback_used          boolean,
  time_to_first_token_ms bigint,
  latency_ms             bigint,
  conversation_id        string,
  protocol               string,
  started_at             timestamp,
  finished_at            timestamp,
  kafka_partition        int,
  kafka_offset           bigint
)
PARTITIONED BY (year int, month int, day int, hour int)
STORED AS PARQUET
LOCATION 's3://YOUR-BUCKET/analytics/logs/'
TBLPROPERTIES (
  'parquet.compression'         = 'ZSTD',
  'projection.enabled'          = 'true',
  'projection.year.type'        = 'integer',
  'projection.year.range'       = '2025,2100',
  'projection.month.type'       = 'integer',
  'projection.month.range'      = '1,12',
  'projection.month.digits'     = '2',
  'projection.day.type'         = 'integer',
  'projection.day.range'        = '1,31',
  'projection.day.digits'       = '2',
  'projection.hour.type'        = 'integer',
  'projection.hour.range'       = '0,23',
  'projection.hour.digits'      = '2',
  'storage.location.template'   =
    's3://YOUR-BUCKET/analytics/logs/year=${year}/month=${month}/day=${day}/hour=${hour}/'
);

CREATE EXTERNAL TABLE IF NOT EXISTS tollgate.usage (
  request_id      string,
  principal       string,
  model           string,
  provider        string,
  status          string,
  input_tokens    bigint,
  output_tokens   bigint,
  cost_usd        decimal(18,8),
  occurred_at     timestamp,
  kafka_partition int,
  kafka_offset    bigint
)
PARTITIONED BY (year int, month int, day int, hour int)
STORED AS PARQUET
LOCATION 's3://YOUR-BUCKET/analytics/usage/'
TBLPROPERTIES (
  'parquet.compression'         = 'ZSTD',
  'projection.enabled'          = 'true',
  'projection.year.type'        = 'integer',
  'projection.year.range'       = '2025,2100',
  'projection.month.type'       = 'integer',
  'projection.month.range'      = '1,12',
  'projection.month.digits'     = '2',
  'projection.day.type'         = 'integer',
  'projection.day.range'        = '1,31',
  'projection.day.digits'       = '2',
  'projection.hour.type'        = 'integer',
  'projection.hour.range'       = '0,23',
  'projection.hour.digits'      = '2',
  'storage.location.template'   =
    's3://YOUR-BUCKET/analytics/usage/year=${year}/month=${month}/day=${day}/hour=${hour}/'
);

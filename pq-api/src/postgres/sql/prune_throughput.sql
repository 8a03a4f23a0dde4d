-- Removes the per-minute records older than $1 int8 µs → n int8, how many went.
WITH gone AS (
  DELETE FROM {throughput}
  WHERE minute < statement_timestamp() - $1::int8 * interval '1 microsecond'
  RETURNING 1
)
SELECT count(*)::int8 AS n FROM gone

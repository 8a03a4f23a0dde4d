-- Extends a lease: $1 int8 id, $2 int8 token, $3 int8 lease µs → run_at, the new expiry. The
-- job's key, and its place under its queue's concurrency limit, stay held as long.
WITH e AS (
  UPDATE {jobs} SET run_at = statement_timestamp() + $3::int8 * interval '1 microsecond'
  WHERE id = $1::int8 AND lease_token = $2::int8 AND state = 'running'
  RETURNING id, queue, key, lease_token, run_at
), moved AS (
  UPDATE {keys} AS k SET running_until = e.run_at FROM e
  WHERE e.key IS NOT NULL AND k.queue = e.queue AND k.key = e.key AND k.running_id = e.id
), slid AS (
  UPDATE {slots} AS l SET until = e.run_at
  FROM e WHERE l.queue = e.queue AND l.kind = 'c' AND l.job_id = e.id AND l.token = e.lease_token
)
SELECT run_at FROM e

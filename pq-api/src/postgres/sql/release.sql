-- Hands a job back, its attempt not counted: $1 int8 id, $2 int8 token, $3 int8 delay µs
-- (0 for a release) → id. Its key and its place under its queue's concurrency limit are freed;
-- if it hid others, the next of its group is shown (shown).
WITH r AS (
  UPDATE {jobs} SET state = 'queued', attempts = GREATEST(attempts - 1, 0),
         run_at = statement_timestamp() + $3::int8 * interval '1 microsecond'
  WHERE id = $1::int8 AND lease_token = $2::int8 AND state = 'running'
  RETURNING id, queue, key, lease_token, priority, expected_at, hides
), shown AS (
  {shown}
), freed AS (
  UPDATE {keys} AS k SET running_id = NULL, running_until = NULL
  FROM r WHERE r.key IS NOT NULL AND k.queue = r.queue AND k.key = r.key AND k.running_id = r.id
), unseated AS (
  UPDATE {slots} AS l SET job_id = NULL, token = NULL, until = NULL
  FROM r WHERE l.queue = r.queue AND l.kind = 'c' AND l.job_id = r.id AND l.token = r.lease_token
)
SELECT id FROM r

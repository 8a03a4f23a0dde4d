-- Records a failed attempt: $1 int8 id, $2 int8 token, $3 timestamptz retry_at,
-- $4 int8 retry_in µs, $5 text error, $6 bool retry (false: give up) → state. The job waits
-- for its retry while attempts are left and $6 allows it, else it is failed; its key and its
-- place under its queue's concurrency limit are freed; if it hid others, the next of its group
-- is shown (shown); if a job waits behind the freed key, its queue is notified (woken).
WITH f AS (
  UPDATE {jobs} SET
    state = CASE WHEN $6::bool AND attempts < max_attempts THEN 'queued' ELSE 'failed' END,
    run_at = CASE WHEN $6::bool AND attempts < max_attempts
                  THEN COALESCE($3::timestamptz, statement_timestamp() + $4::int8 * interval '1 microsecond')
                  ELSE statement_timestamp() END,
    last_error = $5::text
  WHERE id = $1::int8 AND lease_token = $2::int8 AND state = 'running'
  RETURNING id, queue, key, lease_token, {state} AS state, priority, expected_at, hides
), shown AS (
  {shown}
), freed AS (
  UPDATE {keys} AS k SET running_id = NULL, running_until = NULL
  FROM f WHERE f.key IS NOT NULL AND k.queue = f.queue AND k.key = f.key AND k.running_id = f.id
  RETURNING k.queue, k.key
), woken AS (
  {key_freed_notify}
), unseated AS (
  UPDATE {slots} AS l SET job_id = NULL, token = NULL, until = NULL
  FROM f WHERE l.queue = f.queue AND l.kind = 'c' AND l.job_id = f.id AND l.token = f.lease_token
)
SELECT state FROM f WHERE (SELECT count(*) FROM woken) >= 0

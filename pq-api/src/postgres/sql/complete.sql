-- Completes jobs: $1 int8[] ids, $2 int8[] tokens, $3 text[] results (JSON or null),
-- $4 text[] key states (JSON or null) → id of each completed job. Frees their keys, saving
-- the new key states, and keeps a history record for jobs that asked for one (the payload is
-- carried along only for those). Shows the next job of each that hid others (shown). Frees
-- the places of limited queues they held. A queue with a job waiting behind a key freed here
-- is notified, once (woken).
WITH done AS (
  DELETE FROM {jobs} AS t
  USING unnest($1::int8[], $2::int8[], $3::text[], $4::text[]) AS l(id, token, result, key_state)
  WHERE t.id = l.id AND t.lease_token = l.token AND t.state = 'running'
  RETURNING t.id, t.lease_token, t.queue, CASE WHEN t.keep_for IS NOT NULL THEN t.payload END AS payload,
            t.key, t.cursor, t.priority, t.attempts, t.created_at, t.keep_for, l.result,
            l.key_state, t.expected_at, t.hides
), freed AS (
  UPDATE {keys} AS k SET running_id = NULL, running_until = NULL,
         state = COALESCE(done.key_state::jsonb, k.state)
  FROM done WHERE done.key IS NOT NULL AND k.queue = done.queue
    AND k.key = done.key AND k.running_id = done.id
  RETURNING k.queue, k.key
), shown AS (
  {shown}
), woken AS (
  {key_freed_notify}
), unseated AS (
  UPDATE {slots} AS l SET job_id = NULL, token = NULL, until = NULL
  FROM done WHERE l.queue = done.queue AND l.kind = 'c' AND l.job_id = done.id
    AND l.token = done.lease_token
), kept AS (
  INSERT INTO {history} (id, queue, payload, key, cursor, priority, attempts, result,
                         created_at, finished_at, keep_until)
  SELECT id, queue, payload, key, cursor, priority, attempts, result::jsonb, created_at,
         statement_timestamp(), statement_timestamp() + keep_for * interval '1 microsecond'
  FROM done WHERE keep_for IS NOT NULL
)
SELECT id FROM done WHERE (SELECT count(*) FROM woken) >= 0

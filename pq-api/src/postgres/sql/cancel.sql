-- Cancels a job: $1 int8 id → its state before (no row: unknown id). A job that is not
-- running is removed; a running one becomes cancelled (stored as failed, cancelled_at set,
-- run_at the time) and its holder is told through the channel (chr(1) and the id). Its key
-- and its concurrency place stay held until its lease runs out. A queued keyed job removed
-- shows the next of its key, priority and deadline, as a claim does (claim.sql).
WITH target AS (
  SELECT id, {state} AS state, queue, key, priority, expected_at, hides
  FROM {jobs} WHERE id = $1::int8 FOR UPDATE
), shown AS (
  UPDATE {jobs} AS t SET hidden = false, hides = true
  FROM target AS c CROSS JOIN LATERAL (
    (SELECT n.id FROM {jobs} AS n
     WHERE c.expected_at IS NULL AND n.queue = c.queue AND n.key = c.key
       AND n.priority = c.priority AND n.expected_at IS NULL
       AND n.state = 'queued' AND NOT n.cursor AND n.unique_key IS NULL AND n.id <> c.id
     ORDER BY n.priority DESC, n.expected_at ASC NULLS LAST, n.run_at ASC, n.id ASC LIMIT 1)
    UNION ALL
    (SELECT n.id FROM {jobs} AS n
     WHERE n.queue = c.queue AND n.key = c.key AND n.priority = c.priority
       AND n.expected_at = c.expected_at
       AND n.state = 'queued' AND NOT n.cursor AND n.unique_key IS NULL AND n.id <> c.id
     ORDER BY n.priority DESC, n.expected_at ASC NULLS LAST, n.run_at ASC, n.id ASC LIMIT 1)
  ) AS n
  WHERE c.hides AND c.state <> 'running' AND t.id = n.id AND (t.hidden OR NOT t.hides)
), gone AS (
  DELETE FROM {jobs} AS t USING target
  WHERE t.id = target.id AND target.state <> 'running'
  RETURNING t.id
), stopped AS (
  UPDATE {jobs} AS t SET state = 'failed', cancelled_at = statement_timestamp(),
         run_at = statement_timestamp()
  FROM target WHERE t.id = target.id AND target.state = 'running'
  RETURNING t.id
)
SELECT target.state FROM target,
  LATERAL (SELECT count(*) FROM stopped,
           LATERAL pg_notify('{channel_name}', chr(1) || stopped.id::text) AS n) AS told

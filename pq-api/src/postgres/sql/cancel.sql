-- Cancels a job: $1 int8 id → its state before (no row: unknown id). A job that is not
-- running is removed; a running one becomes cancelled (stored as failed, cancelled_at set,
-- run_at the time) and its holder is told through the channel (chr(1) and the id). Its key
-- and its concurrency place stay held until its lease runs out. A keyed job cancelled, queued
-- or running, shows the next of its key, priority and deadline (show_next.sql).
WITH target AS (
  SELECT id, {state} AS state, queue, key, priority, expected_at, hides
  FROM {jobs} WHERE id = $1::int8 FOR UPDATE
), shown AS (
  {shown}
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

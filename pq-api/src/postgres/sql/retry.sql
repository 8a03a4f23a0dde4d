-- Restarts a failed job with its attempts reset: $1 int8 id → state (no row: unknown id).
WITH target AS (
  SELECT id, {state} AS state FROM {jobs} WHERE id = $1::int8 FOR UPDATE
), restarted AS (
  UPDATE {jobs} AS t SET state = 'queued', attempts = 0, run_at = statement_timestamp()
  FROM target
  WHERE t.id = target.id AND target.state = 'failed'
  RETURNING t.id
)
SELECT state FROM target

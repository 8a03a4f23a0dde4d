-- Restarts a failed job with its attempts reset: $1 int8 id → state (no row: unknown id).
-- Its key's record is created again, or locked, as a put does (a prune may have removed it
-- while the job was failed).
WITH target AS (
  SELECT id, {state} AS state FROM {jobs} WHERE id = $1::int8 FOR UPDATE
), restarted AS (
  UPDATE {jobs} AS t SET state = 'queued', attempts = 0, run_at = statement_timestamp(),
         hidden = false
  FROM target
  WHERE t.id = target.id AND target.state = 'failed'
  RETURNING t.id, t.queue, t.key
), keyed AS (
  INSERT INTO {keys} (queue, key)
  SELECT r.queue, r.key FROM restarted AS r
  WHERE r.key IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM {keys} AS k WHERE k.queue = r.queue AND k.key = r.key
                    FOR KEY SHARE)
  ON CONFLICT DO NOTHING
)
SELECT state FROM target

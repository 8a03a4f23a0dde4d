-- Cancels a job unless it is running: $1 int8 id → state (no row: unknown id).
WITH target AS (
  SELECT id, {state} AS state FROM {jobs} WHERE id = $1::int8 FOR UPDATE
), gone AS (
  DELETE FROM {jobs} AS t USING target
  WHERE t.id = target.id AND target.state <> 'running'
  RETURNING t.id
)
SELECT state FROM target

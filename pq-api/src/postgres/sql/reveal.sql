-- Shows the first queued job of up to $1 int4 keys whose first queued job (in claim order,
-- serial keys only) is hidden while no live lease holds the key → n int8, the jobs shown.
-- pq's own statements never leave a key so (whatever ends the job that hides others shows the
-- next, and a claim takes the next in an expired holder's place, see claim.sql); plain SQL
-- that removes or changes the job others waited behind can, and this undoes it. Run by prune.
WITH stranded AS (
  SELECT f.id FROM {keys} AS k CROSS JOIN LATERAL (
    SELECT j.id, j.hidden FROM {jobs} AS j
    WHERE j.queue = k.queue AND j.key = k.key AND j.state = 'queued'
      AND NOT j.cursor AND j.unique_key IS NULL
    ORDER BY j.priority DESC, j.expected_at ASC NULLS LAST, j.run_at ASC, j.id ASC
    LIMIT 1
  ) AS f
  WHERE f.hidden
    AND NOT (k.running_id IS NOT NULL AND k.running_until > statement_timestamp())
  LIMIT $1::int4
), shown AS (
  UPDATE {jobs} AS t SET hidden = false, hides = true FROM stranded AS s WHERE t.id = s.id RETURNING 1
)
SELECT count(*)::int8 AS n FROM shown

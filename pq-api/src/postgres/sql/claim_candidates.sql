-- The claimable jobs of queue q.name, in claim order, at most {limit}, locked: a part of
-- claim.sql, spliced in as {candidates} for unlimited and limited queues alike. Hidden jobs
-- (migration_7.sql) wait behind another job of their key and are not candidates themselves.
--
-- `s`: a running job whose lease ran out and that hides others (it took its key's turn and
-- never finished) stands in for the next job of its group while that job is hidden: it is the
-- candidate (id), in the expired job's place, tested as any other (its key free, its key's
-- first claimable job); `via` says so. Only the expired job's row is locked, which no other
-- claim then reaches the hidden job through.
--
-- `h`: the key's row, locked if no other job holds the key (FOR NO KEY UPDATE: a put of the
-- key holds its row FOR KEY SHARE, which must not make claims skip the key); a locked row is
-- tested again at its latest version, which makes the test race-free, as claim.sql's `free`
-- is for places. One probe of the keys table tests the key, locks it, and gives claim.sql
-- the row's ctid to record the claim by. A job whose key row is held by another claim, or is
-- missing, is not a candidate.
SELECT COALESCE(s.id, j.id) AS id, j.queue, j.key, j.priority, j.expected_at, j.run_at,
       s.id IS NOT NULL AS via, h.kctid
FROM {jobs} AS j
LEFT JOIN LATERAL (
  SELECT n.id FROM (SELECT j.id, j.queue, j.key, j.priority, j.expected_at) AS c
  CROSS JOIN LATERAL (
    {next_in_group}
  ) AS n
  WHERE j.state = 'running' AND j.hides
    AND EXISTS (SELECT 1 FROM {jobs} AS h WHERE h.id = n.id AND h.hidden)
  LIMIT 1
) AS s ON true
LEFT JOIN LATERAL (
  SELECT k.ctid AS kctid FROM {keys} AS k
  WHERE j.key IS NOT NULL AND k.queue = j.queue AND k.key = j.key
    AND (k.running_id IS NULL OR k.running_id = j.id
         OR k.running_until <= statement_timestamp())
  FOR NO KEY UPDATE SKIP LOCKED
) AS h ON true
WHERE j.queue = q.name
  AND j.state <> 'failed' AND NOT j.hidden AND j.run_at <= statement_timestamp()
  AND (j.attempts < j.max_attempts OR s.id IS NOT NULL)
  AND (j.key IS NULL OR (
    h.kctid IS NOT NULL
    AND (SELECT o.id = COALESCE(s.id, j.id) FROM {jobs} AS o
         WHERE o.queue = j.queue AND o.key = j.key
         AND o.state <> 'failed' AND o.run_at <= statement_timestamp()
         AND o.attempts < o.max_attempts
         ORDER BY o.priority DESC, o.expected_at ASC NULLS LAST, o.run_at ASC, o.id ASC
         LIMIT 1)))
ORDER BY j.priority DESC, j.expected_at ASC NULLS LAST, j.run_at ASC, j.id ASC
LIMIT {limit} FOR UPDATE OF j SKIP LOCKED

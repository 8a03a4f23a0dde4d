-- The claimable jobs of queue q.name, in claim order, at most {limit}, locked: a part of
-- claim.sql, spliced in as {candidates} for unlimited and limited queues alike. Hidden jobs
-- (migration_7.sql) wait behind another queued job of their key and are not candidates.
SELECT j.id, j.queue, j.key, j.priority, j.expected_at, j.run_at
FROM {jobs} AS j
WHERE j.queue = q.name
  AND j.state <> 'failed' AND NOT j.hidden AND j.run_at <= statement_timestamp()
  AND j.attempts < j.max_attempts
  AND (j.key IS NULL OR (
    NOT EXISTS (SELECT 1 FROM {keys} AS k WHERE k.queue = j.queue
                AND k.key = j.key AND k.running_id <> j.id
                AND k.running_until > statement_timestamp())
    AND (SELECT o.id = j.id FROM {jobs} AS o WHERE o.queue = j.queue AND o.key = j.key
         AND o.state <> 'failed' AND o.run_at <= statement_timestamp()
         AND o.attempts < o.max_attempts
         ORDER BY o.priority DESC, o.expected_at ASC NULLS LAST, o.run_at ASC, o.id ASC
         LIMIT 1)))
ORDER BY j.priority DESC, j.expected_at ASC NULLS LAST, j.run_at ASC, j.id ASC
LIMIT {limit} FOR UPDATE OF j SKIP LOCKED

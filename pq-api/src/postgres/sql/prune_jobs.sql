-- Removes up to $2 int8 jobs that ended badly (failed, cancelled, or out of attempts with
-- their last lease run out) longer ago than their queue's retention, or $1 int8 µs for a
-- queue without one → n int8, the jobs removed. Their keys' records stay for the key sweep.
WITH gone AS (
  DELETE FROM {jobs} AS t WHERE t.id IN (
    SELECT j.id FROM {jobs} AS j LEFT JOIN {queues_table} AS s ON s.queue = j.queue
    WHERE (j.state = 'failed' OR (j.state = 'running' AND j.attempts >= j.max_attempts))
      AND j.run_at < statement_timestamp()
                     - COALESCE(s.retention, $1::int8) * interval '1 microsecond'
    ORDER BY j.run_at LIMIT $2::int8
    FOR UPDATE OF j SKIP LOCKED)
  RETURNING 1
)
SELECT count(*)::int8 AS n FROM gone

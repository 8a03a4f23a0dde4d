-- pq migration 9: one key index fewer on every keyed job.
-- key_run_at (queue, key, run_at) served one question, next_run's earliest run_at of a key,
-- yet each put, claim and show of a keyed job wrote an entry to it. next_run now reads a key's
-- jobs without a deadline from the key index, where each priority's are in run_at order (one
-- probe a priority), and its jobs with a deadline, whose order there is the deadline's, from
-- this narrower index, which jobs without one do not enter.
DROP INDEX {key_run_idx_qualified};
CREATE INDEX {key_deadline_idx} ON {jobs} (queue, key, run_at)
  WHERE key IS NOT NULL AND expected_at IS NOT NULL AND state <> 'failed';

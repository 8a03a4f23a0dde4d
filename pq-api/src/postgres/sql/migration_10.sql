-- pq migration 10: the finite-times checks hold for every row.
-- Migration 3 added them NOT VALID, leaving rows from before it as they were. A claim of such
-- a row writes a new version of it, which the check refuses, and the whole claim failed with
-- it, stalling every queue it claimed from. Such a job is failed here, as a claim fails a row
-- it cannot decode: its times made finite (run_at the time it failed, as for every failed
-- job; created_at the same if it was not finite; no deadline if its deadline was not), and its
-- last_error saying what was wrong. A history record's times are made finite (one kept for
-- ever is kept a hundred years). Then both checks are validated, so no row escapes them.
UPDATE {jobs} SET
  state = 'failed',
  last_error = 'pq migration 10: failed for holding a time that is not finite ('
    || concat_ws(', ',
         CASE WHEN NOT isfinite(run_at) THEN 'run_at ' || run_at END,
         CASE WHEN NOT isfinite(created_at) THEN 'created_at ' || created_at END,
         CASE WHEN NOT isfinite(expected_at) THEN 'expected_at ' || expected_at END)
    || ')' || COALESCE('; its last error: ' || last_error, ''),
  run_at = statement_timestamp(),
  created_at = CASE WHEN isfinite(created_at) THEN created_at ELSE statement_timestamp() END,
  expected_at = CASE WHEN isfinite(expected_at) THEN expected_at END
WHERE NOT (isfinite(run_at) AND isfinite(created_at)
           AND (expected_at IS NULL OR isfinite(expected_at)));
UPDATE {history} SET
  created_at = CASE WHEN isfinite(created_at) THEN created_at ELSE statement_timestamp() END,
  finished_at = CASE WHEN isfinite(finished_at) THEN finished_at ELSE statement_timestamp() END,
  keep_until = CASE WHEN isfinite(keep_until) THEN keep_until
                    WHEN keep_until > statement_timestamp()
                    THEN statement_timestamp() + interval '100 years'
                    ELSE statement_timestamp() END
WHERE NOT (isfinite(created_at) AND isfinite(finished_at) AND isfinite(keep_until));
ALTER TABLE {jobs} VALIDATE CONSTRAINT {jobs_finite};
ALTER TABLE {history} VALIDATE CONSTRAINT {history_finite};

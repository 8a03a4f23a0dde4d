-- pq migration 3: finite timestamps only. NOT VALID: a table that already holds such a row
-- still migrates (its rows are then failed one by one when claimed, see Undecodable); every
-- row written from now on is checked.
ALTER TABLE {jobs} ADD CONSTRAINT {jobs_finite}
  CHECK (isfinite(run_at) AND isfinite(created_at) AND (expected_at IS NULL OR isfinite(expected_at)))
  NOT VALID;
ALTER TABLE {history} ADD CONSTRAINT {history_finite}
  CHECK (isfinite(created_at) AND isfinite(finished_at) AND isfinite(keep_until))
  NOT VALID;

-- pq migration 7: keyed backlogs claimed at the unkeyed rate.
-- hidden: a keyed job that cannot run before another queued job of its key put in the same
-- statement (same priority and deadline, earlier or equal run_at, smaller id), left out of
-- the claim index so that a claim does not walk a key's whole backlog.
-- hides: a job that may have hidden jobs after it. Whatever ends its turn (complete, fail,
-- release, snooze, cancel) hands that on to the next queued job of its key, priority and
-- deadline, showing it if it was hidden (show_next.sql); a claim that finds its lease run out
-- takes that next job in its place (claim_candidates.sql); prune shows any left behind by
-- plain SQL (reveal.sql).
ALTER TABLE {jobs} ADD COLUMN hidden boolean NOT NULL DEFAULT false,
  ADD COLUMN hides boolean NOT NULL DEFAULT false;
DROP INDEX {claim_idx_qualified};
CREATE INDEX {claim_idx} ON {jobs} (queue, priority DESC, expected_at ASC NULLS LAST, run_at ASC, id ASC)
  WHERE state <> 'failed' AND NOT hidden;

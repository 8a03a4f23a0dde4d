-- pq migration 5: cancelled jobs, progress, queue settings (pause, limits, retention), pruning.
-- cancelled_at: when a running job was cancelled. Its state is then 'failed', so every index
-- and statement that passes over failed jobs passes over it too; {state} tells them apart.
-- progress: what the job's handler last reported (JSON), kept across attempts.
ALTER TABLE {jobs} ADD COLUMN cancelled_at timestamptz, ADD COLUMN progress jsonb;
-- Jobs that ended badly, by when: failed or cancelled (state 'failed', run_at the time), and
-- those whose last lease ran out (still 'running' in the table). Written only for such rows,
-- so that pruning finds them without reading the rest.
CREATE INDEX {ended_idx} ON {jobs} (run_at)
  WHERE state = 'failed' OR (state = 'running' AND attempts >= max_attempts);
-- Settings per queue; a queue without a row has every default.
CREATE TABLE {queues_table} (
  queue text PRIMARY KEY,
  paused boolean NOT NULL DEFAULT false,
  concurrency int4 CHECK (concurrency > 0),
  rate int4 CHECK (rate > 0),
  rate_per int8 CHECK (rate_per > 0),
  retention int8 CHECK (retention > 0)
);
-- The places of a limited queue, one row each: kind 'c' for its concurrency limit (held by a
-- running job until its lease runs out or it ends), 'r' for its rate limit (held for the
-- rate's period from a claim). A claim takes a free place of each kind its queue limits,
-- locked and re-checked at its latest version, so racing claims never share one.
CREATE TABLE {slots} (
  queue text NOT NULL,
  kind text NOT NULL CHECK (kind IN ('c', 'r')),
  slot int4 NOT NULL,
  job_id bigint,
  token bigint,
  until timestamptz,
  PRIMARY KEY (queue, kind, slot)
);
CREATE FUNCTION {slot_notify_fn}() RETURNS trigger LANGUAGE plpgsql AS $pq$
BEGIN
  PERFORM pg_notify('{channel}', NEW.queue);
  RETURN NULL;
END
$pq$;
CREATE TRIGGER pq_notify_slot_freed AFTER UPDATE ON {slots} FOR EACH ROW
  WHEN (OLD.job_id IS NOT NULL AND NEW.job_id IS NULL)
  EXECUTE FUNCTION {slot_notify_fn}();
-- Removes up to `lim` records of keys that no job waits on or runs under (a lease that ran
-- out holds nothing) and that hold no saved state → how many went. Candidates are locked
-- first (a put of the key locks its record FOR KEY SHARE, see insert.sql, so one of the two
-- waits or skips), then looked at again with a fresh snapshot: a job put with the key before
-- the lock was taken is seen, and its record stays.
CREATE FUNCTION {sweep_keys_fn}(lim int4) RETURNS int8 LANGUAGE plpgsql AS $pq$
DECLARE
  qs text[];
  ks text[];
  n int8;
BEGIN
  SELECT array_agg(l.queue), array_agg(l.key) INTO qs, ks FROM (
    SELECT k.queue, k.key FROM {keys} AS k
    WHERE (k.running_id IS NULL OR k.running_until <= statement_timestamp()) AND k.state IS NULL
      AND k.ctid = ANY (ARRAY(
        SELECT c.ctid FROM {keys} AS c
        WHERE (c.running_id IS NULL OR c.running_until <= statement_timestamp())
          AND c.state IS NULL
          AND NOT EXISTS (SELECT 1 FROM {jobs} AS j WHERE j.queue = c.queue AND j.key = c.key
                          AND j.state <> 'failed')
        LIMIT lim))
    FOR UPDATE SKIP LOCKED
  ) AS l;
  DELETE FROM {keys} AS k USING unnest(qs, ks) AS u(q, key)
  WHERE k.queue = u.q AND k.key = u.key AND k.state IS NULL
    AND (k.running_id IS NULL OR k.running_until <= statement_timestamp())
    AND NOT EXISTS (SELECT 1 FROM {jobs} AS j WHERE j.queue = u.q AND j.key = u.key
                    AND j.state <> 'failed');
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN n;
END
$pq$;

-- pq migration 4: per-job time limits and unique jobs.
-- timeout: the job's time limit in µs (NULL: the task's default, if any).
-- unique_key, unique_scope: the job's uniqueness key and how long it holds it (-1 while
-- pending, -2 while pending or running, else a period in µs after it was put).
-- Columns of NULLs are added without rewriting the table.
ALTER TABLE {jobs} ADD COLUMN timeout int8, ADD COLUMN unique_key text, ADD COLUMN unique_scope int8;
CREATE INDEX {unique_idx} ON {jobs} (queue, unique_key) WHERE unique_key IS NOT NULL;
-- Keys held for a period: by the job put last with that scope, until `until`, whatever
-- became of the job since.
CREATE TABLE {unique} (
  queue text NOT NULL,
  key text NOT NULL,
  job_id bigint NOT NULL,
  until timestamptz NOT NULL,
  PRIMARY KEY (queue, key)
);
-- Which of the given (queue, key) pairs a job holds now, and which job. First takes each
-- pair's lock (a transaction-scoped advisory lock, in a stable order), then looks: each
-- statement of a VOLATILE function takes a fresh snapshot (in READ COMMITTED), so a job that
-- a concurrent put holding the lock first added is seen once that put has committed. A
-- transaction at a stricter level keeps one snapshot, which could hide that job: refused.
CREATE FUNCTION {unique_fn}(queues text[], keys text[])
  RETURNS TABLE (queue text, key text, holder bigint) LANGUAGE plpgsql AS $pq$
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RAISE EXCEPTION 'pq puts jobs with uniqueness keys only in READ COMMITTED transactions'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  PERFORM pg_advisory_xact_lock({unique_lock}, hashtext(p.q || chr(1) || p.k))
  FROM (SELECT DISTINCT u.q, u.k FROM unnest(queues, keys) AS u(q, k)
        WHERE u.k IS NOT NULL ORDER BY u.q, u.k) AS p;
  RETURN QUERY
  SELECT p.q, p.k, COALESCE(
    (SELECT h.job_id FROM {unique} AS h
     WHERE h.queue = p.q AND h.key = p.k AND h.until > statement_timestamp()),
    (SELECT j.id FROM {jobs} AS j
     WHERE j.queue = p.q AND j.unique_key = p.k AND j.state <> 'failed'
       AND (j.attempts < j.max_attempts
            OR (j.state = 'running' AND j.run_at > statement_timestamp()))
       AND (j.unique_scope = -2 OR (j.unique_scope = -1 AND j.lease_token IS NULL))
     ORDER BY j.id LIMIT 1))
  FROM (SELECT DISTINCT u.q, u.k FROM unnest(queues, keys) AS u(q, k)
        WHERE u.k IS NOT NULL) AS p;
END
$pq$;

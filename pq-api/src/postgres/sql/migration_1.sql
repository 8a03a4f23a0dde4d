-- pq migration 1: the jobs table, its claim index and the notify trigger.
CREATE TABLE {jobs} (
  id bigserial PRIMARY KEY,
  queue text NOT NULL CHECK (length(queue) BETWEEN 1 AND 128),
  payload jsonb NOT NULL,
  priority integer NOT NULL DEFAULT 0,
  expected_at timestamptz,
  run_at timestamptz NOT NULL DEFAULT now(),
  state text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'failed')),
  attempts integer NOT NULL DEFAULT 0,
  max_attempts integer NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
  lease_token bigint,
  last_error text,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX {claim_idx} ON {jobs} (queue, priority DESC, expected_at ASC NULLS LAST, run_at ASC, id ASC)
  WHERE state <> 'failed';
CREATE INDEX {run_idx} ON {jobs} (queue, run_at) WHERE state <> 'failed';
CREATE FUNCTION {notify_fn}() RETURNS trigger LANGUAGE plpgsql AS $pq$
BEGIN
  PERFORM pg_notify('{channel}', q.queue)
  FROM (SELECT DISTINCT queue FROM new_rows WHERE state = 'queued') AS q;
  RETURN NULL;
END
$pq$;
CREATE TRIGGER pq_notify_insert AFTER INSERT ON {jobs} REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION {notify_fn}();
CREATE TRIGGER pq_notify_update AFTER UPDATE ON {jobs} REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION {notify_fn}();

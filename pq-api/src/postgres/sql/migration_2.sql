-- pq migration 2: serial and cursor keys, key states, job history.
ALTER TABLE {jobs} ADD COLUMN key text CHECK (length(key) BETWEEN 1 AND 255),
  ADD COLUMN cursor boolean NOT NULL DEFAULT false,
  ADD COLUMN keep_for bigint CHECK (keep_for > 0);
DROP INDEX {run_idx_qualified};
CREATE INDEX {run_idx} ON {jobs} (queue, run_at) WHERE state <> 'failed' AND key IS NULL;
CREATE INDEX {key_idx} ON {jobs} (queue, key, priority DESC, expected_at ASC NULLS LAST, run_at ASC, id ASC)
  WHERE key IS NOT NULL AND state <> 'failed';
CREATE INDEX {key_run_idx} ON {jobs} (queue, key, run_at) WHERE key IS NOT NULL AND state <> 'failed';
CREATE UNIQUE INDEX {pending_idx} ON {jobs} (queue, key) WHERE cursor AND lease_token IS NULL;
CREATE TABLE {keys} (
  queue text NOT NULL,
  key text NOT NULL,
  running_id bigint,
  running_until timestamptz,
  state jsonb,
  PRIMARY KEY (queue, key)
);
CREATE TABLE {history} (
  id bigint PRIMARY KEY,
  queue text NOT NULL,
  payload jsonb NOT NULL,
  key text,
  cursor boolean NOT NULL,
  priority integer NOT NULL,
  attempts integer NOT NULL,
  result jsonb,
  created_at timestamptz NOT NULL,
  finished_at timestamptz NOT NULL,
  keep_until timestamptz NOT NULL
);
CREATE INDEX {history_idx} ON {history} (queue, finished_at DESC, id DESC);
CREATE INDEX {history_keep_idx} ON {history} (keep_until);
CREATE FUNCTION {key_notify_fn}() RETURNS trigger LANGUAGE plpgsql AS $pq$
BEGIN
  IF EXISTS (SELECT 1 FROM {jobs} WHERE queue = NEW.queue AND key = NEW.key AND state <> 'failed') THEN
    PERFORM pg_notify('{channel}', NEW.queue);
  END IF;
  RETURN NULL;
END
$pq$;
CREATE TRIGGER pq_notify_key_freed AFTER UPDATE ON {keys} FOR EACH ROW
  WHEN (OLD.running_id IS NOT NULL AND NEW.running_id IS NULL)
  EXECUTE FUNCTION {key_notify_fn}();

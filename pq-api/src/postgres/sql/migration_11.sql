-- pq migration 11: the jobs table split into rotating partitions, each emptied by TRUNCATE
-- once drained, so that a held snapshot cannot leave claims stepping over the row versions of
-- every job completed since (docs/design.md, "Storage a held snapshot cannot slow").
--
-- `part` says which partition a job is in: 0–3 rotate, -1 holds the jobs with cursor keys,
-- whose one-pending-job-per-key index must see them all in one place. Puts write to the
-- current partition ({rotation}); the store's upkeep ({rotate_fn}) moves the current one on
-- once it has grown, and truncates each other rotating partition found empty. Every job and
-- its id are kept: the rows are copied over, the id sequence carried to the new table.
CREATE TABLE {rotation} (
  one boolean PRIMARY KEY DEFAULT true CHECK (one),
  current int2 NOT NULL CHECK (current BETWEEN 0 AND 3)
);
INSERT INTO {rotation} (current) VALUES (0);
CREATE FUNCTION {part_fn}() RETURNS int2 LANGUAGE sql STABLE AS $pq$
  SELECT current FROM {rotation}
$pq$;
ALTER TABLE {jobs} RENAME TO {unpartitioned};
DROP TRIGGER pq_notify_insert ON {unpartitioned_qualified};
DROP TRIGGER pq_notify_update ON {unpartitioned_qualified};
ALTER TABLE {unpartitioned_qualified} DROP CONSTRAINT {pkey};
DROP INDEX {claim_idx_qualified}, {run_idx_qualified}, {key_idx_qualified},
  {pending_idx_qualified}, {key_deadline_idx_qualified}, {unique_idx_qualified},
  {ended_idx_qualified};
CREATE TABLE {jobs} (
  LIKE {unpartitioned_qualified} INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
  part int2 NOT NULL DEFAULT {part_fn}()
) PARTITION BY LIST (part);
CREATE TABLE {part_0} PARTITION OF {jobs} (CHECK (NOT cursor)) FOR VALUES IN (0);
CREATE TABLE {part_1} PARTITION OF {jobs} (CHECK (NOT cursor)) FOR VALUES IN (1);
CREATE TABLE {part_2} PARTITION OF {jobs} (CHECK (NOT cursor)) FOR VALUES IN (2);
CREATE TABLE {part_3} PARTITION OF {jobs} (CHECK (NOT cursor)) FOR VALUES IN (3);
CREATE TABLE {part_cursor} PARTITION OF {jobs} (CHECK (cursor)) FOR VALUES IN (-1);
INSERT INTO {jobs} SELECT o.*, CASE WHEN o.cursor THEN -1 ELSE 0 END FROM {unpartitioned_qualified} AS o;
DO $pq$
BEGIN
  EXECUTE format('ALTER SEQUENCE %s OWNED BY {jobs}.id',
                 pg_get_serial_sequence('{unpartitioned_qualified}', 'id'));
END
$pq$;
-- Whoever was granted the old table is granted this one (its partitions are reached through
-- it, so they need no grants).
DO $pq$
DECLARE
  g record;
BEGIN
  FOR g IN SELECT (aclexplode(c.relacl)).* FROM pg_class AS c
           WHERE c.oid = '{unpartitioned_qualified}'::regclass LOOP
    CONTINUE WHEN g.grantee = (SELECT relowner FROM pg_class WHERE oid = '{jobs}'::regclass);
    EXECUTE format('GRANT %s ON {jobs} TO %s', g.privilege_type,
                   CASE WHEN g.grantee = 0 THEN 'PUBLIC'
                        ELSE quote_ident(pg_get_userbyid(g.grantee)) END);
  END LOOP;
END
$pq$;
DROP TABLE {unpartitioned_qualified};
ALTER TABLE {jobs} ADD PRIMARY KEY (id, part);
CREATE INDEX {claim_idx} ON {jobs} (queue, priority DESC, expected_at ASC NULLS LAST, run_at ASC, id ASC)
  WHERE state <> 'failed' AND NOT hidden;
CREATE INDEX {run_idx} ON {jobs} (queue, run_at) WHERE state <> 'failed' AND key IS NULL;
CREATE INDEX {key_idx} ON {jobs} (queue, key, priority DESC, expected_at ASC NULLS LAST, run_at ASC, id ASC)
  WHERE key IS NOT NULL AND state <> 'failed';
CREATE UNIQUE INDEX {pending_idx} ON {jobs} (queue, key, part) WHERE cursor AND lease_token IS NULL;
CREATE INDEX {key_deadline_idx} ON {jobs} (queue, key, run_at)
  WHERE key IS NOT NULL AND expected_at IS NOT NULL AND state <> 'failed';
CREATE INDEX {unique_idx} ON {jobs} (queue, unique_key) WHERE unique_key IS NOT NULL;
CREATE INDEX {ended_idx} ON {jobs} (run_at)
  WHERE state = 'failed' OR (state = 'running' AND attempts >= max_attempts);
CREATE TRIGGER pq_notify_insert AFTER INSERT ON {jobs} REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION {notify_fn}();
CREATE TRIGGER pq_notify_update AFTER UPDATE ON {jobs} REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION {notify_fn}();
-- One rotation step, run by a store's upkeep: → the number of partitions emptied.
--
-- Each rotating partition other than the current one that holds no job is truncated: its
-- rows' versions go with it at once, whatever snapshot is held (VACUUM could not remove them).
-- Its lock is taken first, and the partition checked again under it: a put that took it for
-- the current partition has then committed or not begun. The lock is only tried for (ten
-- times over 50 ms, NOWAIT): waiting for it would queue every claim behind the wait. A
-- partition locked meanwhile (by a vacuum, or a transaction that read the jobs table and was
-- left open) is left for a later step.
--
-- Once the current partition has grown to `full_bytes`, the next one becomes current if it is
-- empty; if a few jobs are left in it (scheduled far ahead, failed, waiting behind a key), the
-- ones not running are moved to the current partition first, so that it can be emptied.
--
-- Only in READ COMMITTED: each check then sees what committed before it. One store at a time
-- rotates a table (the rotation row is locked, skipped by the others).
CREATE FUNCTION {rotate_fn}(full_bytes int8) RETURNS int4 LANGUAGE plpgsql AS $pq$
DECLARE
  parts regclass[] := ARRAY['{part_0}', '{part_1}', '{part_2}', '{part_3}']::regclass[];
  cur int2;
  nxt int2;
  p int2;
  locked boolean;
  emptied int4 := 0;
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RETURN 0;
  END IF;
  SELECT r.current INTO cur FROM {rotation} AS r FOR UPDATE SKIP LOCKED;
  IF NOT FOUND THEN
    RETURN 0;
  END IF;
  FOR p IN 0..3 LOOP
    CONTINUE WHEN p = cur OR pg_relation_size(parts[p + 1]) = 0;
    CONTINUE WHEN EXISTS (SELECT 1 FROM {jobs} AS j WHERE j.part = p);
    locked := false;
    FOR attempt IN 1..10 LOOP
      BEGIN
        EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE NOWAIT', parts[p + 1]);
        locked := true;
        EXIT;
      EXCEPTION WHEN lock_not_available THEN
        PERFORM pg_sleep(0.005);
      END;
    END LOOP;
    CONTINUE WHEN NOT locked;
    IF NOT EXISTS (SELECT 1 FROM {jobs} AS j WHERE j.part = p) THEN
      BEGIN
        EXECUTE format('TRUNCATE %s', parts[p + 1]);
        emptied := emptied + 1;
      EXCEPTION WHEN insufficient_privilege THEN
        NULL;
      END;
    END IF;
  END LOOP;
  IF pg_relation_size(parts[cur + 1]) < full_bytes THEN
    RETURN emptied;
  END IF;
  nxt := (cur + 1) % 4;
  IF pg_relation_size(parts[nxt + 1]) = 0 THEN
    UPDATE {rotation} SET current = nxt;
  ELSIF (SELECT count(*) FROM (SELECT 1 FROM {jobs} AS j WHERE j.part = nxt LIMIT 1001) AS l) <= 1000 THEN
    UPDATE {jobs} AS j SET part = cur
    WHERE j.part = nxt AND j.state <> 'running'
      AND j.ctid = ANY (ARRAY(SELECT l.ctid FROM {jobs} AS l
                              WHERE l.part = nxt AND l.state <> 'running'
                              FOR UPDATE SKIP LOCKED));
  END IF;
  RETURN emptied;
END
$pq$;

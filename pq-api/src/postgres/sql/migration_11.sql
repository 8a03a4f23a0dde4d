-- pq migration 11: what the jobs table needs to be split into rotating partitions, each
-- emptied by TRUNCATE once drained, so that a held snapshot cannot leave claims stepping over
-- the row versions of every job completed since (docs/design.md, "Storage a held snapshot
-- cannot slow"). The split itself is partition.sql, run when asked (PgStore::partition).
--
-- `part` says which partition a job is in, or would be: 0 and 1 rotate, -1 holds the jobs with
-- cursor keys, whose one-pending-job-per-key index must see them all in one place (and takes
-- `part` into its key: a unique index of a partitioned table must). Puts write to the current
-- partition ({rotation}); the store's upkeep ({rotate_fn}) moves the current one on once it has
-- grown, and truncates the other one once it is found empty. On a table not split, `part` is
-- written and nothing else: the rotation step returns at once.
CREATE TABLE {rotation} (
  one boolean PRIMARY KEY DEFAULT true CHECK (one),
  current int2 NOT NULL CHECK (current BETWEEN 0 AND 1)
);
INSERT INTO {rotation} (current) VALUES (0);
CREATE FUNCTION {part_fn}() RETURNS int2 LANGUAGE sql STABLE AS $pq$
  SELECT current FROM {rotation}
$pq$;
ALTER TABLE {jobs} ADD COLUMN part int2 NOT NULL DEFAULT {part_fn}();
UPDATE {jobs} SET part = -1 WHERE cursor;
DROP INDEX {pending_idx_qualified};
CREATE UNIQUE INDEX {pending_idx} ON {jobs} (queue, key, part) WHERE cursor AND lease_token IS NULL;
-- One rotation step, run by a store's upkeep: → the number of partitions emptied.
--
-- The rotating partition that is not current is truncated if it holds no job: its
-- rows' versions go with it at once, whatever snapshot is held (VACUUM could not remove them).
-- Its lock is taken first, and the partition checked again under it: a put that took it for
-- the current partition has then committed or not begun. The lock is waited for 100 ms at
-- most: claims that come meanwhile queue behind the wait, and every claim holds a lock on
-- every partition while it runs, so that a lock only tried for was seldom had while workers
-- claimed. A partition still locked after that (by a vacuum, or a transaction that read the
-- jobs table and was left open) is left for a later step.
--
-- Once the current partition has grown to `full_bytes`, the other one becomes current if it is
-- empty; if a few jobs are left in it (scheduled far ahead, failed, waiting behind a key), the
-- ones not running are moved to the current partition first, so that it can be emptied.
--
-- Only in READ COMMITTED: each check then sees what committed before it. One store at a time
-- rotates a table (the rotation row is locked, skipped by the others).
CREATE FUNCTION {rotate_fn}(full_bytes int8) RETURNS int4 LANGUAGE plpgsql AS $pq$
DECLARE
  parts regclass[];
  cur int2;
  nxt int2;
  p int2;
  emptied int4 := 0;
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed'
     OR (SELECT c.relkind FROM pg_class AS c WHERE c.oid = '{jobs}'::regclass) <> 'p' THEN
    RETURN 0;
  END IF;
  parts := ARRAY['{part_0}', '{part_1}']::regclass[];
  PERFORM set_config('lock_timeout', '100ms', true);
  SELECT r.current INTO cur FROM {rotation} AS r FOR UPDATE SKIP LOCKED;
  IF NOT FOUND THEN
    RETURN 0;
  END IF;
  FOR p IN 0..1 LOOP
    CONTINUE WHEN p = cur OR pg_relation_size(parts[p + 1]) = 0;
    CONTINUE WHEN EXISTS (SELECT 1 FROM {jobs} AS j WHERE j.part = p);
    BEGIN
      EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', parts[p + 1]);
    EXCEPTION WHEN lock_not_available THEN
      CONTINUE;
    END;
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
  nxt := 1 - cur;
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

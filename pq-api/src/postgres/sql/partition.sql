-- Splits the jobs table into partitions (migration_11.sql says which), when a store is asked
-- to (PgStore::partition), in a transaction under the migrations' lock, on a table not yet
-- split. Every job and its id are kept: the rows are copied into the new table, which takes
-- over the id sequence and the grants; the old table is dropped. The copy holds the queue for
-- as long as it takes (about a second per 100,000 jobs).
ALTER TABLE {jobs} RENAME TO {unpartitioned};
DROP TRIGGER pq_notify_insert ON {unpartitioned_qualified};
DROP TRIGGER pq_notify_update ON {unpartitioned_qualified};
ALTER TABLE {unpartitioned_qualified} DROP CONSTRAINT {pkey};
DROP INDEX {claim_idx_qualified}, {run_idx_qualified}, {key_idx_qualified},
  {pending_idx_qualified}, {key_deadline_idx_qualified}, {unique_idx_qualified},
  {ended_idx_qualified};
CREATE TABLE {jobs} (
  LIKE {unpartitioned_qualified} INCLUDING DEFAULTS INCLUDING CONSTRAINTS
) PARTITION BY LIST (part);
CREATE TABLE {part_0} PARTITION OF {jobs} (CHECK (NOT cursor)) FOR VALUES IN (0);
CREATE TABLE {part_1} PARTITION OF {jobs} (CHECK (NOT cursor)) FOR VALUES IN (1);
CREATE TABLE {part_cursor} PARTITION OF {jobs} (CHECK (cursor)) FOR VALUES IN (-1);
-- A cursor-keyed job written by plain SQL took the current partition's number.
UPDATE {unpartitioned_qualified} SET part = -1 WHERE cursor AND part <> -1;
INSERT INTO {jobs} SELECT o.* FROM {unpartitioned_qualified} AS o;
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

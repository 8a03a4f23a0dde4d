-- Analyzes the jobs table, or each of its partitions once split (partition.sql), whose
-- planner statistics lag far behind it: none
-- yet, or under half the rows it holds, with over 1,000 held (no parameters; a simple query).
-- A claim scans each partition by that partition's statistics; a partition just truncated has
-- none until it is filled and analyzed. Ownership is checked first: without it PostgreSQL
-- would skip the ANALYZE with a warning, at every check. (Other roles allowed to analyze it,
-- such as the database's owner, are left to autovacuum.)
DO $$
DECLARE
  stale regclass;
BEGIN
  FOR stale IN
    SELECT c.oid::regclass
    FROM pg_class AS c JOIN pg_stat_user_tables AS s ON s.relid = c.oid
    WHERE (c.oid = '{jobs}'::regclass
           OR c.oid IN (SELECT t.relid FROM pg_partition_tree('{jobs}'::regclass) AS t))
      AND c.relkind = 'r' AND s.n_live_tup > 1000
      AND (c.reltuples < 0 OR c.reltuples * 2 < s.n_live_tup)
      AND pg_has_role(c.relowner, 'USAGE')
  LOOP
    EXECUTE format('ANALYZE %s', stale);
  END LOOP;
END$$

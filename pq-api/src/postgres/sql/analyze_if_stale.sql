-- Analyzes the jobs table if its planner statistics lag far behind it: none yet, or under
-- half the rows it holds, with over 1,000 held (no parameters; a simple query). Ownership is
-- checked first: without it PostgreSQL would skip the ANALYZE with a warning, at every check.
-- (Other roles allowed to analyze it, such as the database's owner, are left to autovacuum.)
DO $$BEGIN
  IF (SELECT s.n_live_tup > 1000
             AND (c.reltuples < 0 OR c.reltuples * 2 < s.n_live_tup)
             AND pg_has_role(c.relowner, 'USAGE')
      FROM pg_class AS c JOIN pg_stat_user_tables AS s ON s.relid = c.oid
      WHERE c.oid = '{jobs}'::regclass)
  THEN ANALYZE {jobs};
  END IF;
END$$

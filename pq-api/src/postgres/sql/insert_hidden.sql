-- The parts of insert.sql for a statement whose rows have serial keys and no cursor or
-- uniqueness keys, each starting with its name as a comment line: hiding, window.
-- A row is hidden (left out of the claim index, see migration_7.sql) when an earlier row of
-- the statement has its queue, key, priority and deadline and no later run_at; that row runs
-- first, and the statement that ends its turn shows the next (show_next.sql). The first row
-- of each such group that has others is marked as hiding them.
-- hiding: the columns hidden and hides.
j.key IS NOT NULL AND row_number() OVER w > 1,
j.key IS NOT NULL AND row_number() OVER w = 1 AND count(*) OVER g > 1
-- window: the groups, and their rows in the order they run.
WINDOW g AS (
  PARTITION BY j.queue, j.key, j.priority,
    COALESCE(j.expected_at, statement_timestamp() + j.expected_in * interval '1 microsecond')),
  w AS (g ORDER BY COALESCE(j.run_at, statement_timestamp() + j.run_in * interval '1 microsecond'),
    j.ord)

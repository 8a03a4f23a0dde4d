-- Appended to insert.sql for rows with cursor keys: a put while the key has a pending job
-- returns that job's id instead of inserting. (Without cursor keys the clause is left out:
-- with it PostgreSQL inserts every row speculatively, ~12% of a 1,000-row insert's time.)
-- Every cursor-keyed row is in one partition, so `part` in the key changes nothing.
 ON CONFLICT (queue, key, part) WHERE cursor AND lease_token IS NULL
DO UPDATE SET cursor = EXCLUDED.cursor

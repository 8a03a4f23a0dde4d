-- Puts jobs. $1 text[] queue, $2 text[] payload, $3 int4[] priority, $4 timestamptz[] run_at,
-- $5 int8[] run_in µs, $6 timestamptz[] expected_at, $7 int8[] expected_in µs,
-- $8 int4[] max_attempts, $9 text[] key, $10 bool[] cursor, $11 int8[] keep_for µs,
-- $12 int8[] timeout µs, $13 text[] unique_key, $14 int8[] unique_scope
-- → id, cursor, queue, key, unique_key per row: queue and key for cursor-keyed rows, queue
-- and unique_key for rows with a uniqueness key (null on the others, so that a batch of
-- plain jobs returns no text). A row refused for its uniqueness key returns the id of the
-- job holding the key.
-- {on_conflict} is empty, or for rows with cursor keys the ON CONFLICT clause that folds a
-- put into the key's pending job (on_conflict_cursor.sql). {held}, {unique_filter},
-- {periods} and {refused} are empty, or for rows with uniqueness keys the parts of
-- insert_unique.sql.
-- A key's record is created, or locked FOR KEY SHARE if it exists, so that a prune cannot
-- remove it before this put commits (a lock that claims and completions, which change no key
-- column, do not wait on).
-- Each row goes to the current rotating partition (migration_11.sql), a cursor-keyed row to
-- the partition of cursor keys, where the index of pending cursor jobs sees all of them.
-- {hiding} is `false, false` and {window} empty, or for rows with serial keys (and no cursor
-- or uniqueness keys) the expressions and the window of insert_hidden.sql.
WITH {held}ins AS (
  INSERT INTO {jobs} AS t (queue, payload, priority, run_at, expected_at, max_attempts, key,
                           cursor, keep_for, timeout, unique_key, unique_scope, hidden,
                           hides, part)
  SELECT j.queue, j.payload::jsonb, j.priority,
         COALESCE(j.run_at, statement_timestamp() + j.run_in * interval '1 microsecond'),
         COALESCE(j.expected_at, statement_timestamp() + j.expected_in * interval '1 microsecond'),
         j.max_attempts, j.key, j.cursor, j.keep_for, j.timeout, j.unique_key, j.unique_scope,
         {hiding},
         CASE WHEN j.cursor THEN -1 ELSE (SELECT r.current FROM {rotation} AS r) END
  FROM unnest($1::text[], $2::text[], $3::int4[], $4::timestamptz[], $5::int8[],
              $6::timestamptz[], $7::int8[], $8::int4[], $9::text[], $10::bool[], $11::int8[],
              $12::int8[], $13::text[], $14::int8[])
       WITH ORDINALITY AS j(queue, payload, priority, run_at, run_in, expected_at,
                            expected_in, max_attempts, key, cursor, keep_for, timeout,
                            unique_key, unique_scope, ord)
  {unique_filter}
  {window}
  ORDER BY j.ord
  {on_conflict}
  RETURNING t.id, t.cursor, t.queue, t.key, t.unique_key, t.unique_scope
), new_keys AS (
  INSERT INTO {keys} (queue, key)
  SELECT n.queue, n.key FROM (SELECT DISTINCT queue, key FROM ins WHERE key IS NOT NULL) AS n
  WHERE NOT EXISTS (SELECT 1 FROM {keys} AS k WHERE k.queue = n.queue AND k.key = n.key
                    FOR KEY SHARE)
  ON CONFLICT DO NOTHING
){periods}
SELECT id, cursor, CASE WHEN cursor OR unique_key IS NOT NULL THEN queue END AS queue,
       CASE WHEN cursor THEN key END AS key, unique_key
FROM ins{refused}

-- The parts of insert.sql for rows with uniqueness keys, each starting with its name as a
-- comment line: held, unique_filter, periods, refused.
-- held: the jobs holding the rows' keys now, found under the keys' locks.
held AS (SELECT * FROM {unique_fn}($1::text[], $13::text[])),
-- unique_filter: a row whose key is held is not inserted.
WHERE j.unique_key IS NULL
   OR NOT EXISTS (SELECT 1 FROM held AS h
                  WHERE h.queue = j.queue AND h.key = j.unique_key AND h.holder IS NOT NULL)
-- periods: a job put with a period holds its key until the period ends.
, periods AS (
  INSERT INTO {unique} AS u (queue, key, job_id, until)
  SELECT queue, unique_key, id, statement_timestamp() + unique_scope * interval '1 microsecond'
  FROM ins WHERE unique_scope > 0
  ON CONFLICT (queue, key) DO UPDATE SET job_id = EXCLUDED.job_id, until = EXCLUDED.until
)
-- refused: the holder's id for each row whose key is held.
UNION ALL SELECT h.holder, false, h.queue, NULL, h.key FROM held AS h WHERE h.holder IS NOT NULL

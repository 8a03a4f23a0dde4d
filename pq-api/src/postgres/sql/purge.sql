-- Removes every job of a queue and frees its keys: $1 text queue → n int8, the jobs removed.
WITH gone AS (
  DELETE FROM {jobs} WHERE queue = $1::text RETURNING id
), freed AS (
  UPDATE {keys} SET running_id = NULL, running_until = NULL
  WHERE queue = $1::text AND running_id IS NOT NULL
)
SELECT count(*)::int8 AS n FROM gone

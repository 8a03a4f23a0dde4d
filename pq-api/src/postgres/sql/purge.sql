-- Removes every job of a queue and frees its keys and concurrency places: $1 text queue → n int8, the jobs removed.
WITH gone AS (
  DELETE FROM {jobs} WHERE queue = $1::text RETURNING id
), freed AS (
  UPDATE {keys} SET running_id = NULL, running_until = NULL
  WHERE queue = $1::text AND running_id IS NOT NULL
), unseated AS (
  UPDATE {slots} SET job_id = NULL, token = NULL, until = NULL
  WHERE queue = $1::text AND kind = 'c' AND job_id IS NOT NULL
)
SELECT count(*)::int8 AS n FROM gone

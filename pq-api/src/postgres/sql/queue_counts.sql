-- Every queue's jobs counted by state → one JSON array per queue and state, as text:
-- [queue, state, n].
SELECT json_build_array(queue, state, n)::text AS row FROM (
  SELECT queue, {state} AS state, count(*) AS n FROM {jobs} GROUP BY 1, 2
) AS c

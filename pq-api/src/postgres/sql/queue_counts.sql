-- Every queue's jobs counted by state → one JSON array per queue and state, as text:
-- [queue, state, n, µs since the earliest run_at among them] (for ready jobs: how long the
-- oldest has been claimable).
SELECT json_build_array(queue, state, n, age)::text AS row FROM (
  SELECT queue, {state} AS state, count(*) AS n,
         (extract(epoch FROM statement_timestamp() - min(run_at)) * 1e6)::int8 AS age
  FROM {jobs} GROUP BY 1, 2
) AS c

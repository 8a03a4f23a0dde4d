-- A queue's jobs counted by state: $1 text queue → state, n int8 per state present.
SELECT {state} AS state, count(*)::int8 AS n FROM {jobs}
WHERE queue = $1::text GROUP BY 1

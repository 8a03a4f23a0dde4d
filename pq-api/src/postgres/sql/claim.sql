-- Claims at most {limit} jobs from {queues}, each leased for {lease} µs under one new token
-- (drawn here, 64 random bits) → job rows plus key_state text, in claim order. The statement
-- takes no parameters: {queues} (the queue names as literals, no repeats), {limit}, {lease}
-- and {commit} are filled in per claim (Statements::claim says why).
--
-- `q` drops paused queues and brings each queue's limits (one probe of the small settings
-- table per queue). A queue without limits takes the first branch of `cand`, the plain
-- scan; a limited one the second, which keeps no more candidates than `room`, the free
-- places it could lock in `free` (claim_candidates.sql holds the scan both branches run).
--
-- A keyed job is a candidate if the scan can lock its key's row while no other job holds the
-- key, and it heads its key's claimable jobs (claim_candidates.sql); `taken` then records the
-- claimed job on that row, found by the row's ctid, which the lock keeps from moving. The
-- head test is a boolean subquery, not `(SELECT id …) = j.id`: the planner guesses an
-- equality with a subquery passes 0.5% of rows, expects to scan the whole index, and above
-- jit_above_cost spends ~100 ms compiling every claim.
--
-- A claim shows no job: whatever ends a claimed job that hides others (complete, fail, release,
-- cancel) shows the next of its group; until then the next waits hidden, and should the
-- claimed job's lease run out first, the claim that finds it expired takes that next job in
-- its place (claim_candidates.sql, `via`): a job claimed so is shown, and takes over hiding
-- the rest of its group.
WITH lease AS (
  SELECT ('x' || substr(md5(gen_random_uuid()::text), 1, 16))::bit(64)::int8 AS token
), q AS (
  SELECT v.name, s.concurrency, s.rate, s.rate_per
  FROM (VALUES {queues}) AS v(name)
  LEFT JOIN {queues_table} AS s ON s.queue = v.name
  WHERE s.paused IS NOT TRUE
), free AS (
  SELECT f.queue, f.kind, f.slot,
         row_number() OVER (PARTITION BY f.queue, f.kind ORDER BY f.slot) AS n
  FROM (
    SELECT l.queue, l.kind, l.slot FROM q JOIN {slots} AS l ON l.queue = q.name
    WHERE (q.concurrency IS NOT NULL OR q.rate IS NOT NULL)
      AND (l.until IS NULL OR l.until <= statement_timestamp())
    FOR UPDATE OF l SKIP LOCKED
  ) AS f
), room AS (
  SELECT q.name, LEAST(
    CASE WHEN q.concurrency IS NOT NULL
         THEN (SELECT count(*) FROM free WHERE free.queue = q.name AND free.kind = 'c') END,
    CASE WHEN q.rate IS NOT NULL
         THEN (SELECT count(*) FROM free WHERE free.queue = q.name AND free.kind = 'r') END
  ) AS room
  FROM q WHERE q.concurrency IS NOT NULL OR q.rate IS NOT NULL
), cand AS (
  SELECT c.id, c.queue, c.key, c.priority, c.expected_at, c.run_at, c.via, c.kctid FROM (
    SELECT c.* FROM q CROSS JOIN LATERAL (
      {candidates}
    ) AS c
    WHERE q.concurrency IS NULL AND q.rate IS NULL
    UNION ALL
    SELECT c.id, c.queue, c.key, c.priority, c.expected_at, c.run_at, c.via, c.kctid FROM (
      SELECT c.*, r.room,
             row_number() OVER (PARTITION BY c.queue ORDER BY c.priority DESC,
               c.expected_at ASC NULLS LAST, c.run_at ASC, c.id ASC) AS n
      FROM room AS r CROSS JOIN LATERAL (
        SELECT r.name) AS q(name) CROSS JOIN LATERAL (
        {candidates}
      ) AS c
    ) AS c WHERE c.n <= c.room
  ) AS c
  ORDER BY c.priority DESC, c.expected_at ASC NULLS LAST, c.run_at ASC, c.id ASC
  LIMIT {limit}
), {take}, placed AS (
  SELECT p.id, p.queue, row_number() OVER (PARTITION BY p.queue ORDER BY p.id) AS n
  FROM cand AS p JOIN room AS r ON r.name = p.queue
), seated AS (
  UPDATE {slots} AS l SET job_id = c.id, token = (SELECT token FROM lease),
         until = CASE WHEN l.kind = 'c' THEN c.run_at
                      ELSE statement_timestamp() + q.rate_per * interval '1 microsecond' END
  FROM claimed AS c JOIN placed AS p ON p.id = c.id JOIN q ON q.name = p.queue
  JOIN free AS f ON f.queue = p.queue AND f.n = p.n
  WHERE l.queue = f.queue AND l.kind = f.kind AND l.slot = f.slot
)
SELECT {claim_columns},
       CASE WHEN key IS NOT NULL THEN COALESCE(k_state::text, 'null') END AS key_state
FROM claimed LEFT JOIN taken ON k_queue = queue AND k_key = key {commit}
ORDER BY priority DESC, expected_at ASC NULLS LAST, prev_run_at ASC, id ASC

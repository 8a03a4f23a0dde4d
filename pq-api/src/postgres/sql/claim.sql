-- Claims at most {limit} jobs from {queues}: $1 text[] the queues (exactly as many as
-- {queues} lists, no repeats), $2 int8 lease µs, $3 int8 the new lease token → job rows plus
-- key_state text, in claim order. {queues}, {limit} and {commit} are filled in per claim
-- (Statements::claim says why they are not bound).
--
-- A keyed job is a candidate if no other job holds its key (tested first: it is the cheaper
-- probe, and rules out every waiting job of a held key) and it heads its key's claimable
-- jobs; `picked` then locks the key's row, re-checked at its latest version, which makes the
-- check race-free. The head test is a boolean subquery, not `(SELECT id …) = j.id`: the
-- planner guesses an equality with a subquery passes 0.5% of rows, expects to scan the whole
-- index, and above jit_above_cost spends ~100 ms compiling every claim.
WITH cand AS (
  SELECT c.id, c.queue, c.key, c.priority, c.expected_at, c.run_at
  FROM (VALUES {queues}) AS q(name)
  CROSS JOIN LATERAL (
    SELECT j.id, j.queue, j.key, j.priority, j.expected_at, j.run_at
    FROM {jobs} AS j
    WHERE j.queue = q.name
      AND j.state <> 'failed' AND j.run_at <= statement_timestamp()
      AND j.attempts < j.max_attempts
      AND (j.key IS NULL OR (
        NOT EXISTS (SELECT 1 FROM {keys} AS k WHERE k.queue = j.queue
                    AND k.key = j.key AND k.running_id <> j.id
                    AND k.running_until > statement_timestamp())
        AND (SELECT o.id = j.id FROM {jobs} AS o WHERE o.queue = j.queue AND o.key = j.key
             AND o.state <> 'failed' AND o.run_at <= statement_timestamp()
             AND o.attempts < o.max_attempts
             ORDER BY o.priority DESC, o.expected_at ASC NULLS LAST, o.run_at ASC, o.id ASC
             LIMIT 1)))
    ORDER BY j.priority DESC, j.expected_at ASC NULLS LAST, j.run_at ASC, j.id ASC
    LIMIT {limit} FOR UPDATE OF j SKIP LOCKED
  ) AS c
  ORDER BY c.priority DESC, c.expected_at ASC NULLS LAST, c.run_at ASC, c.id ASC
  LIMIT {limit}
), picked AS (
  SELECT c.id, c.run_at AS prev_run_at FROM cand AS c
  LEFT JOIN LATERAL (
    SELECT true AS free FROM {keys} AS k
    WHERE c.key IS NOT NULL AND k.queue = c.queue AND k.key = c.key
      AND (k.running_id IS NULL OR k.running_id = c.id
           OR k.running_until <= statement_timestamp())
    FOR UPDATE SKIP LOCKED
  ) AS h ON true
  WHERE c.key IS NULL OR h.free
), claimed AS (
  UPDATE {jobs} AS t SET state = 'running', attempts = t.attempts + 1,
         lease_token = $3::int8,
         run_at = statement_timestamp() + $2::int8 * interval '1 microsecond'
  FROM picked WHERE t.id = picked.id
  RETURNING t.*, picked.prev_run_at
), taken AS (
  UPDATE {keys} AS k SET running_id = c.id, running_until = c.run_at
  FROM claimed AS c WHERE c.key IS NOT NULL AND k.queue = c.queue AND k.key = c.key
  RETURNING k.queue AS k_queue, k.key AS k_key, k.state AS k_state
)
SELECT {claim_columns},
       CASE WHEN key IS NOT NULL THEN COALESCE(k_state::text, 'null') END AS key_state
FROM claimed LEFT JOIN taken ON k_queue = queue AND k_key = key {commit}
ORDER BY priority DESC, expected_at ASC NULLS LAST, prev_run_at ASC, id ASC

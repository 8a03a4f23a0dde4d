-- The claim of claim.sql for queues without limits: the same jobs, leases and key records,
-- without the places of limited queues. {queues}, {limit}, {lease} and {commit} are filled in
-- as there (Statements::claim).
--
-- `q` keeps the queues neither paused nor limited, in one probe of the small settings table
-- each. Should any queue claimed from have a limit (`limited`), this statement claims nothing
-- and returns one marker row instead, id 0 and no lease token (a claimed row always has one):
-- the store then claims with claim.sql, which keeps the limits. A queue that never had a limit
-- so costs its claims nothing of them: no places locked, counted or taken.
WITH lease AS (
  SELECT ('x' || substr(md5(gen_random_uuid()::text), 1, 16))::bit(64)::int8 AS token
), settings AS (
  SELECT s.queue, s.paused, s.concurrency IS NOT NULL OR s.rate IS NOT NULL AS limited
  FROM (VALUES {queues}) AS v(name) JOIN {queues_table} AS s ON s.queue = v.name
), limited AS (
  SELECT true AS yes FROM settings WHERE NOT paused AND limited LIMIT 1
), q AS (
  SELECT v.name FROM (VALUES {queues}) AS v(name)
  WHERE NOT EXISTS (SELECT 1 FROM settings AS s WHERE s.queue = v.name AND (s.paused OR s.limited))
), cand AS (
  SELECT c.id, c.queue, c.key, c.priority, c.expected_at, c.run_at, c.via, c.kctid
  FROM q CROSS JOIN LATERAL (
    {candidates}
  ) AS c
  WHERE NOT EXISTS (SELECT 1 FROM limited)
  ORDER BY c.priority DESC, c.expected_at ASC NULLS LAST, c.run_at ASC, c.id ASC
  LIMIT {limit}
), {take}
SELECT id, queue, payload, priority, expected_at, run_at, state, attempts, max_attempts,
       last_error, created_at, lease_token, key, cursor, keep_for, timeout, unique_key,
       unique_scope, progress, key_state
FROM (
  SELECT {claim_columns},
         CASE WHEN key IS NOT NULL THEN COALESCE(k_state::text, 'null') END AS key_state,
         prev_run_at AS claim_order
  FROM claimed LEFT JOIN taken ON k_queue = queue AND k_key = key
  UNION ALL
  SELECT 0, '', 'null', 0, NULL, statement_timestamp(), 'limited', 0, 1, NULL,
         statement_timestamp(), NULL, NULL, false, NULL, NULL, NULL, NULL, NULL, NULL, NULL
  FROM limited
) AS r {commit}
ORDER BY priority DESC, expected_at ASC NULLS LAST, claim_order ASC, id ASC

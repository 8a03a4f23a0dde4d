-- When a job of {queues} may next be claimable: $1 text[] the queues (exactly as many as
-- {queues} lists) → next_at timestamptz (null: nothing pending, or only a time no driver can
-- decode, left by a row written before pq's checks), now timestamptz. {queues} is filled in
-- per call, as in claim.sql.
--
-- Jobs without a key: the earliest run_at per queue. Keyed jobs: per live key (found by
-- skipping through the key index), its earliest run_at, but not before a live lease on the
-- key runs out.
WITH RECURSIVE qs AS (
  SELECT DISTINCT name FROM (VALUES {queues}) AS q(name) WHERE name IS NOT NULL
), ks AS (
  SELECT qs.name AS queue,
         (SELECT min(key) FROM {jobs} WHERE queue = qs.name AND key IS NOT NULL
          AND state <> 'failed') AS key
  FROM qs
  UNION ALL
  SELECT ks.queue,
         (SELECT min(key) FROM {jobs} WHERE queue = ks.queue AND key > ks.key
          AND state <> 'failed')
  FROM ks WHERE ks.key IS NOT NULL
), nr AS (
  SELECT LEAST(
    (SELECT min(n.run_at) FROM qs CROSS JOIN LATERAL (
       SELECT run_at FROM {jobs}
       WHERE queue = qs.name AND key IS NULL AND state <> 'failed'
         AND attempts < max_attempts
       ORDER BY run_at LIMIT 1) AS n),
    (SELECT min(GREATEST(h.run_at, CASE WHEN k.running_until > statement_timestamp()
                                        THEN k.running_until END))
     FROM ks CROSS JOIN LATERAL (
       SELECT run_at FROM {jobs}
       WHERE queue = ks.queue AND key = ks.key AND state <> 'failed'
         AND attempts < max_attempts
       ORDER BY run_at LIMIT 1) AS h
     LEFT JOIN {keys} AS k ON k.queue = ks.queue AND k.key = ks.key)
  ) AS at
)
SELECT CASE WHEN isfinite(at) THEN at END AS next_at, statement_timestamp() AS now
FROM nr

-- When a job of {queues} may next be claimable: $1 text[] the queues (exactly as many as
-- {queues} lists) → next_at timestamptz (null: nothing pending, or only a time no driver can
-- decode, left by a row written before pq's checks), now timestamptz. {queues} is filled in
-- per call, as in claim.sql.
--
-- Paused queues are left out. Jobs without a key: the earliest run_at per queue. Keyed jobs:
-- per live key, its earliest run_at, but not before a live lease on the key runs out. `ks`
-- skips through the key index from one (key, priority) to the next, two probes a step; a
-- key's jobs of one priority without a deadline are in run_at order there (one probe finds
-- their earliest), its jobs with a deadline in the narrower deadline index (one probe a key,
-- repeated for each of its priorities; OFFSET 0 keeps the planner from copying both probes
-- into each use of their result). A limited queue's jobs not before it has a free place
-- of each kind it limits (a place comes free when its `until` passes, or sooner when its job
-- ends, which notifies).
WITH RECURSIVE qs AS (
  SELECT DISTINCT v.name, s.concurrency, s.rate
  FROM (VALUES {queues}) AS v(name) LEFT JOIN {queues_table} AS s ON s.queue = v.name
  WHERE v.name IS NOT NULL AND s.paused IS NOT TRUE
), ks AS (
  SELECT qs.name AS queue, f.key, f.priority FROM qs CROSS JOIN LATERAL (
    SELECT key, priority FROM {jobs}
    WHERE queue = qs.name AND key IS NOT NULL AND state <> 'failed'
    ORDER BY key, priority DESC LIMIT 1) AS f
  UNION ALL
  SELECT ks.queue, n.key, n.priority FROM ks CROSS JOIN LATERAL (
    (SELECT key, priority FROM {jobs}
     WHERE queue = ks.queue AND key = ks.key AND priority < ks.priority AND state <> 'failed'
     ORDER BY key, priority DESC LIMIT 1)
    UNION ALL
    (SELECT key, priority FROM {jobs}
     WHERE queue = ks.queue AND key > ks.key AND state <> 'failed'
     ORDER BY key, priority DESC LIMIT 1)
    LIMIT 1) AS n
), due AS (
  SELECT qs.name AS queue, n.run_at AS at FROM qs CROSS JOIN LATERAL (
    SELECT run_at FROM {jobs}
    WHERE queue = qs.name AND key IS NULL AND state <> 'failed'
      AND attempts < max_attempts
    ORDER BY run_at LIMIT 1) AS n
  UNION ALL
  SELECT ks.queue, GREATEST(h.at, CASE WHEN k.running_until > statement_timestamp()
                                      THEN k.running_until END)
  FROM ks CROSS JOIN LATERAL (
    SELECT LEAST(
      (SELECT run_at FROM {jobs}
       WHERE queue = ks.queue AND key = ks.key AND priority = ks.priority
         AND expected_at IS NULL AND state <> 'failed' AND attempts < max_attempts
       ORDER BY priority DESC, expected_at ASC NULLS LAST, run_at ASC LIMIT 1),
      (SELECT run_at FROM {jobs}
       WHERE queue = ks.queue AND key = ks.key AND expected_at IS NOT NULL
         AND state <> 'failed' AND attempts < max_attempts
       ORDER BY run_at LIMIT 1)) AS at OFFSET 0) AS h
  LEFT JOIN {keys} AS k ON k.queue = ks.queue AND k.key = ks.key
  WHERE h.at IS NOT NULL
), gated AS (
  SELECT GREATEST(d.at,
    CASE WHEN qs.concurrency IS NOT NULL THEN COALESCE(
      (SELECT min(COALESCE(l.until, '-infinity')) FROM {slots} AS l
       WHERE l.queue = qs.name AND l.kind = 'c'), 'infinity') END,
    CASE WHEN qs.rate IS NOT NULL THEN COALESCE(
      (SELECT min(COALESCE(l.until, '-infinity')) FROM {slots} AS l
       WHERE l.queue = qs.name AND l.kind = 'r'), 'infinity') END) AS at
  FROM (SELECT queue, min(at) AS at FROM due GROUP BY queue) AS d
  JOIN qs ON qs.name = d.queue
)
SELECT CASE WHEN isfinite(min(at)) THEN min(at) END AS next_at, statement_timestamp() AS now
FROM gated

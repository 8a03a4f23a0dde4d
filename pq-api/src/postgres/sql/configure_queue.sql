-- Changes one setting of a queue: $1 text queue, $2 int4 which (1 paused, 2 concurrency,
-- 3 rate, 4 retention), $3 bool paused, $4 int8 the limit or retention µs (0: none),
-- $5 int8 the rate's period µs → n int8 (1). Keeps the queue's places in step with its
-- limits (a place beyond a lowered limit goes, even if held: its job runs on) and wakes the
-- queue's waiters.
WITH s AS (
  INSERT INTO {queues_table} AS s (queue, paused, concurrency, rate, rate_per, retention)
  VALUES ($1::text, $2::int4 = 1 AND $3::bool,
          CASE WHEN $2::int4 = 2 THEN NULLIF($4::int8, 0)::int4 END,
          CASE WHEN $2::int4 = 3 THEN NULLIF($4::int8, 0)::int4 END,
          CASE WHEN $2::int4 = 3 AND $4::int8 <> 0 THEN $5::int8 END,
          CASE WHEN $2::int4 = 4 THEN NULLIF($4::int8, 0) END)
  ON CONFLICT (queue) DO UPDATE SET
    paused = CASE WHEN $2::int4 = 1 THEN EXCLUDED.paused ELSE s.paused END,
    concurrency = CASE WHEN $2::int4 = 2 THEN EXCLUDED.concurrency ELSE s.concurrency END,
    rate = CASE WHEN $2::int4 = 3 THEN EXCLUDED.rate ELSE s.rate END,
    rate_per = CASE WHEN $2::int4 = 3 THEN EXCLUDED.rate_per ELSE s.rate_per END,
    retention = CASE WHEN $2::int4 = 4 THEN EXCLUDED.retention ELSE s.retention END
  RETURNING s.queue, s.concurrency, s.rate
), kinds AS (
  SELECT s.queue, k.kind, k.n FROM s,
    LATERAL (VALUES ('c', s.concurrency), ('r', s.rate)) AS k(kind, n)
  WHERE ($2::int4 = 2 AND k.kind = 'c') OR ($2::int4 = 3 AND k.kind = 'r')
), added AS (
  INSERT INTO {slots} (queue, kind, slot)
  SELECT kinds.queue, kinds.kind, g FROM kinds, generate_series(0, COALESCE(kinds.n, 0) - 1) AS g
  ON CONFLICT DO NOTHING
), dropped AS (
  DELETE FROM {slots} AS l USING kinds
  WHERE l.queue = kinds.queue AND l.kind = kinds.kind AND l.slot >= COALESCE(kinds.n, 0)
)
SELECT count(*)::int8 AS n FROM s, LATERAL pg_notify('{channel_name}', s.queue) AS told

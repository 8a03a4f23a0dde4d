-- Adds workers' counts to the current minute's records: $1 text[] queues, $2 int8[] completed,
-- $3 int8[] failed (a queue may come more than once) → n int8 per record written.
INSERT INTO {throughput} AS t (queue, minute, completed, failed)
SELECT queue, date_trunc('minute', statement_timestamp()), sum(completed)::int8,
       sum(failed)::int8
FROM unnest($1::text[], $2::int8[], $3::int8[]) AS r(queue, completed, failed)
GROUP BY queue
ON CONFLICT (queue, minute) DO UPDATE
SET completed = t.completed + excluded.completed, failed = t.failed + excluded.failed
RETURNING 1::int8 AS n

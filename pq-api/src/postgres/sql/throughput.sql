-- The per-minute records from the minute $1 int8 µs ago on, oldest first → one JSON array per
-- record, as text: [queue, minute µs since the epoch, completed, failed].
SELECT json_build_array(queue, (extract(epoch FROM minute) * 1e6)::int8, completed, failed)::text
  AS row
FROM {throughput}
WHERE minute >= date_trunc('minute', statement_timestamp() - $1::int8 * interval '1 microsecond')
ORDER BY minute, queue

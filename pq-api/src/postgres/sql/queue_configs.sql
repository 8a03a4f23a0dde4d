-- Every queue's settings, one row per queue that has any → one JSON array per row, as text:
-- [queue, paused, concurrency, rate, rate_per µs, retention µs] (0 for none).
SELECT json_build_array(queue, paused, COALESCE(concurrency, 0), COALESCE(rate, 0),
                        COALESCE(rate_per, 0), COALESCE(retention, 0))::text AS row
FROM {queues_table} ORDER BY queue

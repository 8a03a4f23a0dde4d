-- The next queued job after job c in c's group (its queue, key, priority and deadline, serial
-- keys only), in claim order: a LATERAL subquery spliced in as {next_in_group} by
-- show_next.sql and cancel.sql, which show that job when c hid others (migration_7.sql), and
-- by claim_candidates.sql, which claims it in the place of an expired c. Written as two
-- branches, one per kind of deadline, so that each is one probe of the key index in its order.
(SELECT n.id FROM {jobs} AS n
 WHERE c.expected_at IS NULL AND n.queue = c.queue AND n.key = c.key
   AND n.priority = c.priority AND n.expected_at IS NULL
   AND n.state = 'queued' AND NOT n.cursor AND n.unique_key IS NULL AND n.id <> c.id
 ORDER BY n.priority DESC, n.expected_at ASC NULLS LAST, n.run_at ASC, n.id ASC LIMIT 1)
UNION ALL
(SELECT n.id FROM {jobs} AS n
 WHERE n.queue = c.queue AND n.key = c.key AND n.priority = c.priority
   AND n.expected_at = c.expected_at
   AND n.state = 'queued' AND NOT n.cursor AND n.unique_key IS NULL AND n.id <> c.id
 ORDER BY n.priority DESC, n.expected_at ASC NULLS LAST, n.run_at ASC, n.id ASC LIMIT 1)

-- Wakes the waiters of each queue where a key freed by the statement has a job waiting: the
-- body of a CTE of complete.sql and fail.sql, spliced in as {key_freed_notify}, reading their
-- `freed` (queue, key of each freed key). The statement's snapshot still shows the jobs it
-- ends as running, so a waiting job is a queued one; one probe finds it in a backlog.
SELECT pg_notify('{channel_name}', q.queue)
FROM (SELECT DISTINCT queue FROM freed) AS q
WHERE EXISTS (SELECT 1 FROM freed AS f JOIN {jobs} AS j ON j.queue = f.queue AND j.key = f.key
              WHERE f.queue = q.queue AND j.state = 'queued')

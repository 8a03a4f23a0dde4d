-- pq migration 8: the statements that free a key wake waiters themselves.
-- The row trigger that notified for every freed key whose key had jobs left (a PL/pgSQL
-- call and a probe per completed keyed job, most of a keyed completion's cost) is replaced
-- by one notification per queue, sent by complete.sql and fail.sql when a key they free has
-- a job waiting (release.sql's and a retry's job is queued, which the insert-and-update
-- trigger already reports).
DROP TRIGGER pq_notify_key_freed ON {keys};
DROP FUNCTION {key_notify_fn}();

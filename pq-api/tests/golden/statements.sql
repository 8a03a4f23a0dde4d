-- Every statement pq runs, rendered for the default table "public"."pq_jobs".
-- Written by pq-api/tests/golden.rs (PQ_BLESS=1); do not edit by hand.

-- insert
WITH ins AS (INSERT INTO "public"."pq_jobs" AS t (queue, payload, priority, run_at, expected_at, max_attempts, key, cursor, keep_for, timeout, unique_key, unique_scope, hidden, hides, part) SELECT j.queue, j.payload::jsonb, j.priority, COALESCE(j.run_at, statement_timestamp() + j.run_in * interval '1 microsecond'), COALESCE(j.expected_at, statement_timestamp() + j.expected_in * interval '1 microsecond'), j.max_attempts, j.key, j.cursor, j.keep_for, j.timeout, j.unique_key, j.unique_scope, false, false, CASE WHEN j.cursor THEN -1 ELSE (SELECT r.current FROM "public"."pq_jobs_rotation" AS r) END FROM unnest($1::text[], $2::text[], $3::int4[], $4::timestamptz[], $5::int8[], $6::timestamptz[], $7::int8[], $8::int4[], $9::text[], $10::bool[], $11::int8[], $12::int8[], $13::text[], $14::int8[]) WITH ORDINALITY AS j(queue, payload, priority, run_at, run_in, expected_at, expected_in, max_attempts, key, cursor, keep_for, timeout, unique_key, unique_scope, ord) ORDER BY j.ord RETURNING t.id, t.cursor, t.queue, t.key, t.unique_key, t.unique_scope), new_keys AS (INSERT INTO "public"."pq_jobs_keys" (queue, key) SELECT n.queue, n.key FROM (SELECT DISTINCT queue, key FROM ins WHERE key IS NOT NULL) AS n WHERE NOT EXISTS (SELECT 1 FROM "public"."pq_jobs_keys" AS k WHERE k.queue = n.queue AND k.key = n.key FOR KEY SHARE) ON CONFLICT DO NOTHING) SELECT id, cursor, CASE WHEN cursor OR unique_key IS NOT NULL THEN queue END AS queue, CASE WHEN cursor THEN key END AS key, unique_key FROM ins

-- insert, serial keys shared
WITH ins AS (INSERT INTO "public"."pq_jobs" AS t (queue, payload, priority, run_at, expected_at, max_attempts, key, cursor, keep_for, timeout, unique_key, unique_scope, hidden, hides, part) SELECT j.queue, j.payload::jsonb, j.priority, COALESCE(j.run_at, statement_timestamp() + j.run_in * interval '1 microsecond'), COALESCE(j.expected_at, statement_timestamp() + j.expected_in * interval '1 microsecond'), j.max_attempts, j.key, j.cursor, j.keep_for, j.timeout, j.unique_key, j.unique_scope, j.key IS NOT NULL AND row_number() OVER w > 1, j.key IS NOT NULL AND row_number() OVER w = 1 AND count(*) OVER g > 1, CASE WHEN j.cursor THEN -1 ELSE (SELECT r.current FROM "public"."pq_jobs_rotation" AS r) END FROM unnest($1::text[], $2::text[], $3::int4[], $4::timestamptz[], $5::int8[], $6::timestamptz[], $7::int8[], $8::int4[], $9::text[], $10::bool[], $11::int8[], $12::int8[], $13::text[], $14::int8[]) WITH ORDINALITY AS j(queue, payload, priority, run_at, run_in, expected_at, expected_in, max_attempts, key, cursor, keep_for, timeout, unique_key, unique_scope, ord) WINDOW g AS (PARTITION BY j.queue, j.key, j.priority, COALESCE(j.expected_at, statement_timestamp() + j.expected_in * interval '1 microsecond')), w AS (g ORDER BY COALESCE(j.run_at, statement_timestamp() + j.run_in * interval '1 microsecond'), j.ord) ORDER BY j.ord RETURNING t.id, t.cursor, t.queue, t.key, t.unique_key, t.unique_scope), new_keys AS (INSERT INTO "public"."pq_jobs_keys" (queue, key) SELECT n.queue, n.key FROM (SELECT DISTINCT queue, key FROM ins WHERE key IS NOT NULL) AS n WHERE NOT EXISTS (SELECT 1 FROM "public"."pq_jobs_keys" AS k WHERE k.queue = n.queue AND k.key = n.key FOR KEY SHARE) ON CONFLICT DO NOTHING) SELECT id, cursor, CASE WHEN cursor OR unique_key IS NOT NULL THEN queue END AS queue, CASE WHEN cursor THEN key END AS key, unique_key FROM ins

-- insert, cursor keys
WITH ins AS (INSERT INTO "public"."pq_jobs" AS t (queue, payload, priority, run_at, expected_at, max_attempts, key, cursor, keep_for, timeout, unique_key, unique_scope, hidden, hides, part) SELECT j.queue, j.payload::jsonb, j.priority, COALESCE(j.run_at, statement_timestamp() + j.run_in * interval '1 microsecond'), COALESCE(j.expected_at, statement_timestamp() + j.expected_in * interval '1 microsecond'), j.max_attempts, j.key, j.cursor, j.keep_for, j.timeout, j.unique_key, j.unique_scope, false, false, CASE WHEN j.cursor THEN -1 ELSE (SELECT r.current FROM "public"."pq_jobs_rotation" AS r) END FROM unnest($1::text[], $2::text[], $3::int4[], $4::timestamptz[], $5::int8[], $6::timestamptz[], $7::int8[], $8::int4[], $9::text[], $10::bool[], $11::int8[], $12::int8[], $13::text[], $14::int8[]) WITH ORDINALITY AS j(queue, payload, priority, run_at, run_in, expected_at, expected_in, max_attempts, key, cursor, keep_for, timeout, unique_key, unique_scope, ord) ORDER BY j.ord ON CONFLICT (queue, key, part) WHERE cursor AND lease_token IS NULL DO UPDATE SET cursor = EXCLUDED.cursor RETURNING t.id, t.cursor, t.queue, t.key, t.unique_key, t.unique_scope), new_keys AS (INSERT INTO "public"."pq_jobs_keys" (queue, key) SELECT n.queue, n.key FROM (SELECT DISTINCT queue, key FROM ins WHERE key IS NOT NULL) AS n WHERE NOT EXISTS (SELECT 1 FROM "public"."pq_jobs_keys" AS k WHERE k.queue = n.queue AND k.key = n.key FOR KEY SHARE) ON CONFLICT DO NOTHING) SELECT id, cursor, CASE WHEN cursor OR unique_key IS NOT NULL THEN queue END AS queue, CASE WHEN cursor THEN key END AS key, unique_key FROM ins

-- insert, uniqueness keys
WITH held AS (SELECT * FROM "public"."pq_jobs_unique_holders"($1::text[], $13::text[])), ins AS (INSERT INTO "public"."pq_jobs" AS t (queue, payload, priority, run_at, expected_at, max_attempts, key, cursor, keep_for, timeout, unique_key, unique_scope, hidden, hides, part) SELECT j.queue, j.payload::jsonb, j.priority, COALESCE(j.run_at, statement_timestamp() + j.run_in * interval '1 microsecond'), COALESCE(j.expected_at, statement_timestamp() + j.expected_in * interval '1 microsecond'), j.max_attempts, j.key, j.cursor, j.keep_for, j.timeout, j.unique_key, j.unique_scope, false, false, CASE WHEN j.cursor THEN -1 ELSE (SELECT r.current FROM "public"."pq_jobs_rotation" AS r) END FROM unnest($1::text[], $2::text[], $3::int4[], $4::timestamptz[], $5::int8[], $6::timestamptz[], $7::int8[], $8::int4[], $9::text[], $10::bool[], $11::int8[], $12::int8[], $13::text[], $14::int8[]) WITH ORDINALITY AS j(queue, payload, priority, run_at, run_in, expected_at, expected_in, max_attempts, key, cursor, keep_for, timeout, unique_key, unique_scope, ord) WHERE j.unique_key IS NULL OR NOT EXISTS (SELECT 1 FROM held AS h WHERE h.queue = j.queue AND h.key = j.unique_key AND h.holder IS NOT NULL) ORDER BY j.ord RETURNING t.id, t.cursor, t.queue, t.key, t.unique_key, t.unique_scope), new_keys AS (INSERT INTO "public"."pq_jobs_keys" (queue, key) SELECT n.queue, n.key FROM (SELECT DISTINCT queue, key FROM ins WHERE key IS NOT NULL) AS n WHERE NOT EXISTS (SELECT 1 FROM "public"."pq_jobs_keys" AS k WHERE k.queue = n.queue AND k.key = n.key FOR KEY SHARE) ON CONFLICT DO NOTHING) , periods AS (INSERT INTO "public"."pq_jobs_unique" AS u (queue, key, job_id, until) SELECT queue, unique_key, id, statement_timestamp() + unique_scope * interval '1 microsecond' FROM ins WHERE unique_scope > 0 ON CONFLICT (queue, key) DO UPDATE SET job_id = EXCLUDED.job_id, until = EXCLUDED.until) SELECT id, cursor, CASE WHEN cursor OR unique_key IS NOT NULL THEN queue END AS queue, CASE WHEN cursor THEN key END AS key, unique_key FROM ins UNION ALL SELECT h.holder, false, h.queue, NULL, h.key FROM held AS h WHERE h.holder IS NOT NULL

-- insert, cursor and uniqueness keys
WITH held AS (SELECT * FROM "public"."pq_jobs_unique_holders"($1::text[], $13::text[])), ins AS (INSERT INTO "public"."pq_jobs" AS t (queue, payload, priority, run_at, expected_at, max_attempts, key, cursor, keep_for, timeout, unique_key, unique_scope, hidden, hides, part) SELECT j.queue, j.payload::jsonb, j.priority, COALESCE(j.run_at, statement_timestamp() + j.run_in * interval '1 microsecond'), COALESCE(j.expected_at, statement_timestamp() + j.expected_in * interval '1 microsecond'), j.max_attempts, j.key, j.cursor, j.keep_for, j.timeout, j.unique_key, j.unique_scope, false, false, CASE WHEN j.cursor THEN -1 ELSE (SELECT r.current FROM "public"."pq_jobs_rotation" AS r) END FROM unnest($1::text[], $2::text[], $3::int4[], $4::timestamptz[], $5::int8[], $6::timestamptz[], $7::int8[], $8::int4[], $9::text[], $10::bool[], $11::int8[], $12::int8[], $13::text[], $14::int8[]) WITH ORDINALITY AS j(queue, payload, priority, run_at, run_in, expected_at, expected_in, max_attempts, key, cursor, keep_for, timeout, unique_key, unique_scope, ord) WHERE j.unique_key IS NULL OR NOT EXISTS (SELECT 1 FROM held AS h WHERE h.queue = j.queue AND h.key = j.unique_key AND h.holder IS NOT NULL) ORDER BY j.ord ON CONFLICT (queue, key, part) WHERE cursor AND lease_token IS NULL DO UPDATE SET cursor = EXCLUDED.cursor RETURNING t.id, t.cursor, t.queue, t.key, t.unique_key, t.unique_scope), new_keys AS (INSERT INTO "public"."pq_jobs_keys" (queue, key) SELECT n.queue, n.key FROM (SELECT DISTINCT queue, key FROM ins WHERE key IS NOT NULL) AS n WHERE NOT EXISTS (SELECT 1 FROM "public"."pq_jobs_keys" AS k WHERE k.queue = n.queue AND k.key = n.key FOR KEY SHARE) ON CONFLICT DO NOTHING) , periods AS (INSERT INTO "public"."pq_jobs_unique" AS u (queue, key, job_id, until) SELECT queue, unique_key, id, statement_timestamp() + unique_scope * interval '1 microsecond' FROM ins WHERE unique_scope > 0 ON CONFLICT (queue, key) DO UPDATE SET job_id = EXCLUDED.job_id, until = EXCLUDED.until) SELECT id, cursor, CASE WHEN cursor OR unique_key IS NOT NULL THEN queue END AS queue, CASE WHEN cursor THEN key END AS key, unique_key FROM ins UNION ALL SELECT h.holder, false, h.queue, NULL, h.key FROM held AS h WHERE h.holder IS NOT NULL

-- claim, 1 queue(s), limit 32
WITH lease AS (SELECT ('x' || substr(md5(gen_random_uuid()::text), 1, 16))::bit(64)::int8 AS token), q AS (SELECT v.name, s.concurrency, s.rate, s.rate_per FROM (VALUES (E'q'::text)) AS v(name) LEFT JOIN "public"."pq_jobs_queues" AS s ON s.queue = v.name WHERE s.paused IS NOT TRUE), free AS (SELECT f.queue, f.kind, f.slot, row_number() OVER (PARTITION BY f.queue, f.kind ORDER BY f.slot) AS n FROM (SELECT l.queue, l.kind, l.slot FROM q JOIN "public"."pq_jobs_slots" AS l ON l.queue = q.name WHERE (q.concurrency IS NOT NULL OR q.rate IS NOT NULL) AND (l.until IS NULL OR l.until <= statement_timestamp()) FOR UPDATE OF l SKIP LOCKED) AS f), room AS (SELECT q.name, LEAST(CASE WHEN q.concurrency IS NOT NULL THEN (SELECT count(*) FROM free WHERE free.queue = q.name AND free.kind = 'c') END, CASE WHEN q.rate IS NOT NULL THEN (SELECT count(*) FROM free WHERE free.queue = q.name AND free.kind = 'r') END) AS room FROM q WHERE q.concurrency IS NOT NULL OR q.rate IS NOT NULL), cand AS (SELECT c.id, c.queue, c.key, c.priority, c.expected_at, c.run_at, c.via, c.kctid FROM (SELECT c.* FROM q CROSS JOIN LATERAL (SELECT COALESCE(s.id, j.id) AS id, j.queue, j.key, j.priority, j.expected_at, j.run_at, s.id IS NOT NULL AS via, h.kctid FROM "public"."pq_jobs" AS j LEFT JOIN LATERAL (SELECT n.id FROM (SELECT j.id, j.queue, j.key, j.priority, j.expected_at) AS c CROSS JOIN LATERAL ((SELECT n.id FROM "public"."pq_jobs" AS n WHERE c.expected_at IS NULL AND n.queue = c.queue AND n.key = c.key AND n.priority = c.priority AND n.expected_at IS NULL AND n.state = 'queued' AND NOT n.cursor AND n.unique_key IS NULL AND n.id <> c.id ORDER BY n.priority DESC, n.expected_at ASC NULLS LAST, n.run_at ASC, n.id ASC LIMIT 1) UNION ALL (SELECT n.id FROM "public"."pq_jobs" AS n WHERE n.queue = c.queue AND n.key = c.key AND n.priority = c.priority AND n.expected_at = c.expected_at AND n.state = 'queued' AND NOT n.cursor AND n.unique_key IS NULL AND n.id <> c.id ORDER BY n.priority DESC, n.expected_at ASC NULLS LAST, n.run_at ASC, n.id ASC LIMIT 1)) AS n WHERE j.state = 'running' AND j.hides AND EXISTS (SELECT 1 FROM "public"."pq_jobs" AS h WHERE h.id = n.id AND h.hidden) LIMIT 1) AS s ON true LEFT JOIN LATERAL (SELECT k.ctid AS kctid FROM "public"."pq_jobs_keys" AS k WHERE j.key IS NOT NULL AND k.queue = j.queue AND k.key = j.key AND (k.running_id IS NULL OR k.running_id = j.id OR k.running_until <= statement_timestamp()) FOR NO KEY UPDATE SKIP LOCKED) AS h ON true WHERE j.queue = q.name AND j.state <> 'failed' AND NOT j.hidden AND j.run_at <= statement_timestamp() AND (j.attempts < j.max_attempts OR s.id IS NOT NULL) AND (j.key IS NULL OR (h.kctid IS NOT NULL AND (SELECT o.id = COALESCE(s.id, j.id) FROM "public"."pq_jobs" AS o WHERE o.queue = j.queue AND o.key = j.key AND o.state <> 'failed' AND o.run_at <= statement_timestamp() AND o.attempts < o.max_attempts ORDER BY o.priority DESC, o.expected_at ASC NULLS LAST, o.run_at ASC, o.id ASC LIMIT 1))) ORDER BY j.priority DESC, j.expected_at ASC NULLS LAST, j.run_at ASC, j.id ASC LIMIT 32 FOR UPDATE OF j SKIP LOCKED) AS c WHERE q.concurrency IS NULL AND q.rate IS NULL UNION ALL SELECT c.id, c.queue, c.key, c.priority, c.expected_at, c.run_at, c.via, c.kctid FROM (SELECT c.*, r.room, row_number() OVER (PARTITION BY c.queue ORDER BY c.priority DESC, c.expected_at ASC NULLS LAST, c.run_at ASC, c.id ASC) AS n FROM room AS r CROSS JOIN LATERAL (SELECT r.name) AS q(name) CROSS JOIN LATERAL (SELECT COALESCE(s.id, j.id) AS id, j.queue, j.key, j.priority, j.expected_at, j.run_at, s.id IS NOT NULL AS via, h.kctid FROM "public"."pq_jobs" AS j LEFT JOIN LATERAL (SELECT n.id FROM (SELECT j.id, j.queue, j.key, j.priority, j.expected_at) AS c CROSS JOIN LATERAL ((SELECT n.id FROM "public"."pq_jobs" AS n WHERE c.expected_at IS NULL AND n.queue = c.queue AND n.key = c.key AND n.priority = c.priority AND n.expected_at IS NULL AND n.state = 'queued' AND NOT n.cursor AND n.unique_key IS NULL AND n.id <> c.id ORDER BY n.priority DESC, n.expected_at ASC NULLS LAST, n.run_at ASC, n.id ASC LIMIT 1) UNION ALL (SELECT n.id FROM "public"."pq_jobs" AS n WHERE n.queue = c.queue AND n.key = c.key AND n.priority = c.priority AND n.expected_at = c.expected_at AND n.state = 'queued' AND NOT n.cursor AND n.unique_key IS NULL AND n.id <> c.id ORDER BY n.priority DESC, n.expected_at ASC NULLS LAST, n.run_at ASC, n.id ASC LIMIT 1)) AS n WHERE j.state = 'running' AND j.hides AND EXISTS (SELECT 1 FROM "public"."pq_jobs" AS h WHERE h.id = n.id AND h.hidden) LIMIT 1) AS s ON true LEFT JOIN LATERAL (SELECT k.ctid AS kctid FROM "public"."pq_jobs_keys" AS k WHERE j.key IS NOT NULL AND k.queue = j.queue AND k.key = j.key AND (k.running_id IS NULL OR k.running_id = j.id OR k.running_until <= statement_timestamp()) FOR NO KEY UPDATE SKIP LOCKED) AS h ON true WHERE j.queue = q.name AND j.state <> 'failed' AND NOT j.hidden AND j.run_at <= statement_timestamp() AND (j.attempts < j.max_attempts OR s.id IS NOT NULL) AND (j.key IS NULL OR (h.kctid IS NOT NULL AND (SELECT o.id = COALESCE(s.id, j.id) FROM "public"."pq_jobs" AS o WHERE o.queue = j.queue AND o.key = j.key AND o.state <> 'failed' AND o.run_at <= statement_timestamp() AND o.attempts < o.max_attempts ORDER BY o.priority DESC, o.expected_at ASC NULLS LAST, o.run_at ASC, o.id ASC LIMIT 1))) ORDER BY j.priority DESC, j.expected_at ASC NULLS LAST, j.run_at ASC, j.id ASC LIMIT 32 FOR UPDATE OF j SKIP LOCKED) AS c) AS c WHERE c.n <= c.room) AS c ORDER BY c.priority DESC, c.expected_at ASC NULLS LAST, c.run_at ASC, c.id ASC LIMIT 32), claimed AS (UPDATE "public"."pq_jobs" AS t SET state = 'running', attempts = t.attempts + 1, lease_token = (SELECT token FROM lease), run_at = statement_timestamp() + 30000000 * interval '1 microsecond', hidden = false, hides = t.hides OR picked.via FROM cand AS picked WHERE t.id = picked.id AND (NOT picked.via OR (t.state = 'queued' AND t.hidden)) RETURNING t.*, picked.run_at AS prev_run_at, picked.kctid), taken AS (UPDATE "public"."pq_jobs_keys" AS k SET running_id = c.id, running_until = c.run_at FROM claimed AS c WHERE k.ctid = c.kctid RETURNING k.queue AS k_queue, k.key AS k_key, k.state AS k_state), placed AS (SELECT p.id, p.queue, row_number() OVER (PARTITION BY p.queue ORDER BY p.id) AS n FROM cand AS p JOIN room AS r ON r.name = p.queue), seated AS (UPDATE "public"."pq_jobs_slots" AS l SET job_id = c.id, token = (SELECT token FROM lease), until = CASE WHEN l.kind = 'c' THEN c.run_at ELSE statement_timestamp() + q.rate_per * interval '1 microsecond' END FROM claimed AS c JOIN placed AS p ON p.id = c.id JOIN q ON q.name = p.queue JOIN free AS f ON f.queue = p.queue AND f.n = p.n WHERE l.queue = f.queue AND l.kind = f.kind AND l.slot = f.slot) SELECT id, queue, payload::text AS payload, priority, expected_at, run_at, 'running' AS state, attempts, max_attempts, last_error, created_at, lease_token, key, cursor, keep_for, timeout, unique_key, unique_scope, progress::text AS progress, CASE WHEN key IS NOT NULL THEN COALESCE(k_state::text, 'null') END AS key_state FROM claimed LEFT JOIN taken ON k_queue = queue AND k_key = key WHERE (SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL ORDER BY priority DESC, expected_at ASC NULLS LAST, prev_run_at ASC, id ASC

-- claim in a transaction, 1 queue(s), limit 32
WITH lease AS (SELECT ('x' || substr(md5(gen_random_uuid()::text), 1, 16))::bit(64)::int8 AS token), q AS (SELECT v.name, s.concurrency, s.rate, s.rate_per FROM (VALUES (E'q'::text)) AS v(name) LEFT JOIN "public"."pq_jobs_queues" AS s ON s.queue = v.name WHERE s.paused IS NOT TRUE), free AS (SELECT f.queue, f.kind, f.slot, row_number() OVER (PARTITION BY f.queue, f.kind ORDER BY f.slot) AS n FROM (SELECT l.queue, l.kind, l.slot FROM q JOIN "public"."pq_jobs_slots" AS l ON l.queue = q.name WHERE (q.concurrency IS NOT NULL OR q.rate IS NOT NULL) AND (l.until IS NULL OR l.until <= statement_timestamp()) FOR UPDATE OF l SKIP LOCKED) AS f), room AS (SELECT q.name, LEAST(CASE WHEN q.concurrency IS NOT NULL THEN (SELECT count(*) FROM free WHERE free.queue = q.name AND free.kind = 'c') END, CASE WHEN q.rate IS NOT NULL THEN (SELECT count(*) FROM free WHERE free.queue = q.name AND free.kind = 'r') END) AS room FROM q WHERE q.concurrency IS NOT NULL OR q.rate IS NOT NULL), cand AS (SELECT c.id, c.queue, c.key, c.priority, c.expected_at, c.run_at, c.via, c.kctid FROM (SELECT c.* FROM q CROSS JOIN LATERAL (SELECT COALESCE(s.id, j.id) AS id, j.queue, j.key, j.priority, j.expected_at, j.run_at, s.id IS NOT NULL AS via, h.kctid FROM "public"."pq_jobs" AS j LEFT JOIN LATERAL (SELECT n.id FROM (SELECT j.id, j.queue, j.key, j.priority, j.expected_at) AS c CROSS JOIN LATERAL ((SELECT n.id FROM "public"."pq_jobs" AS n WHERE c.expected_at IS NULL AND n.queue = c.queue AND n.key = c.key AND n.priority = c.priority AND n.expected_at IS NULL AND n.state = 'queued' AND NOT n.cursor AND n.unique_key IS NULL AND n.id <> c.id ORDER BY n.priority DESC, n.expected_at ASC NULLS LAST, n.run_at ASC, n.id ASC LIMIT 1) UNION ALL (SELECT n.id FROM "public"."pq_jobs" AS n WHERE n.queue = c.queue AND n.key = c.key AND n.priority = c.priority AND n.expected_at = c.expected_at AND n.state = 'queued' AND NOT n.cursor AND n.unique_key IS NULL AND n.id <> c.id ORDER BY n.priority DESC, n.expected_at ASC NULLS LAST, n.run_at ASC, n.id ASC LIMIT 1)) AS n WHERE j.state = 'running' AND j.hides AND EXISTS (SELECT 1 FROM "public"."pq_jobs" AS h WHERE h.id = n.id AND h.hidden) LIMIT 1) AS s ON true LEFT JOIN LATERAL (SELECT k.ctid AS kctid FROM "public"."pq_jobs_keys" AS k WHERE j.key IS NOT NULL AND k.queue = j.queue AND k.key = j.key AND (k.running_id IS NULL OR k.running_id = j.id OR k.running_until <= statement_timestamp()) FOR NO KEY UPDATE SKIP LOCKED) AS h ON true WHERE j.queue = q.name AND j.state <> 'failed' AND NOT j.hidden AND j.run_at <= statement_timestamp() AND (j.attempts < j.max_attempts OR s.id IS NOT NULL) AND (j.key IS NULL OR (h.kctid IS NOT NULL AND (SELECT o.id = COALESCE(s.id, j.id) FROM "public"."pq_jobs" AS o WHERE o.queue = j.queue AND o.key = j.key AND o.state <> 'failed' AND o.run_at <= statement_timestamp() AND o.attempts < o.max_attempts ORDER BY o.priority DESC, o.expected_at ASC NULLS LAST, o.run_at ASC, o.id ASC LIMIT 1))) ORDER BY j.priority DESC, j.expected_at ASC NULLS LAST, j.run_at ASC, j.id ASC LIMIT 32 FOR UPDATE OF j SKIP LOCKED) AS c WHERE q.concurrency IS NULL AND q.rate IS NULL UNION ALL SELECT c.id, c.queue, c.key, c.priority, c.expected_at, c.run_at, c.via, c.kctid FROM (SELECT c.*, r.room, row_number() OVER (PARTITION BY c.queue ORDER BY c.priority DESC, c.expected_at ASC NULLS LAST, c.run_at ASC, c.id ASC) AS n FROM room AS r CROSS JOIN LATERAL (SELECT r.name) AS q(name) CROSS JOIN LATERAL (SELECT COALESCE(s.id, j.id) AS id, j.queue, j.key, j.priority, j.expected_at, j.run_at, s.id IS NOT NULL AS via, h.kctid FROM "public"."pq_jobs" AS j LEFT JOIN LATERAL (SELECT n.id FROM (SELECT j.id, j.queue, j.key, j.priority, j.expected_at) AS c CROSS JOIN LATERAL ((SELECT n.id FROM "public"."pq_jobs" AS n WHERE c.expected_at IS NULL AND n.queue = c.queue AND n.key = c.key AND n.priority = c.priority AND n.expected_at IS NULL AND n.state = 'queued' AND NOT n.cursor AND n.unique_key IS NULL AND n.id <> c.id ORDER BY n.priority DESC, n.expected_at ASC NULLS LAST, n.run_at ASC, n.id ASC LIMIT 1) UNION ALL (SELECT n.id FROM "public"."pq_jobs" AS n WHERE n.queue = c.queue AND n.key = c.key AND n.priority = c.priority AND n.expected_at = c.expected_at AND n.state = 'queued' AND NOT n.cursor AND n.unique_key IS NULL AND n.id <> c.id ORDER BY n.priority DESC, n.expected_at ASC NULLS LAST, n.run_at ASC, n.id ASC LIMIT 1)) AS n WHERE j.state = 'running' AND j.hides AND EXISTS (SELECT 1 FROM "public"."pq_jobs" AS h WHERE h.id = n.id AND h.hidden) LIMIT 1) AS s ON true LEFT JOIN LATERAL (SELECT k.ctid AS kctid FROM "public"."pq_jobs_keys" AS k WHERE j.key IS NOT NULL AND k.queue = j.queue AND k.key = j.key AND (k.running_id IS NULL OR k.running_id = j.id OR k.running_until <= statement_timestamp()) FOR NO KEY UPDATE SKIP LOCKED) AS h ON true WHERE j.queue = q.name AND j.state <> 'failed' AND NOT j.hidden AND j.run_at <= statement_timestamp() AND (j.attempts < j.max_attempts OR s.id IS NOT NULL) AND (j.key IS NULL OR (h.kctid IS NOT NULL AND (SELECT o.id = COALESCE(s.id, j.id) FROM "public"."pq_jobs" AS o WHERE o.queue = j.queue AND o.key = j.key AND o.state <> 'failed' AND o.run_at <= statement_timestamp() AND o.attempts < o.max_attempts ORDER BY o.priority DESC, o.expected_at ASC NULLS LAST, o.run_at ASC, o.id ASC LIMIT 1))) ORDER BY j.priority DESC, j.expected_at ASC NULLS LAST, j.run_at ASC, j.id ASC LIMIT 32 FOR UPDATE OF j SKIP LOCKED) AS c) AS c WHERE c.n <= c.room) AS c ORDER BY c.priority DESC, c.expected_at ASC NULLS LAST, c.run_at ASC, c.id ASC LIMIT 32), claimed AS (UPDATE "public"."pq_jobs" AS t SET state = 'running', attempts = t.attempts + 1, lease_token = (SELECT token FROM lease), run_at = statement_timestamp() + 30000000 * interval '1 microsecond', hidden = false, hides = t.hides OR picked.via FROM cand AS picked WHERE t.id = picked.id AND (NOT picked.via OR (t.state = 'queued' AND t.hidden)) RETURNING t.*, picked.run_at AS prev_run_at, picked.kctid), taken AS (UPDATE "public"."pq_jobs_keys" AS k SET running_id = c.id, running_until = c.run_at FROM claimed AS c WHERE k.ctid = c.kctid RETURNING k.queue AS k_queue, k.key AS k_key, k.state AS k_state), placed AS (SELECT p.id, p.queue, row_number() OVER (PARTITION BY p.queue ORDER BY p.id) AS n FROM cand AS p JOIN room AS r ON r.name = p.queue), seated AS (UPDATE "public"."pq_jobs_slots" AS l SET job_id = c.id, token = (SELECT token FROM lease), until = CASE WHEN l.kind = 'c' THEN c.run_at ELSE statement_timestamp() + q.rate_per * interval '1 microsecond' END FROM claimed AS c JOIN placed AS p ON p.id = c.id JOIN q ON q.name = p.queue JOIN free AS f ON f.queue = p.queue AND f.n = p.n WHERE l.queue = f.queue AND l.kind = f.kind AND l.slot = f.slot) SELECT id, queue, payload::text AS payload, priority, expected_at, run_at, 'running' AS state, attempts, max_attempts, last_error, created_at, lease_token, key, cursor, keep_for, timeout, unique_key, unique_scope, progress::text AS progress, CASE WHEN key IS NOT NULL THEN COALESCE(k_state::text, 'null') END AS key_state FROM claimed LEFT JOIN taken ON k_queue = queue AND k_key = key ORDER BY priority DESC, expected_at ASC NULLS LAST, prev_run_at ASC, id ASC

-- claim, 2 queue(s), limit 32
WITH lease AS (SELECT ('x' || substr(md5(gen_random_uuid()::text), 1, 16))::bit(64)::int8 AS token), q AS (SELECT v.name, s.concurrency, s.rate, s.rate_per FROM (VALUES (E'q'::text), (E'it''s'::text)) AS v(name) LEFT JOIN "public"."pq_jobs_queues" AS s ON s.queue = v.name WHERE s.paused IS NOT TRUE), free AS (SELECT f.queue, f.kind, f.slot, row_number() OVER (PARTITION BY f.queue, f.kind ORDER BY f.slot) AS n FROM (SELECT l.queue, l.kind, l.slot FROM q JOIN "public"."pq_jobs_slots" AS l ON l.queue = q.name WHERE (q.concurrency IS NOT NULL OR q.rate IS NOT NULL) AND (l.until IS NULL OR l.until <= statement_timestamp()) FOR UPDATE OF l SKIP LOCKED) AS f), room AS (SELECT q.name, LEAST(CASE WHEN q.concurrency IS NOT NULL THEN (SELECT count(*) FROM free WHERE free.queue = q.name AND free.kind = 'c') END, CASE WHEN q.rate IS NOT NULL THEN (SELECT count(*) FROM free WHERE free.queue = q.name AND free.kind = 'r') END) AS room FROM q WHERE q.concurrency IS NOT NULL OR q.rate IS NOT NULL), cand AS (SELECT c.id, c.queue, c.key, c.priority, c.expected_at, c.run_at, c.via, c.kctid FROM (SELECT c.* FROM q CROSS JOIN LATERAL (SELECT COALESCE(s.id, j.id) AS id, j.queue, j.key, j.priority, j.expected_at, j.run_at, s.id IS NOT NULL AS via, h.kctid FROM "public"."pq_jobs" AS j LEFT JOIN LATERAL (SELECT n.id FROM (SELECT j.id, j.queue, j.key, j.priority, j.expected_at) AS c CROSS JOIN LATERAL ((SELECT n.id FROM "public"."pq_jobs" AS n WHERE c.expected_at IS NULL AND n.queue = c.queue AND n.key = c.key AND n.priority = c.priority AND n.expected_at IS NULL AND n.state = 'queued' AND NOT n.cursor AND n.unique_key IS NULL AND n.id <> c.id ORDER BY n.priority DESC, n.expected_at ASC NULLS LAST, n.run_at ASC, n.id ASC LIMIT 1) UNION ALL (SELECT n.id FROM "public"."pq_jobs" AS n WHERE n.queue = c.queue AND n.key = c.key AND n.priority = c.priority AND n.expected_at = c.expected_at AND n.state = 'queued' AND NOT n.cursor AND n.unique_key IS NULL AND n.id <> c.id ORDER BY n.priority DESC, n.expected_at ASC NULLS LAST, n.run_at ASC, n.id ASC LIMIT 1)) AS n WHERE j.state = 'running' AND j.hides AND EXISTS (SELECT 1 FROM "public"."pq_jobs" AS h WHERE h.id = n.id AND h.hidden) LIMIT 1) AS s ON true LEFT JOIN LATERAL (SELECT k.ctid AS kctid FROM "public"."pq_jobs_keys" AS k WHERE j.key IS NOT NULL AND k.queue = j.queue AND k.key = j.key AND (k.running_id IS NULL OR k.running_id = j.id OR k.running_until <= statement_timestamp()) FOR NO KEY UPDATE SKIP LOCKED) AS h ON true WHERE j.queue = q.name AND j.state <> 'failed' AND NOT j.hidden AND j.run_at <= statement_timestamp() AND (j.attempts < j.max_attempts OR s.id IS NOT NULL) AND (j.key IS NULL OR (h.kctid IS NOT NULL AND (SELECT o.id = COALESCE(s.id, j.id) FROM "public"."pq_jobs" AS o WHERE o.queue = j.queue AND o.key = j.key AND o.state <> 'failed' AND o.run_at <= statement_timestamp() AND o.attempts < o.max_attempts ORDER BY o.priority DESC, o.expected_at ASC NULLS LAST, o.run_at ASC, o.id ASC LIMIT 1))) ORDER BY j.priority DESC, j.expected_at ASC NULLS LAST, j.run_at ASC, j.id ASC LIMIT 32 FOR UPDATE OF j SKIP LOCKED) AS c WHERE q.concurrency IS NULL AND q.rate IS NULL UNION ALL SELECT c.id, c.queue, c.key, c.priority, c.expected_at, c.run_at, c.via, c.kctid FROM (SELECT c.*, r.room, row_number() OVER (PARTITION BY c.queue ORDER BY c.priority DESC, c.expected_at ASC NULLS LAST, c.run_at ASC, c.id ASC) AS n FROM room AS r CROSS JOIN LATERAL (SELECT r.name) AS q(name) CROSS JOIN LATERAL (SELECT COALESCE(s.id, j.id) AS id, j.queue, j.key, j.priority, j.expected_at, j.run_at, s.id IS NOT NULL AS via, h.kctid FROM "public"."pq_jobs" AS j LEFT JOIN LATERAL (SELECT n.id FROM (SELECT j.id, j.queue, j.key, j.priority, j.expected_at) AS c CROSS JOIN LATERAL ((SELECT n.id FROM "public"."pq_jobs" AS n WHERE c.expected_at IS NULL AND n.queue = c.queue AND n.key = c.key AND n.priority = c.priority AND n.expected_at IS NULL AND n.state = 'queued' AND NOT n.cursor AND n.unique_key IS NULL AND n.id <> c.id ORDER BY n.priority DESC, n.expected_at ASC NULLS LAST, n.run_at ASC, n.id ASC LIMIT 1) UNION ALL (SELECT n.id FROM "public"."pq_jobs" AS n WHERE n.queue = c.queue AND n.key = c.key AND n.priority = c.priority AND n.expected_at = c.expected_at AND n.state = 'queued' AND NOT n.cursor AND n.unique_key IS NULL AND n.id <> c.id ORDER BY n.priority DESC, n.expected_at ASC NULLS LAST, n.run_at ASC, n.id ASC LIMIT 1)) AS n WHERE j.state = 'running' AND j.hides AND EXISTS (SELECT 1 FROM "public"."pq_jobs" AS h WHERE h.id = n.id AND h.hidden) LIMIT 1) AS s ON true LEFT JOIN LATERAL (SELECT k.ctid AS kctid FROM "public"."pq_jobs_keys" AS k WHERE j.key IS NOT NULL AND k.queue = j.queue AND k.key = j.key AND (k.running_id IS NULL OR k.running_id = j.id OR k.running_until <= statement_timestamp()) FOR NO KEY UPDATE SKIP LOCKED) AS h ON true WHERE j.queue = q.name AND j.state <> 'failed' AND NOT j.hidden AND j.run_at <= statement_timestamp() AND (j.attempts < j.max_attempts OR s.id IS NOT NULL) AND (j.key IS NULL OR (h.kctid IS NOT NULL AND (SELECT o.id = COALESCE(s.id, j.id) FROM "public"."pq_jobs" AS o WHERE o.queue = j.queue AND o.key = j.key AND o.state <> 'failed' AND o.run_at <= statement_timestamp() AND o.attempts < o.max_attempts ORDER BY o.priority DESC, o.expected_at ASC NULLS LAST, o.run_at ASC, o.id ASC LIMIT 1))) ORDER BY j.priority DESC, j.expected_at ASC NULLS LAST, j.run_at ASC, j.id ASC LIMIT 32 FOR UPDATE OF j SKIP LOCKED) AS c) AS c WHERE c.n <= c.room) AS c ORDER BY c.priority DESC, c.expected_at ASC NULLS LAST, c.run_at ASC, c.id ASC LIMIT 32), claimed AS (UPDATE "public"."pq_jobs" AS t SET state = 'running', attempts = t.attempts + 1, lease_token = (SELECT token FROM lease), run_at = statement_timestamp() + 30000000 * interval '1 microsecond', hidden = false, hides = t.hides OR picked.via FROM cand AS picked WHERE t.id = picked.id AND (NOT picked.via OR (t.state = 'queued' AND t.hidden)) RETURNING t.*, picked.run_at AS prev_run_at, picked.kctid), taken AS (UPDATE "public"."pq_jobs_keys" AS k SET running_id = c.id, running_until = c.run_at FROM claimed AS c WHERE k.ctid = c.kctid RETURNING k.queue AS k_queue, k.key AS k_key, k.state AS k_state), placed AS (SELECT p.id, p.queue, row_number() OVER (PARTITION BY p.queue ORDER BY p.id) AS n FROM cand AS p JOIN room AS r ON r.name = p.queue), seated AS (UPDATE "public"."pq_jobs_slots" AS l SET job_id = c.id, token = (SELECT token FROM lease), until = CASE WHEN l.kind = 'c' THEN c.run_at ELSE statement_timestamp() + q.rate_per * interval '1 microsecond' END FROM claimed AS c JOIN placed AS p ON p.id = c.id JOIN q ON q.name = p.queue JOIN free AS f ON f.queue = p.queue AND f.n = p.n WHERE l.queue = f.queue AND l.kind = f.kind AND l.slot = f.slot) SELECT id, queue, payload::text AS payload, priority, expected_at, run_at, 'running' AS state, attempts, max_attempts, last_error, created_at, lease_token, key, cursor, keep_for, timeout, unique_key, unique_scope, progress::text AS progress, CASE WHEN key IS NOT NULL THEN COALESCE(k_state::text, 'null') END AS key_state FROM claimed LEFT JOIN taken ON k_queue = queue AND k_key = key WHERE (SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL ORDER BY priority DESC, expected_at ASC NULLS LAST, prev_run_at ASC, id ASC

-- claim in a transaction, 2 queue(s), limit 32
WITH lease AS (SELECT ('x' || substr(md5(gen_random_uuid()::text), 1, 16))::bit(64)::int8 AS token), q AS (SELECT v.name, s.concurrency, s.rate, s.rate_per FROM (VALUES (E'q'::text), (E'it''s'::text)) AS v(name) LEFT JOIN "public"."pq_jobs_queues" AS s ON s.queue = v.name WHERE s.paused IS NOT TRUE), free AS (SELECT f.queue, f.kind, f.slot, row_number() OVER (PARTITION BY f.queue, f.kind ORDER BY f.slot) AS n FROM (SELECT l.queue, l.kind, l.slot FROM q JOIN "public"."pq_jobs_slots" AS l ON l.queue = q.name WHERE (q.concurrency IS NOT NULL OR q.rate IS NOT NULL) AND (l.until IS NULL OR l.until <= statement_timestamp()) FOR UPDATE OF l SKIP LOCKED) AS f), room AS (SELECT q.name, LEAST(CASE WHEN q.concurrency IS NOT NULL THEN (SELECT count(*) FROM free WHERE free.queue = q.name AND free.kind = 'c') END, CASE WHEN q.rate IS NOT NULL THEN (SELECT count(*) FROM free WHERE free.queue = q.name AND free.kind = 'r') END) AS room FROM q WHERE q.concurrency IS NOT NULL OR q.rate IS NOT NULL), cand AS (SELECT c.id, c.queue, c.key, c.priority, c.expected_at, c.run_at, c.via, c.kctid FROM (SELECT c.* FROM q CROSS JOIN LATERAL (SELECT COALESCE(s.id, j.id) AS id, j.queue, j.key, j.priority, j.expected_at, j.run_at, s.id IS NOT NULL AS via, h.kctid FROM "public"."pq_jobs" AS j LEFT JOIN LATERAL (SELECT n.id FROM (SELECT j.id, j.queue, j.key, j.priority, j.expected_at) AS c CROSS JOIN LATERAL ((SELECT n.id FROM "public"."pq_jobs" AS n WHERE c.expected_at IS NULL AND n.queue = c.queue AND n.key = c.key AND n.priority = c.priority AND n.expected_at IS NULL AND n.state = 'queued' AND NOT n.cursor AND n.unique_key IS NULL AND n.id <> c.id ORDER BY n.priority DESC, n.expected_at ASC NULLS LAST, n.run_at ASC, n.id ASC LIMIT 1) UNION ALL (SELECT n.id FROM "public"."pq_jobs" AS n WHERE n.queue = c.queue AND n.key = c.key AND n.priority = c.priority AND n.expected_at = c.expected_at AND n.state = 'queued' AND NOT n.cursor AND n.unique_key IS NULL AND n.id <> c.id ORDER BY n.priority DESC, n.expected_at ASC NULLS LAST, n.run_at ASC, n.id ASC LIMIT 1)) AS n WHERE j.state = 'running' AND j.hides AND EXISTS (SELECT 1 FROM "public"."pq_jobs" AS h WHERE h.id = n.id AND h.hidden) LIMIT 1) AS s ON true LEFT JOIN LATERAL (SELECT k.ctid AS kctid FROM "public"."pq_jobs_keys" AS k WHERE j.key IS NOT NULL AND k.queue = j.queue AND k.key = j.key AND (k.running_id IS NULL OR k.running_id = j.id OR k.running_until <= statement_timestamp()) FOR NO KEY UPDATE SKIP LOCKED) AS h ON true WHERE j.queue = q.name AND j.state <> 'failed' AND NOT j.hidden AND j.run_at <= statement_timestamp() AND (j.attempts < j.max_attempts OR s.id IS NOT NULL) AND (j.key IS NULL OR (h.kctid IS NOT NULL AND (SELECT o.id = COALESCE(s.id, j.id) FROM "public"."pq_jobs" AS o WHERE o.queue = j.queue AND o.key = j.key AND o.state <> 'failed' AND o.run_at <= statement_timestamp() AND o.attempts < o.max_attempts ORDER BY o.priority DESC, o.expected_at ASC NULLS LAST, o.run_at ASC, o.id ASC LIMIT 1))) ORDER BY j.priority DESC, j.expected_at ASC NULLS LAST, j.run_at ASC, j.id ASC LIMIT 32 FOR UPDATE OF j SKIP LOCKED) AS c WHERE q.concurrency IS NULL AND q.rate IS NULL UNION ALL SELECT c.id, c.queue, c.key, c.priority, c.expected_at, c.run_at, c.via, c.kctid FROM (SELECT c.*, r.room, row_number() OVER (PARTITION BY c.queue ORDER BY c.priority DESC, c.expected_at ASC NULLS LAST, c.run_at ASC, c.id ASC) AS n FROM room AS r CROSS JOIN LATERAL (SELECT r.name) AS q(name) CROSS JOIN LATERAL (SELECT COALESCE(s.id, j.id) AS id, j.queue, j.key, j.priority, j.expected_at, j.run_at, s.id IS NOT NULL AS via, h.kctid FROM "public"."pq_jobs" AS j LEFT JOIN LATERAL (SELECT n.id FROM (SELECT j.id, j.queue, j.key, j.priority, j.expected_at) AS c CROSS JOIN LATERAL ((SELECT n.id FROM "public"."pq_jobs" AS n WHERE c.expected_at IS NULL AND n.queue = c.queue AND n.key = c.key AND n.priority = c.priority AND n.expected_at IS NULL AND n.state = 'queued' AND NOT n.cursor AND n.unique_key IS NULL AND n.id <> c.id ORDER BY n.priority DESC, n.expected_at ASC NULLS LAST, n.run_at ASC, n.id ASC LIMIT 1) UNION ALL (SELECT n.id FROM "public"."pq_jobs" AS n WHERE n.queue = c.queue AND n.key = c.key AND n.priority = c.priority AND n.expected_at = c.expected_at AND n.state = 'queued' AND NOT n.cursor AND n.unique_key IS NULL AND n.id <> c.id ORDER BY n.priority DESC, n.expected_at ASC NULLS LAST, n.run_at ASC, n.id ASC LIMIT 1)) AS n WHERE j.state = 'running' AND j.hides AND EXISTS (SELECT 1 FROM "public"."pq_jobs" AS h WHERE h.id = n.id AND h.hidden) LIMIT 1) AS s ON true LEFT JOIN LATERAL (SELECT k.ctid AS kctid FROM "public"."pq_jobs_keys" AS k WHERE j.key IS NOT NULL AND k.queue = j.queue AND k.key = j.key AND (k.running_id IS NULL OR k.running_id = j.id OR k.running_until <= statement_timestamp()) FOR NO KEY UPDATE SKIP LOCKED) AS h ON true WHERE j.queue = q.name AND j.state <> 'failed' AND NOT j.hidden AND j.run_at <= statement_timestamp() AND (j.attempts < j.max_attempts OR s.id IS NOT NULL) AND (j.key IS NULL OR (h.kctid IS NOT NULL AND (SELECT o.id = COALESCE(s.id, j.id) FROM "public"."pq_jobs" AS o WHERE o.queue = j.queue AND o.key = j.key AND o.state <> 'failed' AND o.run_at <= statement_timestamp() AND o.attempts < o.max_attempts ORDER BY o.priority DESC, o.expected_at ASC NULLS LAST, o.run_at ASC, o.id ASC LIMIT 1))) ORDER BY j.priority DESC, j.expected_at ASC NULLS LAST, j.run_at ASC, j.id ASC LIMIT 32 FOR UPDATE OF j SKIP LOCKED) AS c) AS c WHERE c.n <= c.room) AS c ORDER BY c.priority DESC, c.expected_at ASC NULLS LAST, c.run_at ASC, c.id ASC LIMIT 32), claimed AS (UPDATE "public"."pq_jobs" AS t SET state = 'running', attempts = t.attempts + 1, lease_token = (SELECT token FROM lease), run_at = statement_timestamp() + 30000000 * interval '1 microsecond', hidden = false, hides = t.hides OR picked.via FROM cand AS picked WHERE t.id = picked.id AND (NOT picked.via OR (t.state = 'queued' AND t.hidden)) RETURNING t.*, picked.run_at AS prev_run_at, picked.kctid), taken AS (UPDATE "public"."pq_jobs_keys" AS k SET running_id = c.id, running_until = c.run_at FROM claimed AS c WHERE k.ctid = c.kctid RETURNING k.queue AS k_queue, k.key AS k_key, k.state AS k_state), placed AS (SELECT p.id, p.queue, row_number() OVER (PARTITION BY p.queue ORDER BY p.id) AS n FROM cand AS p JOIN room AS r ON r.name = p.queue), seated AS (UPDATE "public"."pq_jobs_slots" AS l SET job_id = c.id, token = (SELECT token FROM lease), until = CASE WHEN l.kind = 'c' THEN c.run_at ELSE statement_timestamp() + q.rate_per * interval '1 microsecond' END FROM claimed AS c JOIN placed AS p ON p.id = c.id JOIN q ON q.name = p.queue JOIN free AS f ON f.queue = p.queue AND f.n = p.n WHERE l.queue = f.queue AND l.kind = f.kind AND l.slot = f.slot) SELECT id, queue, payload::text AS payload, priority, expected_at, run_at, 'running' AS state, attempts, max_attempts, last_error, created_at, lease_token, key, cursor, keep_for, timeout, unique_key, unique_scope, progress::text AS progress, CASE WHEN key IS NOT NULL THEN COALESCE(k_state::text, 'null') END AS key_state FROM claimed LEFT JOIN taken ON k_queue = queue AND k_key = key ORDER BY priority DESC, expected_at ASC NULLS LAST, prev_run_at ASC, id ASC

-- next run, 1 queue(s)
WITH RECURSIVE qs AS (SELECT DISTINCT v.name, s.concurrency, s.rate FROM (VALUES (($1::text[])[1])) AS v(name) LEFT JOIN "public"."pq_jobs_queues" AS s ON s.queue = v.name WHERE v.name IS NOT NULL AND s.paused IS NOT TRUE), ks AS (SELECT qs.name AS queue, f.key, f.priority FROM qs CROSS JOIN LATERAL (SELECT key, priority FROM "public"."pq_jobs" WHERE queue = qs.name AND key IS NOT NULL AND state <> 'failed' ORDER BY key, priority DESC LIMIT 1) AS f UNION ALL SELECT ks.queue, n.key, n.priority FROM ks CROSS JOIN LATERAL ((SELECT key, priority FROM "public"."pq_jobs" WHERE queue = ks.queue AND key = ks.key AND priority < ks.priority AND state <> 'failed' ORDER BY key, priority DESC LIMIT 1) UNION ALL (SELECT key, priority FROM "public"."pq_jobs" WHERE queue = ks.queue AND key > ks.key AND state <> 'failed' ORDER BY key, priority DESC LIMIT 1) LIMIT 1) AS n), due AS (SELECT qs.name AS queue, n.run_at AS at FROM qs CROSS JOIN LATERAL (SELECT run_at FROM "public"."pq_jobs" WHERE queue = qs.name AND key IS NULL AND state <> 'failed' AND attempts < max_attempts ORDER BY run_at LIMIT 1) AS n UNION ALL SELECT ks.queue, GREATEST(h.at, CASE WHEN k.running_until > statement_timestamp() THEN k.running_until END) FROM ks CROSS JOIN LATERAL (SELECT LEAST((SELECT run_at FROM "public"."pq_jobs" WHERE queue = ks.queue AND key = ks.key AND priority = ks.priority AND expected_at IS NULL AND state <> 'failed' AND attempts < max_attempts ORDER BY priority DESC, expected_at ASC NULLS LAST, run_at ASC LIMIT 1), (SELECT run_at FROM "public"."pq_jobs" WHERE queue = ks.queue AND key = ks.key AND expected_at IS NOT NULL AND state <> 'failed' AND attempts < max_attempts ORDER BY run_at LIMIT 1)) AS at OFFSET 0) AS h LEFT JOIN "public"."pq_jobs_keys" AS k ON k.queue = ks.queue AND k.key = ks.key WHERE h.at IS NOT NULL), gated AS (SELECT GREATEST(d.at, CASE WHEN qs.concurrency IS NOT NULL THEN COALESCE((SELECT min(COALESCE(l.until, '-infinity')) FROM "public"."pq_jobs_slots" AS l WHERE l.queue = qs.name AND l.kind = 'c'), 'infinity') END, CASE WHEN qs.rate IS NOT NULL THEN COALESCE((SELECT min(COALESCE(l.until, '-infinity')) FROM "public"."pq_jobs_slots" AS l WHERE l.queue = qs.name AND l.kind = 'r'), 'infinity') END) AS at FROM (SELECT queue, min(at) AS at FROM due GROUP BY queue) AS d JOIN qs ON qs.name = d.queue) SELECT CASE WHEN isfinite(min(at)) THEN min(at) END AS next_at, statement_timestamp() AS now FROM gated

-- next run, 2 queue(s)
WITH RECURSIVE qs AS (SELECT DISTINCT v.name, s.concurrency, s.rate FROM (VALUES (($1::text[])[1]), (($1::text[])[2])) AS v(name) LEFT JOIN "public"."pq_jobs_queues" AS s ON s.queue = v.name WHERE v.name IS NOT NULL AND s.paused IS NOT TRUE), ks AS (SELECT qs.name AS queue, f.key, f.priority FROM qs CROSS JOIN LATERAL (SELECT key, priority FROM "public"."pq_jobs" WHERE queue = qs.name AND key IS NOT NULL AND state <> 'failed' ORDER BY key, priority DESC LIMIT 1) AS f UNION ALL SELECT ks.queue, n.key, n.priority FROM ks CROSS JOIN LATERAL ((SELECT key, priority FROM "public"."pq_jobs" WHERE queue = ks.queue AND key = ks.key AND priority < ks.priority AND state <> 'failed' ORDER BY key, priority DESC LIMIT 1) UNION ALL (SELECT key, priority FROM "public"."pq_jobs" WHERE queue = ks.queue AND key > ks.key AND state <> 'failed' ORDER BY key, priority DESC LIMIT 1) LIMIT 1) AS n), due AS (SELECT qs.name AS queue, n.run_at AS at FROM qs CROSS JOIN LATERAL (SELECT run_at FROM "public"."pq_jobs" WHERE queue = qs.name AND key IS NULL AND state <> 'failed' AND attempts < max_attempts ORDER BY run_at LIMIT 1) AS n UNION ALL SELECT ks.queue, GREATEST(h.at, CASE WHEN k.running_until > statement_timestamp() THEN k.running_until END) FROM ks CROSS JOIN LATERAL (SELECT LEAST((SELECT run_at FROM "public"."pq_jobs" WHERE queue = ks.queue AND key = ks.key AND priority = ks.priority AND expected_at IS NULL AND state <> 'failed' AND attempts < max_attempts ORDER BY priority DESC, expected_at ASC NULLS LAST, run_at ASC LIMIT 1), (SELECT run_at FROM "public"."pq_jobs" WHERE queue = ks.queue AND key = ks.key AND expected_at IS NOT NULL AND state <> 'failed' AND attempts < max_attempts ORDER BY run_at LIMIT 1)) AS at OFFSET 0) AS h LEFT JOIN "public"."pq_jobs_keys" AS k ON k.queue = ks.queue AND k.key = ks.key WHERE h.at IS NOT NULL), gated AS (SELECT GREATEST(d.at, CASE WHEN qs.concurrency IS NOT NULL THEN COALESCE((SELECT min(COALESCE(l.until, '-infinity')) FROM "public"."pq_jobs_slots" AS l WHERE l.queue = qs.name AND l.kind = 'c'), 'infinity') END, CASE WHEN qs.rate IS NOT NULL THEN COALESCE((SELECT min(COALESCE(l.until, '-infinity')) FROM "public"."pq_jobs_slots" AS l WHERE l.queue = qs.name AND l.kind = 'r'), 'infinity') END) AS at FROM (SELECT queue, min(at) AS at FROM due GROUP BY queue) AS d JOIN qs ON qs.name = d.queue) SELECT CASE WHEN isfinite(min(at)) THEN min(at) END AS next_at, statement_timestamp() AS now FROM gated

-- complete
WITH done AS (DELETE FROM "public"."pq_jobs" AS t USING unnest($1::int8[], $2::int8[], $3::text[], $4::text[]) AS l(id, token, result, key_state) WHERE t.id = l.id AND t.lease_token = l.token AND t.state = 'running' RETURNING t.id, t.lease_token, t.queue, CASE WHEN t.keep_for IS NOT NULL THEN t.payload END AS payload, t.key, t.cursor, t.priority, t.attempts, t.created_at, t.keep_for, l.result, l.key_state, t.expected_at, t.hides), freed AS (UPDATE "public"."pq_jobs_keys" AS k SET running_id = NULL, running_until = NULL, state = COALESCE(done.key_state::jsonb, k.state) FROM done WHERE done.key IS NOT NULL AND k.queue = done.queue AND k.key = done.key AND k.running_id = done.id RETURNING k.queue, k.key), shown AS (UPDATE "public"."pq_jobs" AS t SET hidden = false, hides = true FROM done AS c CROSS JOIN LATERAL ((SELECT n.id FROM "public"."pq_jobs" AS n WHERE c.expected_at IS NULL AND n.queue = c.queue AND n.key = c.key AND n.priority = c.priority AND n.expected_at IS NULL AND n.state = 'queued' AND NOT n.cursor AND n.unique_key IS NULL AND n.id <> c.id ORDER BY n.priority DESC, n.expected_at ASC NULLS LAST, n.run_at ASC, n.id ASC LIMIT 1) UNION ALL (SELECT n.id FROM "public"."pq_jobs" AS n WHERE n.queue = c.queue AND n.key = c.key AND n.priority = c.priority AND n.expected_at = c.expected_at AND n.state = 'queued' AND NOT n.cursor AND n.unique_key IS NULL AND n.id <> c.id ORDER BY n.priority DESC, n.expected_at ASC NULLS LAST, n.run_at ASC, n.id ASC LIMIT 1)) AS n WHERE c.hides AND t.id = n.id AND (t.hidden OR NOT t.hides)), woken AS (SELECT pg_notify('pq_1888fa0b9cef109e', q.queue) FROM (SELECT DISTINCT queue FROM freed) AS q WHERE EXISTS (SELECT 1 FROM freed AS f JOIN "public"."pq_jobs" AS j ON j.queue = f.queue AND j.key = f.key WHERE f.queue = q.queue AND j.state = 'queued')), unseated AS (UPDATE "public"."pq_jobs_slots" AS l SET job_id = NULL, token = NULL, until = NULL FROM done WHERE l.queue = done.queue AND l.kind = 'c' AND l.job_id = done.id AND l.token = done.lease_token), kept AS (INSERT INTO "public"."pq_jobs_history" (id, queue, payload, key, cursor, priority, attempts, result, created_at, finished_at, keep_until) SELECT id, queue, payload, key, cursor, priority, attempts, result::jsonb, created_at, statement_timestamp(), statement_timestamp() + keep_for * interval '1 microsecond' FROM done WHERE keep_for IS NOT NULL) SELECT id FROM done WHERE (SELECT count(*) FROM woken) >= 0

-- fail
WITH f AS (UPDATE "public"."pq_jobs" SET state = CASE WHEN $6::bool AND attempts < max_attempts THEN 'queued' ELSE 'failed' END, run_at = CASE WHEN $6::bool AND attempts < max_attempts THEN COALESCE($3::timestamptz, statement_timestamp() + $4::int8 * interval '1 microsecond') ELSE statement_timestamp() END, last_error = $5::text WHERE id = $1::int8 AND lease_token = $2::int8 AND state = 'running' RETURNING id, queue, key, lease_token, CASE WHEN state = 'failed' THEN CASE WHEN cancelled_at IS NULL THEN 'failed' ELSE 'cancelled' END WHEN state = 'running' AND run_at > statement_timestamp() THEN 'running' WHEN attempts >= max_attempts THEN 'failed' WHEN run_at > statement_timestamp() THEN 'scheduled' ELSE 'ready' END AS state, priority, expected_at, hides), shown AS (UPDATE "public"."pq_jobs" AS t SET hidden = false, hides = true FROM f AS c CROSS JOIN LATERAL ((SELECT n.id FROM "public"."pq_jobs" AS n WHERE c.expected_at IS NULL AND n.queue = c.queue AND n.key = c.key AND n.priority = c.priority AND n.expected_at IS NULL AND n.state = 'queued' AND NOT n.cursor AND n.unique_key IS NULL AND n.id <> c.id ORDER BY n.priority DESC, n.expected_at ASC NULLS LAST, n.run_at ASC, n.id ASC LIMIT 1) UNION ALL (SELECT n.id FROM "public"."pq_jobs" AS n WHERE n.queue = c.queue AND n.key = c.key AND n.priority = c.priority AND n.expected_at = c.expected_at AND n.state = 'queued' AND NOT n.cursor AND n.unique_key IS NULL AND n.id <> c.id ORDER BY n.priority DESC, n.expected_at ASC NULLS LAST, n.run_at ASC, n.id ASC LIMIT 1)) AS n WHERE c.hides AND t.id = n.id AND (t.hidden OR NOT t.hides)), freed AS (UPDATE "public"."pq_jobs_keys" AS k SET running_id = NULL, running_until = NULL FROM f WHERE f.key IS NOT NULL AND k.queue = f.queue AND k.key = f.key AND k.running_id = f.id RETURNING k.queue, k.key), woken AS (SELECT pg_notify('pq_1888fa0b9cef109e', q.queue) FROM (SELECT DISTINCT queue FROM freed) AS q WHERE EXISTS (SELECT 1 FROM freed AS f JOIN "public"."pq_jobs" AS j ON j.queue = f.queue AND j.key = f.key WHERE f.queue = q.queue AND j.state = 'queued')), unseated AS (UPDATE "public"."pq_jobs_slots" AS l SET job_id = NULL, token = NULL, until = NULL FROM f WHERE l.queue = f.queue AND l.kind = 'c' AND l.job_id = f.id AND l.token = f.lease_token) SELECT state FROM f WHERE (SELECT count(*) FROM woken) >= 0

-- extend
WITH e AS (UPDATE "public"."pq_jobs" SET run_at = statement_timestamp() + $3::int8 * interval '1 microsecond' WHERE id = $1::int8 AND lease_token = $2::int8 AND state = 'running' RETURNING id, queue, key, lease_token, run_at), moved AS (UPDATE "public"."pq_jobs_keys" AS k SET running_until = e.run_at FROM e WHERE e.key IS NOT NULL AND k.queue = e.queue AND k.key = e.key AND k.running_id = e.id), slid AS (UPDATE "public"."pq_jobs_slots" AS l SET until = e.run_at FROM e WHERE l.queue = e.queue AND l.kind = 'c' AND l.job_id = e.id AND l.token = e.lease_token) SELECT run_at FROM e

-- release
WITH r AS (UPDATE "public"."pq_jobs" SET state = 'queued', attempts = GREATEST(attempts - 1, 0), run_at = statement_timestamp() + $3::int8 * interval '1 microsecond' WHERE id = $1::int8 AND lease_token = $2::int8 AND state = 'running' RETURNING id, queue, key, lease_token, priority, expected_at, hides), shown AS (UPDATE "public"."pq_jobs" AS t SET hidden = false, hides = true FROM r AS c CROSS JOIN LATERAL ((SELECT n.id FROM "public"."pq_jobs" AS n WHERE c.expected_at IS NULL AND n.queue = c.queue AND n.key = c.key AND n.priority = c.priority AND n.expected_at IS NULL AND n.state = 'queued' AND NOT n.cursor AND n.unique_key IS NULL AND n.id <> c.id ORDER BY n.priority DESC, n.expected_at ASC NULLS LAST, n.run_at ASC, n.id ASC LIMIT 1) UNION ALL (SELECT n.id FROM "public"."pq_jobs" AS n WHERE n.queue = c.queue AND n.key = c.key AND n.priority = c.priority AND n.expected_at = c.expected_at AND n.state = 'queued' AND NOT n.cursor AND n.unique_key IS NULL AND n.id <> c.id ORDER BY n.priority DESC, n.expected_at ASC NULLS LAST, n.run_at ASC, n.id ASC LIMIT 1)) AS n WHERE c.hides AND t.id = n.id AND (t.hidden OR NOT t.hides)), freed AS (UPDATE "public"."pq_jobs_keys" AS k SET running_id = NULL, running_until = NULL FROM r WHERE r.key IS NOT NULL AND k.queue = r.queue AND k.key = r.key AND k.running_id = r.id), unseated AS (UPDATE "public"."pq_jobs_slots" AS l SET job_id = NULL, token = NULL, until = NULL FROM r WHERE l.queue = r.queue AND l.kind = 'c' AND l.job_id = r.id AND l.token = r.lease_token) SELECT id FROM r

-- cancel
WITH target AS (SELECT id, CASE WHEN state = 'failed' THEN CASE WHEN cancelled_at IS NULL THEN 'failed' ELSE 'cancelled' END WHEN state = 'running' AND run_at > statement_timestamp() THEN 'running' WHEN attempts >= max_attempts THEN 'failed' WHEN run_at > statement_timestamp() THEN 'scheduled' ELSE 'ready' END AS state, queue, key, priority, expected_at, hides FROM "public"."pq_jobs" WHERE id = $1::int8 FOR UPDATE), shown AS (UPDATE "public"."pq_jobs" AS t SET hidden = false, hides = true FROM target AS c CROSS JOIN LATERAL ((SELECT n.id FROM "public"."pq_jobs" AS n WHERE c.expected_at IS NULL AND n.queue = c.queue AND n.key = c.key AND n.priority = c.priority AND n.expected_at IS NULL AND n.state = 'queued' AND NOT n.cursor AND n.unique_key IS NULL AND n.id <> c.id ORDER BY n.priority DESC, n.expected_at ASC NULLS LAST, n.run_at ASC, n.id ASC LIMIT 1) UNION ALL (SELECT n.id FROM "public"."pq_jobs" AS n WHERE n.queue = c.queue AND n.key = c.key AND n.priority = c.priority AND n.expected_at = c.expected_at AND n.state = 'queued' AND NOT n.cursor AND n.unique_key IS NULL AND n.id <> c.id ORDER BY n.priority DESC, n.expected_at ASC NULLS LAST, n.run_at ASC, n.id ASC LIMIT 1)) AS n WHERE c.hides AND t.id = n.id AND (t.hidden OR NOT t.hides)), gone AS (DELETE FROM "public"."pq_jobs" AS t USING target WHERE t.id = target.id AND target.state <> 'running' RETURNING t.id), stopped AS (UPDATE "public"."pq_jobs" AS t SET state = 'failed', cancelled_at = statement_timestamp(), run_at = statement_timestamp() FROM target WHERE t.id = target.id AND target.state = 'running' RETURNING t.id) SELECT target.state FROM target, LATERAL (SELECT count(*) FROM stopped, LATERAL pg_notify('pq_1888fa0b9cef109e', chr(1) || stopped.id::text) AS n) AS told

-- lease cancelled
SELECT cancelled_at IS NOT NULL AS cancelled FROM "public"."pq_jobs" WHERE id = $1::int8 AND lease_token = $2::int8

-- progress
UPDATE "public"."pq_jobs" SET progress = $3::jsonb WHERE id = $1::int8 AND lease_token = $2::int8 AND state = 'running' RETURNING id

-- configure queue
WITH s AS (INSERT INTO "public"."pq_jobs_queues" AS s (queue, paused, concurrency, rate, rate_per, retention) VALUES ($1::text, $2::int4 = 1 AND $3::bool, CASE WHEN $2::int4 = 2 THEN NULLIF($4::int8, 0)::int4 END, CASE WHEN $2::int4 = 3 THEN NULLIF($4::int8, 0)::int4 END, CASE WHEN $2::int4 = 3 AND $4::int8 <> 0 THEN $5::int8 END, CASE WHEN $2::int4 = 4 THEN NULLIF($4::int8, 0) END) ON CONFLICT (queue) DO UPDATE SET paused = CASE WHEN $2::int4 = 1 THEN EXCLUDED.paused ELSE s.paused END, concurrency = CASE WHEN $2::int4 = 2 THEN EXCLUDED.concurrency ELSE s.concurrency END, rate = CASE WHEN $2::int4 = 3 THEN EXCLUDED.rate ELSE s.rate END, rate_per = CASE WHEN $2::int4 = 3 THEN EXCLUDED.rate_per ELSE s.rate_per END, retention = CASE WHEN $2::int4 = 4 THEN EXCLUDED.retention ELSE s.retention END RETURNING s.queue, s.concurrency, s.rate), kinds AS (SELECT s.queue, k.kind, k.n FROM s, LATERAL (VALUES ('c', s.concurrency), ('r', s.rate)) AS k(kind, n) WHERE ($2::int4 = 2 AND k.kind = 'c') OR ($2::int4 = 3 AND k.kind = 'r')), added AS (INSERT INTO "public"."pq_jobs_slots" (queue, kind, slot) SELECT kinds.queue, kinds.kind, g FROM kinds, generate_series(0, COALESCE(kinds.n, 0) - 1) AS g ON CONFLICT DO NOTHING), dropped AS (DELETE FROM "public"."pq_jobs_slots" AS l USING kinds WHERE l.queue = kinds.queue AND l.kind = kinds.kind AND l.slot >= COALESCE(kinds.n, 0)) SELECT count(*)::int8 AS n FROM s, LATERAL pg_notify('pq_1888fa0b9cef109e', s.queue) AS told

-- queue configs
SELECT json_build_array(queue, paused, COALESCE(concurrency, 0), COALESCE(rate, 0), COALESCE(rate_per, 0), COALESCE(retention, 0))::text AS row FROM "public"."pq_jobs_queues" ORDER BY queue

-- queue counts
SELECT json_build_array(queue, state, n, age)::text AS row FROM (SELECT queue, CASE WHEN state = 'failed' THEN CASE WHEN cancelled_at IS NULL THEN 'failed' ELSE 'cancelled' END WHEN state = 'running' AND run_at > statement_timestamp() THEN 'running' WHEN attempts >= max_attempts THEN 'failed' WHEN run_at > statement_timestamp() THEN 'scheduled' ELSE 'ready' END AS state, count(*) AS n, (extract(epoch FROM statement_timestamp() - min(run_at)) * 1e6)::int8 AS age FROM "public"."pq_jobs" GROUP BY 1, 2) AS c

-- prune jobs
WITH gone AS (DELETE FROM "public"."pq_jobs" AS t WHERE t.id IN (SELECT j.id FROM "public"."pq_jobs" AS j LEFT JOIN "public"."pq_jobs_queues" AS s ON s.queue = j.queue WHERE (j.state = 'failed' OR (j.state = 'running' AND j.attempts >= j.max_attempts)) AND j.run_at < statement_timestamp() - COALESCE(s.retention, $1::int8) * interval '1 microsecond' ORDER BY j.run_at LIMIT $2::int8 FOR UPDATE OF j SKIP LOCKED) RETURNING 1) SELECT count(*)::int8 AS n FROM gone

-- prune keys
SELECT "public"."pq_jobs_sweep_keys"($1::int4) AS n

-- reveal
WITH stranded AS (SELECT f.id FROM "public"."pq_jobs_keys" AS k CROSS JOIN LATERAL (SELECT j.id, j.hidden FROM "public"."pq_jobs" AS j WHERE j.queue = k.queue AND j.key = k.key AND j.state = 'queued' AND NOT j.cursor AND j.unique_key IS NULL ORDER BY j.priority DESC, j.expected_at ASC NULLS LAST, j.run_at ASC, j.id ASC LIMIT 1) AS f WHERE f.hidden AND NOT (k.running_id IS NOT NULL AND k.running_until > statement_timestamp()) LIMIT $1::int4), shown AS (UPDATE "public"."pq_jobs" AS t SET hidden = false, hides = true FROM stranded AS s WHERE t.id = s.id RETURNING 1) SELECT count(*)::int8 AS n FROM shown

-- retry
WITH target AS (SELECT id, CASE WHEN state = 'failed' THEN CASE WHEN cancelled_at IS NULL THEN 'failed' ELSE 'cancelled' END WHEN state = 'running' AND run_at > statement_timestamp() THEN 'running' WHEN attempts >= max_attempts THEN 'failed' WHEN run_at > statement_timestamp() THEN 'scheduled' ELSE 'ready' END AS state FROM "public"."pq_jobs" WHERE id = $1::int8 FOR UPDATE), restarted AS (UPDATE "public"."pq_jobs" AS t SET state = 'queued', attempts = 0, run_at = statement_timestamp(), hidden = false FROM target WHERE t.id = target.id AND target.state = 'failed' RETURNING t.id, t.queue, t.key), keyed AS (INSERT INTO "public"."pq_jobs_keys" (queue, key) SELECT r.queue, r.key FROM restarted AS r WHERE r.key IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "public"."pq_jobs_keys" AS k WHERE k.queue = r.queue AND k.key = r.key FOR KEY SHARE) ON CONFLICT DO NOTHING) SELECT state FROM target

-- job
SELECT id, queue, payload::text AS payload, priority, expected_at, run_at, CASE WHEN state = 'failed' THEN CASE WHEN cancelled_at IS NULL THEN 'failed' ELSE 'cancelled' END WHEN state = 'running' AND run_at > statement_timestamp() THEN 'running' WHEN attempts >= max_attempts THEN 'failed' WHEN run_at > statement_timestamp() THEN 'scheduled' ELSE 'ready' END AS state, attempts, max_attempts, last_error, created_at, lease_token, key, cursor, keep_for, timeout, unique_key, unique_scope, progress::text AS progress, NULL::text AS key_state FROM "public"."pq_jobs" WHERE id = $1::int8

-- list jobs
SELECT id, queue, payload::text AS payload, priority, expected_at, run_at, CASE WHEN state = 'failed' THEN CASE WHEN cancelled_at IS NULL THEN 'failed' ELSE 'cancelled' END WHEN state = 'running' AND run_at > statement_timestamp() THEN 'running' WHEN attempts >= max_attempts THEN 'failed' WHEN run_at > statement_timestamp() THEN 'scheduled' ELSE 'ready' END AS state, attempts, max_attempts, last_error, created_at, lease_token, key, cursor, keep_for, timeout, unique_key, unique_scope, progress::text AS progress, NULL::text AS key_state FROM "public"."pq_jobs" WHERE ($1::text = '' OR queue = $1::text) AND ($2::text = '' OR CASE WHEN state = 'failed' THEN CASE WHEN cancelled_at IS NULL THEN 'failed' ELSE 'cancelled' END WHEN state = 'running' AND run_at > statement_timestamp() THEN 'running' WHEN attempts >= max_attempts THEN 'failed' WHEN run_at > statement_timestamp() THEN 'scheduled' ELSE 'ready' END = $2::text) AND id < $3::int8 ORDER BY id DESC LIMIT $4::int8

-- record throughput
INSERT INTO "public"."pq_jobs_throughput" AS t (queue, minute, completed, failed) SELECT queue, date_trunc('minute', statement_timestamp()), sum(completed)::int8, sum(failed)::int8 FROM unnest($1::text[], $2::int8[], $3::int8[]) AS r(queue, completed, failed) GROUP BY queue ON CONFLICT (queue, minute) DO UPDATE SET completed = t.completed + excluded.completed, failed = t.failed + excluded.failed RETURNING 1::int8 AS n

-- throughput
SELECT json_build_array(queue, (extract(epoch FROM minute) * 1e6)::int8, completed, failed)::text AS row FROM "public"."pq_jobs_throughput" WHERE minute >= date_trunc('minute', statement_timestamp() - $1::int8 * interval '1 microsecond') ORDER BY minute, queue

-- prune throughput
WITH gone AS (DELETE FROM "public"."pq_jobs_throughput" WHERE minute < statement_timestamp() - $1::int8 * interval '1 microsecond' RETURNING 1) SELECT count(*)::int8 AS n FROM gone

-- stats
SELECT CASE WHEN state = 'failed' THEN CASE WHEN cancelled_at IS NULL THEN 'failed' ELSE 'cancelled' END WHEN state = 'running' AND run_at > statement_timestamp() THEN 'running' WHEN attempts >= max_attempts THEN 'failed' WHEN run_at > statement_timestamp() THEN 'scheduled' ELSE 'ready' END AS state, count(*)::int8 AS n FROM "public"."pq_jobs" WHERE queue = $1::text GROUP BY 1

-- purge
WITH gone AS (DELETE FROM "public"."pq_jobs" WHERE queue = $1::text RETURNING id), freed AS (UPDATE "public"."pq_jobs_keys" SET running_id = NULL, running_until = NULL WHERE queue = $1::text AND running_id IS NOT NULL), unseated AS (UPDATE "public"."pq_jobs_slots" SET job_id = NULL, token = NULL, until = NULL WHERE queue = $1::text AND kind = 'c' AND job_id IS NOT NULL) SELECT count(*)::int8 AS n FROM gone

-- key state
SELECT COALESCE(state::text, 'null') AS state FROM "public"."pq_jobs_keys" WHERE queue = $1::text AND key = $2::text

-- finished
SELECT id, queue, payload::text AS payload, key, cursor, priority, attempts, result::text AS result, created_at, finished_at, keep_until FROM "public"."pq_jobs_history" WHERE id = $1::int8

-- history
SELECT id, queue, payload::text AS payload, key, cursor, priority, attempts, result::text AS result, created_at, finished_at, keep_until FROM "public"."pq_jobs_history" WHERE queue = $1::text ORDER BY finished_at DESC, id DESC LIMIT $2::int8

-- cleanup history
WITH gone AS (DELETE FROM "public"."pq_jobs_history" WHERE keep_until <= statement_timestamp() RETURNING 1), ended AS (DELETE FROM "public"."pq_jobs_unique" WHERE until <= statement_timestamp()) SELECT count(*)::int8 AS n FROM gone

-- listen
LISTEN "pq_1888fa0b9cef109e"

-- vacuum
VACUUM (SKIP_LOCKED, INDEX_CLEANUP ON) "public"."pq_jobs"

-- may vacuum
SELECT pg_has_role(c.relowner, 'USAGE') AS may FROM pg_class AS c WHERE c.oid = '"public"."pq_jobs"'::regclass

-- analyze if stale
DO $$ DECLARE stale regclass; BEGIN FOR stale IN SELECT c.oid::regclass FROM pg_class AS c JOIN pg_stat_user_tables AS s ON s.relid = c.oid WHERE (c.oid = '"public"."pq_jobs"'::regclass OR c.oid IN (SELECT t.relid FROM pg_partition_tree('"public"."pq_jobs"'::regclass) AS t)) AND c.relkind = 'r' AND s.n_live_tup > 1000 AND (c.reltuples < 0 OR c.reltuples * 2 < s.n_live_tup) AND pg_has_role(c.relowner, 'USAGE') LOOP EXECUTE format('ANALYZE %s', stale); END LOOP; END$$

-- begin, transactional handler
BEGIN; SET LOCAL idle_in_transaction_session_timeout = 30000

-- migrations: lock
SELECT pg_advisory_xact_lock($1::int8)

-- migrations: prepare
CREATE SCHEMA IF NOT EXISTS "public";
CREATE TABLE IF NOT EXISTS "public"."pq_jobs_migrations" (version integer PRIMARY KEY,
  description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());

-- migrations: applied
SELECT version FROM "public"."pq_jobs_migrations" ORDER BY version

-- migrations: record
INSERT INTO "public"."pq_jobs_migrations" (version, description) VALUES ($1::int4, $2::text)

-- migration 1: jobs table, claim index, notify trigger
CREATE TABLE "public"."pq_jobs" (
  id bigserial PRIMARY KEY,
  queue text NOT NULL CHECK (length(queue) BETWEEN 1 AND 128),
  payload jsonb NOT NULL,
  priority integer NOT NULL DEFAULT 0,
  expected_at timestamptz,
  run_at timestamptz NOT NULL DEFAULT now(),
  state text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'failed')),
  attempts integer NOT NULL DEFAULT 0,
  max_attempts integer NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
  lease_token bigint,
  last_error text,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX "pq_jobs_claim" ON "public"."pq_jobs" (queue, priority DESC, expected_at ASC NULLS LAST, run_at ASC, id ASC)
  WHERE state <> 'failed';
CREATE INDEX "pq_jobs_run_at" ON "public"."pq_jobs" (queue, run_at) WHERE state <> 'failed';
CREATE FUNCTION "public"."pq_jobs_notify"() RETURNS trigger LANGUAGE plpgsql AS $pq$
BEGIN
  PERFORM pg_notify('pq_1888fa0b9cef109e', q.queue)
  FROM (SELECT DISTINCT queue FROM new_rows WHERE state = 'queued') AS q;
  RETURN NULL;
END
$pq$;
CREATE TRIGGER pq_notify_insert AFTER INSERT ON "public"."pq_jobs" REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION "public"."pq_jobs_notify"();
CREATE TRIGGER pq_notify_update AFTER UPDATE ON "public"."pq_jobs" REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION "public"."pq_jobs_notify"();

-- migration 2: serial and cursor keys, key states, job history
ALTER TABLE "public"."pq_jobs" ADD COLUMN key text CHECK (length(key) BETWEEN 1 AND 255),
  ADD COLUMN cursor boolean NOT NULL DEFAULT false,
  ADD COLUMN keep_for bigint CHECK (keep_for > 0);
DROP INDEX "public"."pq_jobs_run_at";
CREATE INDEX "pq_jobs_run_at" ON "public"."pq_jobs" (queue, run_at) WHERE state <> 'failed' AND key IS NULL;
CREATE INDEX "pq_jobs_key" ON "public"."pq_jobs" (queue, key, priority DESC, expected_at ASC NULLS LAST, run_at ASC, id ASC)
  WHERE key IS NOT NULL AND state <> 'failed';
CREATE INDEX "pq_jobs_key_run_at" ON "public"."pq_jobs" (queue, key, run_at) WHERE key IS NOT NULL AND state <> 'failed';
CREATE UNIQUE INDEX "pq_jobs_cursor_pending" ON "public"."pq_jobs" (queue, key) WHERE cursor AND lease_token IS NULL;
CREATE TABLE "public"."pq_jobs_keys" (
  queue text NOT NULL,
  key text NOT NULL,
  running_id bigint,
  running_until timestamptz,
  state jsonb,
  PRIMARY KEY (queue, key)
);
CREATE TABLE "public"."pq_jobs_history" (
  id bigint PRIMARY KEY,
  queue text NOT NULL,
  payload jsonb NOT NULL,
  key text,
  cursor boolean NOT NULL,
  priority integer NOT NULL,
  attempts integer NOT NULL,
  result jsonb,
  created_at timestamptz NOT NULL,
  finished_at timestamptz NOT NULL,
  keep_until timestamptz NOT NULL
);
CREATE INDEX "pq_jobs_history_queue" ON "public"."pq_jobs_history" (queue, finished_at DESC, id DESC);
CREATE INDEX "pq_jobs_history_keep" ON "public"."pq_jobs_history" (keep_until);
CREATE FUNCTION "public"."pq_jobs_key_freed"() RETURNS trigger LANGUAGE plpgsql AS $pq$
BEGIN
  IF EXISTS (SELECT 1 FROM "public"."pq_jobs" WHERE queue = NEW.queue AND key = NEW.key AND state <> 'failed') THEN
    PERFORM pg_notify('pq_1888fa0b9cef109e', NEW.queue);
  END IF;
  RETURN NULL;
END
$pq$;
CREATE TRIGGER pq_notify_key_freed AFTER UPDATE ON "public"."pq_jobs_keys" FOR EACH ROW
  WHEN (OLD.running_id IS NOT NULL AND NEW.running_id IS NULL)
  EXECUTE FUNCTION "public"."pq_jobs_key_freed"();

-- migration 3: finite timestamps only
ALTER TABLE "public"."pq_jobs" ADD CONSTRAINT "pq_jobs_finite_times"
  CHECK (isfinite(run_at) AND isfinite(created_at) AND (expected_at IS NULL OR isfinite(expected_at)))
  NOT VALID;
ALTER TABLE "public"."pq_jobs_history" ADD CONSTRAINT "pq_jobs_history_finite_times"
  CHECK (isfinite(created_at) AND isfinite(finished_at) AND isfinite(keep_until))
  NOT VALID;

-- migration 4: per-job time limits, unique jobs
ALTER TABLE "public"."pq_jobs" ADD COLUMN timeout int8, ADD COLUMN unique_key text, ADD COLUMN unique_scope int8;
CREATE INDEX "pq_jobs_unique_key" ON "public"."pq_jobs" (queue, unique_key) WHERE unique_key IS NOT NULL;
CREATE TABLE "public"."pq_jobs_unique" (
  queue text NOT NULL,
  key text NOT NULL,
  job_id bigint NOT NULL,
  until timestamptz NOT NULL,
  PRIMARY KEY (queue, key)
);
CREATE FUNCTION "public"."pq_jobs_unique_holders"(queues text[], keys text[])
  RETURNS TABLE (queue text, key text, holder bigint) LANGUAGE plpgsql AS $pq$
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RAISE EXCEPTION 'pq puts jobs with uniqueness keys only in READ COMMITTED transactions'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  PERFORM pg_advisory_xact_lock(-1662054242, hashtext(p.q || chr(1) || p.k))
  FROM (SELECT DISTINCT u.q, u.k FROM unnest(queues, keys) AS u(q, k)
        WHERE u.k IS NOT NULL ORDER BY u.q, u.k) AS p;
  RETURN QUERY
  SELECT p.q, p.k, COALESCE(
    (SELECT h.job_id FROM "public"."pq_jobs_unique" AS h
     WHERE h.queue = p.q AND h.key = p.k AND h.until > statement_timestamp()),
    (SELECT j.id FROM "public"."pq_jobs" AS j
     WHERE j.queue = p.q AND j.unique_key = p.k AND j.state <> 'failed'
       AND (j.attempts < j.max_attempts
            OR (j.state = 'running' AND j.run_at > statement_timestamp()))
       AND (j.unique_scope = -2 OR (j.unique_scope = -1 AND j.lease_token IS NULL))
     ORDER BY j.id LIMIT 1))
  FROM (SELECT DISTINCT u.q, u.k FROM unnest(queues, keys) AS u(q, k)
        WHERE u.k IS NOT NULL) AS p;
END
$pq$;

-- migration 5: cancelled jobs, progress, queue settings and limits, pruning
ALTER TABLE "public"."pq_jobs" ADD COLUMN cancelled_at timestamptz, ADD COLUMN progress jsonb;
CREATE INDEX "pq_jobs_ended" ON "public"."pq_jobs" (run_at)
  WHERE state = 'failed' OR (state = 'running' AND attempts >= max_attempts);
CREATE TABLE "public"."pq_jobs_queues" (
  queue text PRIMARY KEY,
  paused boolean NOT NULL DEFAULT false,
  concurrency int4 CHECK (concurrency > 0),
  rate int4 CHECK (rate > 0),
  rate_per int8 CHECK (rate_per > 0),
  retention int8 CHECK (retention > 0)
);
CREATE TABLE "public"."pq_jobs_slots" (
  queue text NOT NULL,
  kind text NOT NULL CHECK (kind IN ('c', 'r')),
  slot int4 NOT NULL,
  job_id bigint,
  token bigint,
  until timestamptz,
  PRIMARY KEY (queue, kind, slot)
);
CREATE FUNCTION "public"."pq_jobs_slot_freed"() RETURNS trigger LANGUAGE plpgsql AS $pq$
BEGIN
  PERFORM pg_notify('pq_1888fa0b9cef109e', NEW.queue);
  RETURN NULL;
END
$pq$;
CREATE TRIGGER pq_notify_slot_freed AFTER UPDATE ON "public"."pq_jobs_slots" FOR EACH ROW
  WHEN (OLD.job_id IS NOT NULL AND NEW.job_id IS NULL)
  EXECUTE FUNCTION "public"."pq_jobs_slot_freed"();
CREATE FUNCTION "public"."pq_jobs_sweep_keys"(lim int4) RETURNS int8 LANGUAGE plpgsql AS $pq$
DECLARE
  qs text[];
  ks text[];
  n int8;
BEGIN
  SELECT array_agg(l.queue), array_agg(l.key) INTO qs, ks FROM (
    SELECT k.queue, k.key FROM "public"."pq_jobs_keys" AS k
    WHERE (k.running_id IS NULL OR k.running_until <= statement_timestamp()) AND k.state IS NULL
      AND k.ctid = ANY (ARRAY(
        SELECT c.ctid FROM "public"."pq_jobs_keys" AS c
        WHERE (c.running_id IS NULL OR c.running_until <= statement_timestamp())
          AND c.state IS NULL
          AND NOT EXISTS (SELECT 1 FROM "public"."pq_jobs" AS j WHERE j.queue = c.queue AND j.key = c.key
                          AND j.state <> 'failed')
        LIMIT lim))
    FOR UPDATE SKIP LOCKED
  ) AS l;
  DELETE FROM "public"."pq_jobs_keys" AS k USING unnest(qs, ks) AS u(q, key)
  WHERE k.queue = u.q AND k.key = u.key AND k.state IS NULL
    AND (k.running_id IS NULL OR k.running_until <= statement_timestamp())
    AND NOT EXISTS (SELECT 1 FROM "public"."pq_jobs" AS j WHERE j.queue = u.q AND j.key = u.key
                    AND j.state <> 'failed');
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN n;
END
$pq$;

-- migration 6: per-minute throughput records
CREATE TABLE "public"."pq_jobs_throughput" (
  queue text NOT NULL,
  minute timestamptz NOT NULL,
  completed int8 NOT NULL CHECK (completed >= 0),
  failed int8 NOT NULL CHECK (failed >= 0),
  PRIMARY KEY (queue, minute)
);

-- migration 7: keyed jobs behind another of their key left out of the claim index
ALTER TABLE "public"."pq_jobs" ADD COLUMN hidden boolean NOT NULL DEFAULT false,
  ADD COLUMN hides boolean NOT NULL DEFAULT false;
DROP INDEX "public"."pq_jobs_claim";
CREATE INDEX "pq_jobs_claim" ON "public"."pq_jobs" (queue, priority DESC, expected_at ASC NULLS LAST, run_at ASC, id ASC)
  WHERE state <> 'failed' AND NOT hidden;

-- migration 8: freed keys notified by the statements that free them
DROP TRIGGER pq_notify_key_freed ON "public"."pq_jobs_keys";
DROP FUNCTION "public"."pq_jobs_key_freed"();

-- migration 9: one key index fewer: next run times from the key index
DROP INDEX "public"."pq_jobs_key_run_at";
CREATE INDEX "pq_jobs_key_deadline" ON "public"."pq_jobs" (queue, key, run_at)
  WHERE key IS NOT NULL AND expected_at IS NOT NULL AND state <> 'failed';

-- migration 10: rows from before the finite-times checks failed, the checks validated
UPDATE "public"."pq_jobs" SET
  state = 'failed',
  last_error = 'pq migration 10: failed for holding a time that is not finite ('
    || concat_ws(', ',
         CASE WHEN NOT isfinite(run_at) THEN 'run_at ' || run_at END,
         CASE WHEN NOT isfinite(created_at) THEN 'created_at ' || created_at END,
         CASE WHEN NOT isfinite(expected_at) THEN 'expected_at ' || expected_at END)
    || ')' || COALESCE('; its last error: ' || last_error, ''),
  run_at = statement_timestamp(),
  created_at = CASE WHEN isfinite(created_at) THEN created_at ELSE statement_timestamp() END,
  expected_at = CASE WHEN isfinite(expected_at) THEN expected_at END
WHERE NOT (isfinite(run_at) AND isfinite(created_at)
           AND (expected_at IS NULL OR isfinite(expected_at)));
UPDATE "public"."pq_jobs_history" SET
  created_at = CASE WHEN isfinite(created_at) THEN created_at ELSE statement_timestamp() END,
  finished_at = CASE WHEN isfinite(finished_at) THEN finished_at ELSE statement_timestamp() END,
  keep_until = CASE WHEN isfinite(keep_until) THEN keep_until
                    WHEN keep_until > statement_timestamp()
                    THEN statement_timestamp() + interval '100 years'
                    ELSE statement_timestamp() END
WHERE NOT (isfinite(created_at) AND isfinite(finished_at) AND isfinite(keep_until));
ALTER TABLE "public"."pq_jobs" VALIDATE CONSTRAINT "pq_jobs_finite_times";
ALTER TABLE "public"."pq_jobs_history" VALIDATE CONSTRAINT "pq_jobs_history_finite_times";

-- migration 11: a partition number on every job, the rotation of partitions
CREATE TABLE "public"."pq_jobs_rotation" (
  one boolean PRIMARY KEY DEFAULT true CHECK (one),
  current int2 NOT NULL CHECK (current BETWEEN 0 AND 1)
);
INSERT INTO "public"."pq_jobs_rotation" (current) VALUES (0);
CREATE FUNCTION "public"."pq_jobs_current_part"() RETURNS int2 LANGUAGE sql STABLE AS $pq$
  SELECT current FROM "public"."pq_jobs_rotation"
$pq$;
ALTER TABLE "public"."pq_jobs" ADD COLUMN part int2 NOT NULL DEFAULT "public"."pq_jobs_current_part"();
UPDATE "public"."pq_jobs" SET part = -1 WHERE cursor;
DROP INDEX "public"."pq_jobs_cursor_pending";
CREATE UNIQUE INDEX "pq_jobs_cursor_pending" ON "public"."pq_jobs" (queue, key, part) WHERE cursor AND lease_token IS NULL;
CREATE FUNCTION "public"."pq_jobs_rotate"(full_bytes int8) RETURNS int4 LANGUAGE plpgsql AS $pq$
DECLARE
  parts regclass[];
  cur int2;
  nxt int2;
  p int2;
  emptied int4 := 0;
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed'
     OR (SELECT c.relkind FROM pg_class AS c WHERE c.oid = '"public"."pq_jobs"'::regclass) <> 'p' THEN
    RETURN 0;
  END IF;
  parts := ARRAY['"public"."pq_jobs_part_0"', '"public"."pq_jobs_part_1"']::regclass[];
  PERFORM set_config('lock_timeout', '100ms', true);
  SELECT r.current INTO cur FROM "public"."pq_jobs_rotation" AS r FOR UPDATE SKIP LOCKED;
  IF NOT FOUND THEN
    RETURN 0;
  END IF;
  FOR p IN 0..1 LOOP
    CONTINUE WHEN p = cur OR pg_relation_size(parts[p + 1]) = 0;
    CONTINUE WHEN EXISTS (SELECT 1 FROM "public"."pq_jobs" AS j WHERE j.part = p);
    BEGIN
      EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', parts[p + 1]);
    EXCEPTION WHEN lock_not_available THEN
      CONTINUE;
    END;
    IF NOT EXISTS (SELECT 1 FROM "public"."pq_jobs" AS j WHERE j.part = p) THEN
      BEGIN
        EXECUTE format('TRUNCATE %s', parts[p + 1]);
        emptied := emptied + 1;
      EXCEPTION WHEN insufficient_privilege THEN
        NULL;
      END;
    END IF;
  END LOOP;
  IF pg_relation_size(parts[cur + 1]) < full_bytes THEN
    RETURN emptied;
  END IF;
  nxt := 1 - cur;
  IF pg_relation_size(parts[nxt + 1]) = 0 THEN
    UPDATE "public"."pq_jobs_rotation" SET current = nxt;
  ELSIF (SELECT count(*) FROM (SELECT 1 FROM "public"."pq_jobs" AS j WHERE j.part = nxt LIMIT 1001) AS l) <= 1000 THEN
    UPDATE "public"."pq_jobs" AS j SET part = cur
    WHERE j.part = nxt AND j.state <> 'running'
      AND j.ctid = ANY (ARRAY(SELECT l.ctid FROM "public"."pq_jobs" AS l
                              WHERE l.part = nxt AND l.state <> 'running'
                              FOR UPDATE SKIP LOCKED));
  END IF;
  RETURN emptied;
END
$pq$;

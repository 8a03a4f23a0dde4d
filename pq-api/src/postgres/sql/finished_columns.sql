-- The columns of a history row, in the order FinishedRow is decoded: {finished_columns}.
id, queue, payload::text AS payload, key, cursor, priority, attempts, result::text AS result,
created_at, finished_at, keep_until

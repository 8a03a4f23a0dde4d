-- The columns of a job row, in the order JobRow is decoded: {job_columns}. {state} is the
-- state expression (state.sql), or 'running' in a claim's result.
id, queue, payload::text AS payload, priority, expected_at, run_at, {state} AS state,
attempts, max_attempts, last_error, created_at, lease_token, key, cursor, keep_for, timeout,
unique_key, unique_scope, progress::text AS progress

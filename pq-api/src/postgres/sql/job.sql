-- One job: $1 int8 id → a job row.
SELECT {job_columns}, NULL::text AS key_state FROM {jobs} WHERE id = $1::int8

-- The job's state as the contract defines it, from the stored columns at
-- statement_timestamp(): an expression, spliced into statements as {state}. A cancelled job
-- is stored as failed, with cancelled_at set.
CASE WHEN state = 'failed' THEN CASE WHEN cancelled_at IS NULL THEN 'failed' ELSE 'cancelled' END
     WHEN state = 'running' AND run_at > statement_timestamp() THEN 'running'
     WHEN attempts >= max_attempts THEN 'failed'
     WHEN run_at > statement_timestamp() THEN 'scheduled'
     ELSE 'ready' END

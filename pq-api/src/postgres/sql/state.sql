-- The job's state as the contract defines it, from the stored columns at
-- statement_timestamp(): an expression, spliced into statements as {state}.
CASE WHEN state = 'failed' THEN 'failed'
     WHEN state = 'running' AND run_at > statement_timestamp() THEN 'running'
     WHEN attempts >= max_attempts THEN 'failed'
     WHEN run_at > statement_timestamp() THEN 'scheduled'
     ELSE 'ready' END

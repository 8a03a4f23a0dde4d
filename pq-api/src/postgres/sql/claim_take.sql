-- The claim's leases and key records, spliced in as {take} by claim.sql and
-- claim_unlimited.sql after their `cand` CTE: `claimed` leases each candidate under the
-- claim's token (the expired job a candidate stands in for takes its place only while its
-- group's next job is still hidden), `taken` records it on its key's row, found by ctid.
claimed AS (
  UPDATE {jobs} AS t SET state = 'running', attempts = t.attempts + 1,
         lease_token = (SELECT token FROM lease),
         run_at = statement_timestamp() + {lease} * interval '1 microsecond',
         hidden = false, hides = t.hides OR picked.via
  FROM cand AS picked WHERE t.id = picked.id
    AND (NOT picked.via OR (t.state = 'queued' AND t.hidden))
  RETURNING t.*, picked.run_at AS prev_run_at, picked.kctid
), taken AS (
  UPDATE {keys} AS k SET running_id = c.id, running_until = c.run_at
  FROM claimed AS c WHERE k.ctid = c.kctid
  RETURNING k.queue AS k_queue, k.key AS k_key, k.state AS k_state
)

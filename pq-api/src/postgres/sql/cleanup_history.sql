-- Removes expired history records → n int8, the records removed. Also removes the records
-- of uniqueness keys whose period has ended (they hold nothing any more).
WITH gone AS (
  DELETE FROM {history} WHERE keep_until <= statement_timestamp() RETURNING 1
), ended AS (
  DELETE FROM {unique} WHERE until <= statement_timestamp()
)
SELECT count(*)::int8 AS n FROM gone

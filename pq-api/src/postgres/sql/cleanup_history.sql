-- Removes expired history records → n int8, the records removed.
WITH gone AS (
  DELETE FROM {history} WHERE keep_until <= statement_timestamp() RETURNING 1
)
SELECT count(*)::int8 AS n FROM gone

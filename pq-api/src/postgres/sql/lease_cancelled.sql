-- Whether the job a lease held was cancelled under it: $1 int8 id, $2 int8 token →
-- cancelled bool (no row: the job is gone). Asked only after a lease operation found nothing.
SELECT cancelled_at IS NOT NULL AS cancelled FROM {jobs}
WHERE id = $1::int8 AND lease_token = $2::int8

-- Records a running job's progress: $1 int8 id, $2 int8 token, $3 text progress (JSON) → id.
UPDATE {jobs} SET progress = $3::jsonb
WHERE id = $1::int8 AND lease_token = $2::int8 AND state = 'running'
RETURNING id

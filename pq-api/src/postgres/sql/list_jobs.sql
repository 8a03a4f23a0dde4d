-- Jobs newest first: $1 text queue ('' any), $2 text state ('' any), $3 int8 ids below it,
-- $4 int8 at most so many → job rows.
SELECT {job_columns}, NULL::text AS key_state FROM {jobs}
WHERE ($1::text = '' OR queue = $1::text) AND ($2::text = '' OR {state} = $2::text)
  AND id < $3::int8
ORDER BY id DESC LIMIT $4::int8

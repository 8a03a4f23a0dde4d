-- A key's state: $1 text queue, $2 text key → state text (no row: unknown key).
SELECT COALESCE(state::text, 'null') AS state FROM {keys}
WHERE queue = $1::text AND key = $2::text

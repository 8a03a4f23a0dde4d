-- Whether the role may vacuum the jobs table, as its owner or a member of the owner's role
-- → one row, may bool. Without that PostgreSQL skips a VACUUM with a warning.
SELECT pg_has_role(c.relowner, 'USAGE') AS may FROM pg_class AS c
WHERE c.oid = '{jobs}'::regclass

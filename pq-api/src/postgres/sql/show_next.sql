-- Shows the next queued job of the group (queue, key, priority, deadline) of each row of
-- {ended} that hides others: the body of a CTE of complete.sql, fail.sql, release.sql and
-- cancel.sql, spliced in as {shown}, {ended} being the jobs the statement ends or hands back
-- (each with id, queue, key, priority, expected_at, hides). A claim leaves the next job
-- hidden; the statement that ends the claimed one shows it (claim.sql).
UPDATE {jobs} AS t SET hidden = false, hides = true
FROM {ended} AS c CROSS JOIN LATERAL (
  {next_in_group}
) AS n
WHERE c.hides AND t.id = n.id AND (t.hidden OR NOT t.hides)

-- Vacuums the jobs table and its indexes, skipped if another vacuum of it is running (no
-- parameters; outside a transaction, as a simple query). INDEX_CLEANUP ON: left to its
-- default, PostgreSQL skips the index pass when few heap pages hold dead rows (under 2% of
-- them, as on a large backlog), and the index entries claims scan past are what this is for.
VACUUM (SKIP_LOCKED, INDEX_CLEANUP ON) {jobs}

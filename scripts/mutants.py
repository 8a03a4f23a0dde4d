#!/usr/bin/env python3
"""Hand-written mutants of the shared SQL (pq-api/src/postgres/sql/*.sql), each run against the sqlx
store's conformance suite and PostgreSQL tests. Run through scripts/mutants.sh.

Each mutant breaks one promise in the statement text. It is caught when a test fails; a
mutant that survives must be in ALLOWED with the reason it breaks no promise, or the run
fails. The tests must pass without any mutant first (a baseline), so a broken test command
cannot pass for a caught mutant. The file is restored after each mutant, whatever happens.
"""
import shutil
import subprocess
import sys

SQL = "pq-api/src/postgres/sql/"
TOKEN = "WHERE id = $1::int8 AND lease_token = $2::int8 AND state = 'running'"
UNFENCED = "WHERE id = $1::int8 AND state = 'running'"
ORDER = "j.priority DESC, j.expected_at ASC NULLS LAST"

# (name, statement file, text, replacement, which occurrence of the text: 0 for the first)
MUTANTS = [
    ("complete ignores the lease token", "complete.sql", "AND t.lease_token = l.token", "", 0),
    ("fail ignores the lease token", "fail.sql", TOKEN, UNFENCED, 0),
    ("extend ignores the lease token", "extend.sql", TOKEN, UNFENCED, 0),
    ("release ignores the lease token", "release.sql", TOKEN, UNFENCED, 0),
    ("claim does not count the attempt", "claim.sql",
     "attempts = t.attempts + 1", "attempts = t.attempts", 0),
    ("claim takes jobs before their time", "claim_candidates.sql",
     "AND j.run_at <= statement_timestamp()", "", 0),
    ("claim takes jobs out of attempts", "claim_candidates.sql",
     "AND j.attempts < j.max_attempts", "", 0),
    ("claim orders priority ascending", "claim_candidates.sql",
     ORDER, "j.priority ASC, j.expected_at ASC NULLS LAST", 0),
    ("claim puts jobs without a deadline first", "claim_candidates.sql",
     ORDER, "j.priority DESC, j.expected_at ASC NULLS FIRST", 0),
    ("claim returns its rows latest first", "claim.sql",
     "prev_run_at ASC, id ASC", "prev_run_at DESC, id ASC", 0),
    ("claim blocks on locked rows instead of skipping them", "claim_candidates.sql",
     "FOR UPDATE OF j SKIP LOCKED", "FOR UPDATE OF j", 0),
    ("a key held by another job is taken", "claim.sql",
     "k.running_id IS NULL OR k.running_id = c.id", "true OR k.running_id = c.id", 0),
    ("an expired lease keeps its key", "claim_candidates.sql",
     "AND k.running_until > statement_timestamp())", ")", 0),
    ("fail never gives up", "fail.sql",
     "WHEN $6::bool AND attempts < max_attempts THEN 'queued'",
     "WHEN attempts < max_attempts THEN 'queued'", 0),
    ("release counts the attempt", "release.sql",
     "attempts = GREATEST(attempts - 1, 0)", "attempts = attempts", 0),
    ("cancel removes running jobs", "cancel.sql", "target.state <> 'running'", "true", 0),
    ("retry keeps the attempts", "retry.sql",
     "SET state = 'queued', attempts = 0", "SET state = 'queued'", 0),
    ("purge leaves keys held", "purge.sql",
     "UPDATE {keys} SET running_id = NULL", "UPDATE {keys} SET running_id = running_id", 0),
    ("a job out of attempts is not failed", "state.sql",
     "WHEN attempts >= max_attempts THEN 'failed'", "WHEN false THEN 'failed'", 0),
    ("completing keeps no history", "complete.sql",
     "FROM done WHERE keep_for IS NOT NULL", "FROM done WHERE false", 0),
    ("completing saves no key state", "complete.sql",
     "state = COALESCE(done.key_state::jsonb, k.state)", "state = k.state", 0),
    ("a cursor key keeps no pending job", "on_conflict_cursor.sql",
     "ON CONFLICT (queue, key) WHERE cursor AND lease_token IS NULL",
     "ON CONFLICT (queue, key) WHERE cursor AND lease_token IS NULL AND false", 0),
    ("wait sleeps until the latest job", "next_run.sql",
     "THEN min(at) END AS next_at", "THEN max(at) END AS next_at", 0),
    ("extend does not move the lease", "extend.sql",
     "SET run_at = statement_timestamp() + $3::int8", "SET run_at = run_at + 0 * $3::int8", 0),
    # Paused queues, limits, cancels, progress, pruning.
    ("a paused queue is claimed", "claim.sql", "WHERE s.paused IS NOT TRUE", "WHERE true", 0),
    ("a paused queue wakes waiters", "next_run.sql", "AND s.paused IS NOT TRUE", "", 0),
    ("a limited queue takes every candidate", "claim.sql",
     "WHERE c.n <= c.room", "WHERE true", 0),
    ("racing claims share a place", "claim.sql", "FOR UPDATE OF l SKIP LOCKED", "", 0),
    ("a taken place counts as free", "claim.sql",
     "AND (l.until IS NULL OR l.until <= statement_timestamp())", "", 0),
    ("a rate place is held for no time", "claim.sql",
     "ELSE statement_timestamp() + q.rate_per * interval '1 microsecond' END",
     "ELSE statement_timestamp() END", 0),
    ("completing keeps its place", "complete.sql",
     "SET job_id = NULL, token = NULL, until = NULL",
     "SET job_id = l.job_id, token = l.token, until = l.until", 0),
    ("failing keeps its place", "fail.sql",
     "SET job_id = NULL, token = NULL, until = NULL",
     "SET job_id = l.job_id, token = l.token, until = l.until", 0),
    ("releasing keeps its place", "release.sql",
     "SET job_id = NULL, token = NULL, until = NULL",
     "SET job_id = l.job_id, token = l.token, until = l.until", 0),
    ("extend does not move the place", "extend.sql",
     "UPDATE {slots} AS l SET until = e.run_at", "UPDATE {slots} AS l SET until = l.until", 0),
    ("a full queue wakes waiters at once", "next_run.sql",
     "WHERE l.queue = qs.name AND l.kind = 'c'), 'infinity') END",
     "WHERE l.queue = qs.name AND l.kind = 'c' AND false), '-infinity') END", 0),
    ("a cancelled job reads as failed", "state.sql", "ELSE 'cancelled' END", "ELSE 'failed' END", 0),
    ("cancelling tells no holder", "cancel.sql", "chr(1) || stopped.id::text", "'x'", 0),
    ("progress is not saved", "progress.sql", "SET progress = $3::jsonb", "SET progress = progress", 0),
    ("prune ignores the retention", "prune_jobs.sql",
     "COALESCE(s.retention, $1::int8)", "0 * COALESCE(s.retention, $1::int8)", 0),
    ("prune ignores a queue's retention", "prune_jobs.sql",
     "COALESCE(s.retention, $1::int8)", "$1::int8", 0),
    ("a put does not lock its key's record", "insert.sql", "FOR KEY SHARE)", ")", 0),
    ("the key sweep removes keys with jobs", "migration_5.sql",
     "AND NOT EXISTS (SELECT 1 FROM {jobs} AS j WHERE j.queue = u.q",
     "AND true OR NOT EXISTS (SELECT 1 FROM {jobs} AS j WHERE j.queue = u.q", 0),
    ("retry leaves its key forgotten", "retry.sql",
     "WHERE r.key IS NOT NULL", "WHERE false", 0),
]

# Survivors by design: (name, why it breaks no promise).
ALLOWED = {
    "a key held by another job is taken":
        "the claim's second look at the key's row, under its lock: the first look (the "
        "NOT EXISTS of `cand`) and the head-of-key rule already leave at most one candidate "
        "per key in a claim's snapshot, and that job's own row lock orders the claimers, so no "
        "interleaving of claims, completions and expiries reaches it; it stays as defence in "
        "depth",
}


def mutate(text, old, new, nth):
    at = -1
    for _ in range(nth + 1):
        at = text.find(old, at + 1)
        if at < 0:
            sys.exit(f"mutant text not found (occurrence {nth}): {old!r}")
    return text[:at] + new + text[at + len(old):]


# The tests each mutant runs: the sqlx store's conformance suite and PostgreSQL tests, and
# the tests both SQL stores share. Each must exist: a missing one fails every run, and the
# baseline below then stops the script rather than count every mutant as caught.
TESTS = [
    ["-p", "pq-sqlx", "--test", "conformance", "--test", "transactions", "--test", "schema",
     "--test", "connections"],
    ["-p", "pq-examples", "--test", "postgres_statements", "--test", "postgres_trust",
     "--test", "postgres_upkeep"],
]


def tests_fail():
    for args in TESTS:
        run = subprocess.run(["cargo", "test", "-q", *args],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if run.returncode != 0:
            return True
    return False


def main():
    # `--start N` resumes an interrupted run at the Nth mutant (from 0); `--only A|B` runs
    # the mutants whose name holds A or B.
    start = int(sys.argv[sys.argv.index("--start") + 1]) if "--start" in sys.argv else 0
    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else ""
    if tests_fail():
        sys.exit("sql mutants: the tests fail without any mutant; fix them first")
    caught = allowed = survived = 0
    chosen = [m for m in MUTANTS[start:] if any(o in m[0] for o in only.split("|"))]
    for name, file, old, new, nth in chosen:
        path = SQL + file
        original = open(path).read()
        try:
            open(path, "w").write(mutate(original, old, new, nth))
            failed = tests_fail()
        finally:
            open(path, "w").write(original)
        if failed:
            caught += 1
            print(f"sql mutant caught: {name}", flush=True)
        elif name in ALLOWED:
            allowed += 1
            print(f"sql mutant allowed: {name} ({ALLOWED[name]})", flush=True)
        else:
            survived += 1
            print(f"sql mutant SURVIVED: {name}", flush=True)
    print(f"mutants (shared SQL, sqlx store): {caught} caught, {allowed} allowed, "
          f"{survived} survived, of {len(chosen)}")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Hand-written semantic mutants: each breaks one documented promise in one plausible way, in
the memory store (pq-memory/src/lib.rs), the shared SQL (pq-api/src/postgres/sql/*.sql), the
one PostgreSQL store's Rust (pq-api/src/postgres/store.rs) or the worker and the scheduler
(pq-api/src/worker.rs, pq-api/src/periodic.rs). Run through scripts/mutants.sh.

A mutant is caught when a test fails. One that survives must be in ALLOWED with the reason it
breaks no promise, or the run fails. The tests must pass without any mutant first (a
baseline), so a broken test command cannot pass for a caught mutant. The file is restored
after each mutant, whatever happens.

Each mutant names its part (which tests run it: see TESTS), its area (for the score), and
optionally the cases meant to catch it: then only those run (a mutant they miss is reported
as surviving, never as caught by something else), which keeps a run of the newer areas short.

    python3 scripts/mutants.py                       # every mutant
    python3 scripts/mutants.py --part memory         # one part: memory, sql, pgstore, worker
    python3 scripts/mutants.py --area unique         # one area
    python3 scripts/mutants.py --only "text|other"   # the mutants whose name holds a text
    python3 scripts/mutants.py --named               # the mutants that name their cases
    python3 scripts/mutants.py --list                # the mutants, by part and area
"""
import shutil
import subprocess
import sys
from collections import Counter

SQL = "pq-api/src/postgres/sql/"
MEMORY = "pq-memory/src/lib.rs"
PGSTORE = "pq-api/src/postgres/store.rs"
WORKER = "pq-api/src/worker.rs"
PERIODIC = "pq-api/src/periodic.rs"
TOKEN = "WHERE id = $1::int8 AND lease_token = $2::int8 AND state = 'running'"
UNFENCED = "WHERE id = $1::int8 AND state = 'running'"
ORDER = "j.priority DESC, j.expected_at ASC NULLS LAST"

# (part, area, name, file, text, replacement, which occurrence of the text: 0 for the first)
# or the same with a last element: the cases meant to catch it.
# The shared SQL's older mutants, run against the whole sqlx test set.
MUTANTS = [
    ("sql", "leases", "complete ignores the lease token", SQL + "complete.sql", "AND t.lease_token = l.token", "", 0,
     ["stale_lease_changes_nothing", "complete_many_completes_only_held_leases"]),
    ("sql", "leases", "fail ignores the lease token", SQL + "fail.sql", TOKEN, UNFENCED, 0,
     ["stale_lease_changes_nothing"]),
    ("sql", "leases", "extend ignores the lease token", SQL + "extend.sql", TOKEN, UNFENCED, 0,
     ["stale_lease_changes_nothing"]),
    ("sql", "leases", "release ignores the lease token", SQL + "release.sql", TOKEN, UNFENCED, 0,
     ["stale_lease_changes_nothing"]),
    ("sql", "claims", "claim does not count the attempt", SQL + "claim.sql",
     "attempts = t.attempts + 1", "attempts = t.attempts", 0,
     ["expired_lease_is_claimable_again_as_a_new_attempt"]),
    ("sql", "claims", "claim takes jobs before their time", SQL + "claim_candidates.sql",
     "AND j.run_at <= statement_timestamp()", "", 0,
     ["scheduled_job_is_not_claimable_before_its_time"]),
    ("sql", "claims", "claim takes jobs out of attempts", SQL + "claim_candidates.sql",
     "AND (j.attempts < j.max_attempts OR s.id IS NOT NULL)", "", 0,
     ["expired_lease_without_attempts_left_is_failed"]),
    ("sql", "claims", "claim orders priority ascending", SQL + "claim_candidates.sql",
     ORDER, "j.priority ASC, j.expected_at ASC NULLS LAST", 0,
     ["claim_follows_contract_order", "claim_one_at_a_time_follows_contract_order"]),
    ("sql", "claims", "claim puts jobs without a deadline first", SQL + "claim_candidates.sql",
     ORDER, "j.priority DESC, j.expected_at ASC NULLS FIRST", 0,
     ["claim_follows_contract_order", "claim_one_at_a_time_follows_contract_order"]),
    ("sql", "claims", "claim returns its rows latest first", SQL + "claim.sql",
     "prev_run_at ASC, id ASC", "prev_run_at DESC, id ASC", 0,
     ["claim_follows_contract_order", "expired_jobs_are_claimed_in_order_with_waiting_ones"]),
    ("sql", "claims", "claim blocks on locked rows instead of skipping them", SQL + "claim_candidates.sql",
     "FOR UPDATE OF j SKIP LOCKED", "FOR UPDATE OF j", 0),
    ("sql", "keys", "a key held by another job is taken", SQL + "claim_candidates.sql",
     "k.running_id IS NULL OR k.running_id = j.id", "true OR k.running_id = j.id", 0,
     ["serial_key_runs_one_job_at_a_time_in_order", "racing_claimers_never_run_two_jobs_of_one_key"]),
    ("sql", "keys", "an expired lease keeps its key", SQL + "claim_candidates.sql",
     "\n         OR k.running_until <= statement_timestamp())", ")", 0,
     ["expired_lease_frees_the_key", "an_expired_job_without_attempts_left_passes_its_key_on",
      "a_cancelled_running_jobs_key_passes_on_once_its_lease_ends"]),
    ("sql", "leases", "fail never gives up", SQL + "fail.sql",
     "WHEN $6::bool AND attempts < max_attempts THEN 'queued'",
     "WHEN attempts < max_attempts THEN 'queued'", 0,
     ["fail_without_attempts_left_leaves_the_job_failed", "failing_with_give_up_fails_the_job_at_once"]),
    ("sql", "leases", "release counts the attempt", SQL + "release.sql",
     "attempts = GREATEST(attempts - 1, 0)", "attempts = attempts", 0,
     ["release_hands_the_job_back_without_counting_the_attempt"]),
    # Both CTEs touch a running job's row if only `gone` is widened, and PostgreSQL then keeps
    # one of the two changes, which it does not say: the mutant removes it and stops nothing.
    ("sql", "cancel", "cancel removes running jobs", SQL + "cancel.sql",
     "target.state <> 'running'\n  RETURNING t.id\n), stopped AS (\n"
     "  UPDATE {jobs} AS t SET state = 'failed', cancelled_at = statement_timestamp(),\n"
     "         run_at = statement_timestamp()\n"
     "  FROM target WHERE t.id = target.id AND target.state = 'running'",
     "true\n  RETURNING t.id\n), stopped AS (\n"
     "  UPDATE {jobs} AS t SET state = 'failed', cancelled_at = statement_timestamp(),\n"
     "         run_at = statement_timestamp()\n"
     "  FROM target WHERE t.id = target.id AND false", 0,
     ["cancel_stops_a_running_job_and_keeps_it_cancelled"]),
    ("sql", "leases", "retry keeps the attempts", SQL + "retry.sql",
     "SET state = 'queued', attempts = 0", "SET state = 'queued'", 0,
     ["retry_restarts_only_failed_jobs"]),
    ("sql", "keys", "purge leaves keys held", SQL + "purge.sql",
     "UPDATE {keys} SET running_id = NULL", "UPDATE {keys} SET running_id = running_id", 0,
     ["extend_keeps_a_key_held_and_release_and_purge_free_it"]),
    ("sql", "leases", "a job out of attempts is not failed", SQL + "state.sql",
     "WHEN attempts >= max_attempts THEN 'failed'", "WHEN false THEN 'failed'", 0,
     ["expired_lease_without_attempts_left_is_failed"]),
    ("sql", "history", "completing keeps no history", SQL + "complete.sql",
     "FROM done WHERE keep_for IS NOT NULL", "FROM done WHERE false", 0,
     ["completed_job_is_kept_in_history_when_asked"]),
    ("sql", "keys", "completing saves no key state", SQL + "complete.sql",
     "state = COALESCE(done.key_state::jsonb, k.state)", "state = k.state", 0,
     ["key_state_is_handed_on_and_saved_on_complete"]),
    ("sql", "keys", "a cursor key keeps no pending job", SQL + "on_conflict_cursor.sql",
     "ON CONFLICT (queue, key) WHERE cursor AND lease_token IS NULL",
     "ON CONFLICT (queue, key) WHERE cursor AND lease_token IS NULL AND false", 0,
     ["cursor_key_keeps_one_pending_job"]),
    ("sql", "wait", "wait sleeps until the latest job", SQL + "next_run.sql",
     "THEN min(at) END AS next_at", "THEN max(at) END AS next_at", 0,
     ["wait_wakes_for_the_earliest_job_keyed_or_not"]),
    ("sql", "leases", "extend does not move the lease", SQL + "extend.sql",
     "SET run_at = statement_timestamp() + $3::int8", "SET run_at = run_at + 0 * $3::int8", 0,
     ["extend_moves_the_lease_expiry"]),
    # Paused queues, limits, cancels, progress, pruning.
    ("sql", "pause", "a paused queue is claimed", SQL + "claim.sql", "WHERE s.paused IS NOT TRUE", "WHERE true", 0,
     ["a_paused_queue_is_not_claimed_until_resumed"]),
    ("sql", "pause", "a paused queue wakes waiters", SQL + "next_run.sql", "AND s.paused IS NOT TRUE", "", 0,
     ["a_paused_queue_is_not_claimed_until_resumed"]),
    ("sql", "limits", "a limited queue takes every candidate", SQL + "claim.sql",
     "WHERE c.n <= c.room", "WHERE true", 0,
     ["concurrency_limit_caps_running_jobs"]),
    ("sql", "limits", "racing claims share a place", SQL + "claim.sql", "FOR UPDATE OF l SKIP LOCKED", "", 0,
     ["racing_claimers_never_exceed_the_concurrency_limit"]),
    ("sql", "limits", "a taken place counts as free", SQL + "claim.sql",
     "AND (l.until IS NULL OR l.until <= statement_timestamp())", "", 0,
     ["concurrency_limit_caps_running_jobs"]),
    ("sql", "limits", "a rate place is held for no time", SQL + "claim.sql",
     "ELSE statement_timestamp() + q.rate_per * interval '1 microsecond' END",
     "ELSE statement_timestamp() END", 0,
     ["rate_limit_caps_starts_per_period"]),
    ("sql", "limits", "completing keeps its place", SQL + "complete.sql",
     "SET job_id = NULL, token = NULL, until = NULL",
     "SET job_id = l.job_id, token = l.token, until = l.until", 0,
     ["concurrency_limit_caps_running_jobs"]),
    ("sql", "limits", "failing keeps its place", SQL + "fail.sql",
     "SET job_id = NULL, token = NULL, until = NULL",
     "SET job_id = l.job_id, token = l.token, until = l.until", 0,
     ["concurrency_limit_caps_running_jobs"]),
    ("sql", "limits", "releasing keeps its place", SQL + "release.sql",
     "SET job_id = NULL, token = NULL, until = NULL",
     "SET job_id = l.job_id, token = l.token, until = l.until", 0,
     ["concurrency_limit_caps_running_jobs"]),
    ("sql", "limits", "extend does not move the place", SQL + "extend.sql",
     "UPDATE {slots} AS l SET until = e.run_at", "UPDATE {slots} AS l SET until = l.until", 0,
     ["concurrency_limit_caps_running_jobs"]),
    ("sql", "limits", "a full queue wakes waiters at once", SQL + "next_run.sql",
     "WHERE l.queue = qs.name AND l.kind = 'c'), 'infinity') END",
     "WHERE l.queue = qs.name AND l.kind = 'c' AND false), '-infinity') END", 0,
     ["concurrency_limit_caps_running_jobs"]),
    ("sql", "cancel", "a cancelled job reads as failed", SQL + "state.sql", "ELSE 'cancelled' END", "ELSE 'failed' END", 0,
     ["cancel_stops_a_running_job_and_keeps_it_cancelled"]),
    ("sql", "cancel", "cancelling tells no holder", SQL + "cancel.sql", "chr(1) || stopped.id::text", "'x'", 0,
     ["cancelling_a_running_job_tells_its_handler_within_a_second"]),
    ("sql", "progress", "progress is not saved", SQL + "progress.sql", "SET progress = $3::jsonb", "SET progress = progress", 0,
     ["progress_is_kept_across_attempts"]),
    ("sql", "prune", "prune ignores the retention", SQL + "prune_jobs.sql",
     "COALESCE(s.retention, $1::int8)", "0 * COALESCE(s.retention, $1::int8)", 0,
     ["prune_removes_ended_jobs_after_their_retention"]),
    ("sql", "prune", "prune ignores a queue's retention", SQL + "prune_jobs.sql",
     "COALESCE(s.retention, $1::int8)", "$1::int8", 0,
     ["prune_removes_ended_jobs_after_their_retention"]),
    ("sql", "keys", "a put does not lock its key's record", SQL + "insert.sql", "FOR KEY SHARE)", ")", 0,
     ["racing_puts_and_prunes_lose_no_key"]),
    ("sql", "prune", "the key sweep removes keys with jobs", SQL + "migration_5.sql",
     "AND NOT EXISTS (SELECT 1 FROM {jobs} AS j WHERE j.queue = u.q",
     "AND true OR NOT EXISTS (SELECT 1 FROM {jobs} AS j WHERE j.queue = u.q", 0,
     ["prune_forgets_idle_keys_only", "racing_puts_and_prunes_lose_no_key"]),
    ("sql", "keys", "retry leaves its key forgotten", SQL + "retry.sql",
     "WHERE r.key IS NOT NULL", "WHERE false", 0,
     ["prune_forgets_idle_keys_only"]),
]

# The newer areas: unique jobs, periodic jobs, pauses, concurrency and rate limits, cancelling
# running jobs, pruning and retention, progress, snoozes, time limits, throughput, listings.
MUTANTS += [
    # Unique jobs.
    ("memory", "unique", "a period's key put again keeps the ended period", MEMORY,
     "inner.periods.insert(held, (id, until));",
     "inner.periods.entry(held).or_insert((id, until));", 0,
     ["a_unique_key_put_after_its_period_ended_is_held_again"]),
    ("memory", "unique", "a cancelled running job keeps its unique key", MEMORY,
     ".filter(|e| e.job.queue == queue && e.stored != Stored::Failed)",
     ".filter(|e| e.job.queue == queue && (e.stored != Stored::Failed || e.cancelled))", 0,
     ["a_cancelled_or_lapsed_unique_job_frees_its_key"]),
    ("memory", "unique", "a job out of attempts keeps its unique key", MEMORY,
     ".filter(|e| e.state(now) != JobState::Failed)", ".filter(|_| true)", 0,
     ["a_cancelled_or_lapsed_unique_job_frees_its_key"]),
    ("memory", "unique", "pruning forgets periods that run on", MEMORY,
     "inner.periods.retain(|_, &mut (_, until)| until > now);\n        let n =",
     "inner.periods.clear();\n        let n =", 0,
     ["pruning_keeps_unique_periods_that_run_on"]),
    ("sql", "unique", "a period's key put again keeps the ended period", SQL + "insert_unique.sql",
     "ON CONFLICT (queue, key) DO UPDATE SET job_id = EXCLUDED.job_id, until = EXCLUDED.until",
     "ON CONFLICT (queue, key) DO NOTHING", 0,
     ["a_unique_key_put_after_its_period_ended_is_held_again"]),
    ("sql", "unique", "a cancelled running job keeps its unique key", SQL + "migration_4.sql",
     "j.unique_key = p.k AND j.state <> 'failed'",
     "j.unique_key = p.k AND (j.state <> 'failed' OR j.cancelled_at IS NOT NULL)", 0,
     ["a_cancelled_or_lapsed_unique_job_frees_its_key"]),
    ("sql", "unique", "a job out of attempts keeps its unique key", SQL + "migration_4.sql",
     "AND (j.attempts < j.max_attempts\n            OR (j.state = 'running' AND j.run_at > statement_timestamp()))",
     "", 0, ["a_cancelled_or_lapsed_unique_job_frees_its_key"]),
    ("sql", "unique", "the clean-up forgets periods that run on", SQL + "cleanup_history.sql",
     "DELETE FROM {unique} WHERE until <= statement_timestamp()",
     "DELETE FROM {unique} WHERE true", 0, ["pruning_keeps_unique_periods_that_run_on"]),
    # Periodic jobs.
    ("worker", "periodic", "a missed tick is made up unasked", PERIODIC,
     "Missed::Skip => e.next_after(start)", "Missed::Skip => e.last_at_or_before(start)", 0,
     ["a_missed_tick_is_made_up_only_when_asked"]),
    ("worker", "periodic", "a tick's job is not unique", PERIODIC,
     "Ok((self.job)()?.unique(key, Unique::For(self.hold(tick))))",
     "Ok((self.job)()?.unique(key, Unique::For(Duration::from_micros(1))))", 0,
     ["schedulers_put_each_tick_once"]),
    ("worker", "periodic", "a refused tick is put late instead of the next", PERIODIC,
     "let tick = entry.last_at_or_before(now).unwrap_or(tick).max(tick);",
     "let tick = tick.max(tick);", 0, ["a_tick_the_store_refused_gives_way_to_the_next"]),
    # Paused queues.
    ("memory", "pause", "a paused queue is claimed", MEMORY,
     "Some(c) if c.paused => Some(0),", "Some(c) if c.paused => None,", 0,
     ["a_paused_queue_is_not_claimed_until_resumed"]),
    ("memory", "pause", "a paused queue wakes waiters", MEMORY,
     "if config.paused {\n            return None;", "if config.paused {\n            return Some(now);", 0,
     ["a_paused_queue_is_not_claimed_until_resumed"]),
    ("memory", "pause", "resuming wakes no waiter", MEMORY,
     "                inner.configs.insert(queue.to_owned(), config);\n            }\n        }\n        self.wake.notify_waiters();",
     "                inner.configs.insert(queue.to_owned(), config);\n            }\n        }", 0,
     ["a_paused_queue_is_not_claimed_until_resumed"]),
    ("sql", "pause", "resuming wakes no waiter", SQL + "configure_queue.sql",
     "SELECT count(*)::int8 AS n FROM s, LATERAL pg_notify('{channel_name}', s.queue) AS told",
     "SELECT count(*)::int8 AS n FROM s", 0, ["a_paused_queue_is_not_claimed_until_resumed"]),
    # Concurrency and rate limits.
    ("memory", "limits", "a queue with both limits keeps only its concurrency limit", MEMORY,
     "c.into_iter().chain(r).min()", "c.or(r)", 0,
     ["a_queue_with_both_limits_keeps_to_the_tighter"]),
    ("memory", "limits", "cancelling a running job frees its place", MEMORY,
     "        // Its key and its place stay taken until its lease runs out, as in the SQL stores.\n",
     "        if let Some(e) = inner.jobs.get(&id.0) {\n"
     "            let (queue, token) = (e.job.queue.clone(), e.token);\n"
     "            inner.unseat(&queue, id.0, token);\n        }\n", 0,
     ["a_cancelled_running_job_keeps_its_place_until_its_lease_ends"]),
    ("sql", "limits", "a queue with both limits keeps only its concurrency limit", SQL + "claim.sql",
     "CASE WHEN q.rate IS NOT NULL\n         THEN",
     "CASE WHEN q.rate IS NOT NULL AND q.concurrency IS NULL\n         THEN", 0,
     ["a_queue_with_both_limits_keeps_to_the_tighter"]),
    ("sql", "limits", "cancelling a running job frees its place", SQL + "cancel.sql",
     "), stopped AS (",
     "), unseat AS (\n  UPDATE {slots} AS l SET job_id = NULL, token = NULL, until = NULL\n"
     "  FROM target WHERE l.queue = target.queue AND l.kind = 'c' AND l.job_id = target.id\n"
     "), stopped AS (", 0,
     ["a_cancelled_running_job_keeps_its_place_until_its_lease_ends"]),
    ("pgstore", "limits", "a rate's period is kept in milliseconds", PGSTORE,
     "r.map_or(0, |r| micros(r.per)),", "r.map_or(0, |r| micros(r.per) / 1000),", 0,
     ["a_queue_with_both_limits_keeps_to_the_tighter"]),
    ("pgstore", "limits", "a queue's rate limit is not listed", PGSTORE,
     "(count(rate), span(per))", "(count(rate), span(per).filter(|_| false))", 0,
     ["a_queue_with_both_limits_keeps_to_the_tighter"]),
    # Cancelling running jobs.
    ("memory", "cancel", "a cancel tells no holder", MEMORY,
     "let _ = self.cancels.send(id.0);", "let _ = id;", 0,
     ["cancelling_a_running_job_tells_its_handler_within_a_second"]),
    ("memory", "cancel", "a cancelled running job frees its key at once", MEMORY,
     "        // Its key and its place stay taken until its lease runs out, as in the SQL stores.\n",
     "        if let Some(key) = inner.jobs.get(&id.0).and_then(Entry::key_id) {\n"
     "            inner.free_key(Some(key), id.0, None);\n        }\n", 0,
     ["a_cancelled_running_jobs_key_passes_on_once_its_lease_ends"]),
    ("memory", "cancel", "a cancelled running job is removed", MEMORY,
     "if state != JobState::Running {\n            inner.remove(id.0);",
     "if state != JobState::Scheduled {\n            inner.remove(id.0);", 0,
     ["cancel_stops_a_running_job_and_keeps_it_cancelled"]),
    ("worker", "cancel", "the worker ignores the cancel hint", WORKER,
     "() = &mut hint => {", "() = &mut hint, if false => {", 0,
     ["cancelling_a_running_job_tells_its_handler_within_a_second"]),
    # Pruning and retention.
    ("memory", "prune", "a failed job's retention counts from its put", MEMORY,
     "&& self.job.run_at < cutoff", "&& self.job.created_at < cutoff", 0,
     ["prune_counts_retention_from_when_a_job_ended"]),
    ("memory", "prune", "pruning keeps history past its keep_until", MEMORY,
     "inner.history.retain(|_, f| f.keep_until > now);\n        let kept",
     "inner.history.retain(|_, _| true);\n        let kept", 0,
     ["prune_removes_history_records_past_their_keep_until"]),
    ("memory", "prune", "pruning ignores a queue's retention", MEMORY,
     ".and_then(|c| c.retention)", ".and_then(|_| None::<Duration>)", 0,
     ["prune_removes_ended_jobs_after_their_retention"]),
    ("sql", "prune", "a failed job's retention counts from its put", SQL + "prune_jobs.sql",
     "AND j.run_at < statement_timestamp()", "AND j.created_at < statement_timestamp()", 0,
     ["prune_counts_retention_from_when_a_job_ended"]),
    ("pgstore", "prune", "pruning keeps history past its keep_until", PGSTORE,
     "let history = self.cleanup_history().await?;", "let history = 0;", 0,
     ["prune_removes_history_records_past_their_keep_until"]),
    # Progress.
    ("memory", "progress", "progress is not saved", MEMORY,
     "inner.update(lease.job_id.0, |e| e.job.progress = Some(progress));",
     "let _ = progress;", 0, ["progress_is_kept_across_attempts"]),
    ("memory", "progress", "a stale lease reports progress", MEMORY,
     "        inner.held(lease)?;\n        inner.update(lease.job_id.0, |e| e.job.progress",
     "        let _ = inner.held(lease);\n        inner.update(lease.job_id.0, |e| e.job.progress", 0,
     ["progress_is_kept_across_attempts"]),
    ("memory", "progress", "a failed attempt forgets the progress", MEMORY,
     "e.job.last_error = Some(failure.recorded_error().into_owned());",
     "e.job.last_error = Some(failure.recorded_error().into_owned());\n                e.job.progress = None;", 0,
     ["progress_is_kept_across_attempts"]),
    ("sql", "progress", "a failed attempt forgets the progress", SQL + "fail.sql",
     "    last_error = $5::text\n", "    last_error = $5::text, progress = NULL\n", 0,
     ["progress_is_kept_across_attempts"]),
    ("sql", "progress", "a stale lease reports progress", SQL + "progress.sql",
     "WHERE id = $1::int8 AND lease_token = $2::int8 AND state = 'running'",
     "WHERE id = $1::int8 AND state = 'running'", 0, ["progress_is_kept_across_attempts"]),
    # Snoozes.
    ("memory", "snooze", "a snooze with a delay keeps the key", MEMORY,
     "inner.free_key(key, lease.job_id.0, None);",
     "if delay.is_zero() {\n                inner.free_key(key, lease.job_id.0, None);\n            }", 1,
     ["a_snoozed_job_frees_its_key_and_its_place"]),
    ("memory", "snooze", "a snooze with a delay keeps the place", MEMORY,
     "inner.unseat(&queue, lease.job_id.0, Some(lease.token));",
     "if delay.is_zero() {\n                inner.unseat(&queue, lease.job_id.0, Some(lease.token));\n            }", 1,
     ["a_snoozed_job_frees_its_key_and_its_place"]),
    ("memory", "snooze", "a snooze ignores its delay", MEMORY,
     "e.job.run_at = at;", "e.job.run_at = now;", 0,
     ["snoozed_job_waits_without_counting_the_attempt"]),
    ("sql", "snooze", "a snooze with a delay keeps the key", SQL + "release.sql",
     "k.running_id = r.id\n", "k.running_id = r.id AND $3::int8 = 0\n", 0,
     ["a_snoozed_job_frees_its_key_and_its_place"]),
    ("sql", "snooze", "a snooze with a delay keeps the place", SQL + "release.sql",
     "l.token = r.lease_token\n", "l.token = r.lease_token AND $3::int8 = 0\n", 0,
     ["a_snoozed_job_frees_its_key_and_its_place"]),
    ("pgstore", "snooze", "a snooze ignores its delay", PGSTORE,
     "Param::Int8(micros(delay)),", "Param::Int8(0),", 0,
     ["snoozed_job_waits_without_counting_the_attempt"]),
    # Time limits.
    ("worker", "timeouts", "a task's time limit overrides the job's", WORKER,
     ".timeout\n            .or(entry.timeout)", ".timeout\n            .xor(entry.timeout).or(entry.timeout)", 0,
     ["a_jobs_own_time_limit_overrides_its_tasks_either_way"]),
    ("worker", "timeouts", "a handler succeeding in the grace after its limit fails", WORKER,
     "if self.aborting || self.timed_out.is_some() =>", "if self.aborting =>", 0,
     ["a_handler_that_succeeds_in_the_grace_after_its_time_limit_completes_its_job"]),
    ("worker", "timeouts", "a handler past its limit is not told", WORKER,
     "cancel.cancel(Cancelled::Timeout);", "", 0,
     ["a_handler_past_its_time_limit_is_told_and_its_attempt_fails"]),
    # Throughput.
    ("memory", "throughput", "the window starts `since` ago, not at its minute", MEMORY,
     ".unwrap_or(DateTime::<Utc>::MIN_UTC)\n            .duration_trunc(TimeDelta::minutes(1))",
     ".unwrap_or(DateTime::<Utc>::MIN_UTC)\n            .duration_trunc(TimeDelta::microseconds(1))", 0,
     ["throughput_includes_the_minute_since_ago"]),
    ("memory", "throughput", "a report replaces the minute's count", MEMORY,
     "n.0 = n.0.saturating_add(t.completed);", "n.0 = t.completed;", 0,
     ["throughput_adds_up_what_workers_report"]),
    ("sql", "throughput", "the window starts `since` ago, not at its minute", SQL + "throughput.sql",
     "WHERE minute >= date_trunc('minute', statement_timestamp() - $1::int8 * interval '1 microsecond')",
     "WHERE minute >= statement_timestamp() - $1::int8 * interval '1 microsecond'", 0,
     ["throughput_includes_the_minute_since_ago"]),
    ("sql", "throughput", "a report replaces the minute's count", SQL + "record_throughput.sql",
     "SET completed = t.completed + excluded.completed", "SET completed = excluded.completed", 0,
     ["throughput_adds_up_what_workers_report"]),
    ("worker", "throughput", "a stopping worker drops its last report", WORKER,
     "if !self.report_every.is_zero() {\n            report(", "if false {\n            report(", 0,
     ["a_stopping_worker_reports_what_it_finished"]),
    # Listings: jobs and queues.
    ("memory", "listings", "a page includes the job it starts before", MEMORY,
     "found.sort_unstable_by_key(|e| std::cmp::Reverse(e.job.id));",
     "found.sort_unstable_by_key(|e| e.job.id);", 0,
     ["list_jobs_lists_newest_first_by_queue_and_state"]),
    ("memory", "listings", "a queue's oldest ready job is its newest", MEMORY,
     "a.max(age)", "a.min(age)", 0, ["queues_tell_how_long_the_oldest_ready_job_waited"]),
    ("memory", "listings", "a list ignores its limit", MEMORY,
     ".take(limit).map(|e| e.view(now))", ".map(|e| e.view(now))", 0,
     ["list_jobs_lists_newest_first_by_queue_and_state"]),
    ("sql", "listings", "a page includes the job it starts before", SQL + "list_jobs.sql",
     "AND id < $3::int8", "AND id <= $3::int8", 0,
     ["list_jobs_lists_newest_first_by_queue_and_state"]),
    ("sql", "listings", "a list ignores its state filter", SQL + "list_jobs.sql",
     "($2::text = '' OR {state} = $2::text)", "($2::text = '' OR true)", 0,
     ["list_jobs_lists_newest_first_by_queue_and_state"]),
]

# Survivors by design: (name, why it breaks no promise).
ALLOWED = {}


def mutate(text, old, new, nth):
    at = -1
    for _ in range(nth + 1):
        at = text.find(old, at + 1)
        if at < 0:
            sys.exit(f"mutant text not found (occurrence {nth}): {old!r}")
    return text[:at] + new + text[at + len(old):]


# The tests each part's mutants run. The SQL and the PostgreSQL store's Rust: the sqlx store's
# conformance suite and PostgreSQL tests, and the tests both SQL stores share; the memory
# store, the worker and the scheduler: the conformance suite on the memory store (whose
# worker cases are the ones every store runs). Each must exist: a missing one fails every
# run, and the baseline below then stops the script rather than count every mutant as caught.
SQL_TESTS = [
    ["-p", "pq-sqlx", "--test", "conformance", "--test", "transactions", "--test", "schema",
     "--test", "connections"],
    ["-p", "pq-examples", "--test", "postgres_statements", "--test", "postgres_trust",
     "--test", "postgres_upkeep"],
]
MEMORY_TESTS = [["-p", "pq-memory", "--test", "conformance"]]
TESTS = {"sql": SQL_TESTS, "pgstore": SQL_TESTS, "memory": MEMORY_TESTS, "worker": MEMORY_TESTS}
# A mutant that names its cases runs them in the first test target of its part alone.
CASE_TESTS = {"sql": SQL_TESTS[0][:4], "pgstore": SQL_TESTS[0][:4],
              "memory": MEMORY_TESTS[0], "worker": MEMORY_TESTS[0]}


def commands(mutant):
    part, cases = mutant[0], (mutant[7] if len(mutant) > 7 else None)
    if cases:
        return [CASE_TESTS[part] + ["--", *cases]]
    return TESTS[part]


def tests_fail(cmds):
    for args in cmds:
        run = subprocess.run(["cargo", "test", "-q", *args],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if run.returncode != 0:
            return True
    return False


def arg(name):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else ""


def main():
    part, area, only = arg("--part"), arg("--area"), arg("--only")
    chosen = [m for m in MUTANTS
              if (not part or m[0] == part) and (not area or m[1] == area)
              and any(o in m[2] for o in only.split("|"))
              and (len(m) > 7 or "--named" not in sys.argv)]
    if "--list" in sys.argv:
        for m in chosen:
            mutate(open(m[3]).read(), m[4], m[5], m[6])  # its text is where it says
            print(f"{m[0]:8} {m[1]:10} {m[2]}")
        print(f"{len(chosen)} mutants")
        return 0
    # Every command the chosen mutants run must pass first, each once.
    baseline = []
    for m in chosen:
        for cmd in commands(m):
            if cmd not in baseline:
                baseline.append(cmd)
    for cmd in baseline:
        if tests_fail([cmd]):
            sys.exit(f"mutants: the tests fail without any mutant; fix them first: {cmd}")
    score = Counter()
    survived = 0
    for m in chosen:
        kind, what, name, path, old, new, nth = m[:7]
        original = open(path).read()
        try:
            open(path, "w").write(mutate(original, old, new, nth))
            failed = tests_fail(commands(m))
        finally:
            open(path, "w").write(original)
        if failed:
            verdict = "caught"
        elif name in ALLOWED:
            verdict = "allowed"
            print(f"  ({ALLOWED[name]})")
        else:
            verdict = "SURVIVED"
            survived += 1
        score[(kind, what, verdict)] += 1
        print(f"mutant {verdict}: [{kind} {what}] {name}", flush=True)
    print("score (part, area: caught / allowed / survived):")
    for kind, what in sorted({(k, w) for k, w, _ in score}):
        row = [score[(kind, what, v)] for v in ("caught", "allowed", "SURVIVED")]
        print(f"  {kind:8} {what:10} {row[0]} / {row[1]} / {row[2]}")
    total = Counter(v for (_, _, v), n in score.items() for _ in range(n))
    print(f"mutants: {total['caught']} caught, {total['allowed']} allowed, "
          f"{total['SURVIVED']} survived, of {len(chosen)}")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())

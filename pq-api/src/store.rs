//! The `QueueStore` trait: the contract every backend keeps.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::Result;
use serde_json::Value;

use crate::job::{
    Claim, ClaimedJob, Done, Failure, FinishedJob, Job, JobId, JobState, Lease, NewJob, QueueStats,
};
use crate::queue::{JobFilter, Pruned, QueueInfo, QueueSetting, Tally, Throughput};

/// A store of jobs: all queues in one place, claimed under leases.
///
/// This trait's docs are the specification; `pq-conformance` checks every `# Contract` clause
/// and every backend runs it. Each case is named after the clause it enforces (in
/// `pq_conformance::{put, claim, lease, admin, wait, concurrency, control}`).
///
/// Conveniences (single `put`, `complete`, blocking `get`, a job `Stream`) live in
/// [`QueueStoreExt`](crate::QueueStoreExt), implemented for every store. The trait is object
/// safe: keep an `Arc<dyn QueueStore>` and swap the memory store in for tests.
///
/// Time: every operation that depends on "now" uses the store's clock (the database server's
/// for the SQL stores), at microsecond resolution.
#[async_trait]
pub trait QueueStore: Send + Sync + Debug {
    /// Enqueues jobs and returns their ids, in the order given.
    ///
    /// # Contract
    /// - Atomic: if any job is invalid ([`NewJob::validate`]) or the store fails, none is
    ///   stored, and the error is returned (`put_many_is_atomic`). A payload holding a NUL
    ///   character is invalid (`put_rejects_payloads_holding_nul_characters`).
    /// - A job without `run_at` is ready at once; one whose `run_at` lies ahead is
    ///   [`JobState::Scheduled`] and not claimable until then (`scheduled_job_is_not_claimable_before_its_time`).
    ///   Relative times count from the store's clock at the put; every time option takes a
    ///   duration or datetime string as well ([`IntoWhen`](crate::IntoWhen);
    ///   `delay_strings_schedule_jobs`, `time_options_take_the_same_forms`), and one that is no
    ///   time refuses the job.
    /// - Each job starts with `attempts = 0`; ids are unique within the store
    ///   (`put_returns_distinct_ids_of_ready_jobs`), returned in the order given
    ///   (`put_many_returns_ids_in_the_order_given`).
    /// - Waiters on the job's queue ([`QueueStore::wait`]) are woken (`wait_wakes_when_a_job_is_put`).
    /// - A job with a cursor key, put while a job of its queue with that key is pending (put
    ///   and never claimed), adds nothing: its id is the pending job's
    ///   (`cursor_key_keeps_one_pending_job`), also among the jobs of one call and between
    ///   concurrent callers (`concurrent_puts_with_one_cursor_key_make_one_job`).
    /// - A job with a uniqueness key ([`NewJob::unique`]), put while a job of its queue holds
    ///   that key, adds nothing: its id is the holder's. A job holds its key while pending
    ///   (`a_unique_job_holds_its_key_while_pending`), while pending or running
    ///   (`a_unique_job_holds_its_key_while_active`), or for a period after it was put,
    ///   completed or not (`a_unique_job_holds_its_key_for_its_period`), as its scope says;
    ///   also among the jobs of one call and between concurrent callers
    ///   (`racing_puts_of_a_unique_key_add_one_job`). A key put again once its period ended is
    ///   held by the new job for a period of its own
    ///   (`a_unique_key_put_after_its_period_ended_is_held_again`); a job held while active
    ///   frees its key once cancelled, or once its last lease ran out with no attempts left
    ///   (`a_cancelled_or_lapsed_unique_job_frees_its_key`).
    /// - A job keeps its time limit ([`NewJob::timeout`]) to the microsecond
    ///   (`a_job_keeps_its_time_limit`).
    async fn put_many(&self, jobs: Vec<NewJob>) -> Result<Vec<JobId>>;

    /// Claims up to `claim.limit` claimable jobs from `claim.queues`, each under a lease of
    /// `claim.lease`.
    ///
    /// # Contract
    /// - Claimable means: in a queue that is not paused, within its limits
    ///   ([`QueueStore::configure_queue`]), and ready (its `run_at` has passed and it is
    ///   neither failed nor cancelled), or running
    ///   under a lease that has expired while attempts are left
    ///   (`expired_lease_is_claimable_again_as_a_new_attempt`,
    ///   `expired_lease_without_attempts_left_is_failed`).
    /// - Order, in every backend: priority descending, then `expected_at` ascending with
    ///   jobs without one last, then `run_at` ascending, then id ascending; the returned jobs
    ///   are in that order (`claim_follows_contract_order`).
    /// - A job is never handed to two claimers while its lease is live, however many claim at
    ///   once (`claimed_job_is_not_claimed_again_while_its_lease_is_live`,
    ///   `racing_claimers_claim_every_job_exactly_once`).
    /// - Each claim increments `attempts`, sets the job [`JobState::Running`] with `run_at`
    ///   at the lease expiry, and issues a new [`Lease`] token that fences off every earlier
    ///   holder (`stale_lease_changes_nothing`).
    /// - Serial and cursor keys: a job with a key is claimable only while no other job of its
    ///   queue with that key runs under a live lease, and only if it comes first in claim order
    ///   among that key's claimable jobs; so one claim hands out at most one job per key
    ///   (`serial_key_runs_one_job_at_a_time_in_order`,
    ///   `racing_claimers_never_run_two_jobs_of_one_key`). Completing, failing or releasing
    ///   the job, or its lease expiring, frees the key (`expired_lease_frees_the_key`).
    ///   Jobs without a key, and other keys, are not held up (`keys_do_not_hold_up_other_jobs`).
    /// - A keyed job comes with its key's state ([`ClaimedJob::key_state`],
    ///   `key_state_is_handed_on_and_saved_on_complete`).
    /// - A stored job that cannot be decoded (a row written by plain SQL, or before pq's
    ///   checks, holding a value pq cannot read) is not handed out: the claim fails it at once,
    ///   giving up, with `last_error` saying why, and returns the rest of the batch
    ///   ([`Undecodable`](crate::postgres::Undecodable); the PostgreSQL stores' tests check it).
    /// - Returns an empty list, not an error, when nothing is claimable
    ///   (`claim_of_nothing_returns_empty`).
    /// - An invalid claim (no queues, bad queue name, limit 0 or above
    ///   [`MAX_CLAIM_LIMIT`](crate::MAX_CLAIM_LIMIT), a zero lease) is rejected
    ///   (`claim_rejects_invalid_requests`).
    ///
    /// Durability: a store may acknowledge a claim before it is durable, since losing one
    /// loses nothing the queue promises: after a crash the job is claimable again and runs
    /// again, as after an expired lease (delivery is at least once). pq's PostgreSQL stores
    /// do: their own claims commit without waiting for the WAL flush (see
    /// [`Statements::claim`](crate::postgres::Statements::claim)); claims in a caller's transaction
    /// commit as that transaction does. Puts, completions and failures are durable when they
    /// return.
    async fn claim(&self, claim: &Claim) -> Result<Vec<ClaimedJob>>;

    /// Completes jobs: each one whose lease is still held is removed.
    ///
    /// # Contract
    /// - Returns the ids of the jobs completed; a job whose lease was lost (reclaimed by
    ///   another holder, or the job is gone) is left untouched and is not in the list
    ///   (`complete_many_completes_only_held_leases`).
    /// - A lease that expired but whose job nobody has reclaimed yet still completes it
    ///   (`expired_but_unreclaimed_lease_still_completes_its_job`).
    /// - A job that still holds its key frees it and, if [`Done::key_state`] is set, saves it
    ///   as the key's state (`key_state_is_handed_on_and_saved_on_complete`).
    /// - A job put with [`NewJob::keep_history`] leaves a [`FinishedJob`] record with
    ///   [`Done::result`] (`completed_job_is_kept_in_history_when_asked`).
    /// - A completion that cannot be kept ([`Done::validate`]: a NUL character in its result
    ///   or key state) gets [`Error::InvalidArgument`](crate::Error::InvalidArgument) and no
    ///   job of the call changes (`completions_and_progress_holding_nul_characters_are_rejected`).
    async fn complete_many(&self, done: &[Done]) -> Result<Vec<JobId>>;

    /// Records a failed attempt.
    ///
    /// # Contract
    /// - With attempts left (`attempts < max_attempts`) and `failure.give_up` unset, the job
    ///   waits for a retry at
    ///   `failure.retry_at` (at once if `None`) and the new state is returned
    ///   ([`JobState::Scheduled`] or [`JobState::Ready`]; `fail_with_attempts_left_schedules_a_retry`).
    /// - Otherwise (out of attempts, or giving up: `failing_with_give_up_fails_the_job_at_once`)
    ///   it becomes [`JobState::Failed`], stays for inspection, and is never claimed again
    ///   until [`QueueStore::retry`] (`fail_without_attempts_left_leaves_the_job_failed`).
    /// - Either way `last_error` records `failure.error`, each NUL character replaced by
    ///   U+FFFD ([`Failure::recorded_error`]; `a_failure_message_holding_nul_characters_is_recorded`).
    /// - A lost lease gets [`Error::LeaseLost`](crate::Error::LeaseLost) and changes nothing
    ///   (`stale_lease_changes_nothing`).
    async fn fail(&self, lease: &Lease, failure: Failure) -> Result<JobState>;

    /// Extends a held lease: it now expires `lease` after the store's current time
    /// (a heartbeat). Returns the new expiry.
    ///
    /// # Contract
    /// - A lost lease gets [`Error::LeaseLost`](crate::Error::LeaseLost) and changes nothing.
    /// - A zero lease is rejected (`extend_moves_the_lease_expiry`).
    /// - A key stays held by the job while its lease is extended
    ///   (`extend_keeps_a_key_held_and_release_and_purge_free_it`).
    async fn extend(&self, lease: &Lease, lease_for: Duration) -> Result<DateTime<Utc>>;

    /// Hands a job back without counting the attempt: it is ready at once (a worker stopping
    /// in abort mode does this).
    ///
    /// # Contract
    /// - `attempts` goes back down by one; the job is claimable at once
    ///   (`release_hands_the_job_back_without_counting_the_attempt`), and waiters are woken
    ///   (`wait_wakes_when_a_job_is_released_or_retried`).
    /// - A lost lease gets [`Error::LeaseLost`](crate::Error::LeaseLost) and changes nothing.
    async fn release(&self, lease: &Lease) -> Result<()>;

    /// Hands a job back without counting the attempt, claimable again `delay` from now (the
    /// worker does this when the store failed under a handler, or for a task it does not
    /// know). [`QueueStore::release`] is a snooze of zero.
    ///
    /// # Contract
    /// - `attempts` goes back down by one; the job is [`JobState::Scheduled`] until `delay`
    ///   has passed, then claimable (`snoozed_job_waits_without_counting_the_attempt`).
    /// - Its key, and its place under the queue's concurrency limit, are freed at once, as by
    ///   a release, whatever the delay (`a_snoozed_job_frees_its_key_and_its_place`).
    /// - A lost lease gets [`Error::LeaseLost`](crate::Error::LeaseLost) and changes nothing;
    ///   a `delay` above [`MAX_DURATION`](crate::MAX_DURATION) is rejected.
    async fn snooze(&self, lease: &Lease, delay: Duration) -> Result<()>;

    /// Cancels a job: one that is not running is removed; a running one is stopped.
    ///
    /// # Contract
    /// - Scheduled, ready, failed and cancelled jobs are removed, and so is a job whose lease
    ///   expired (`cancel_removes_waiting_and_failed_jobs`, `cancel_removes_a_job_whose_lease_expired`).
    /// - A running job (live lease) becomes [`JobState::Cancelled`], kept for inspection and
    ///   pruned as failed jobs are ([`QueueStore::prune`]); its lease can no longer complete,
    ///   fail, extend or release it: extending it gets
    ///   [`Error::Cancelled`](crate::Error::Cancelled), so its holder learns at its next
    ///   heartbeat, or sooner through [`QueueStore::cancel_requested`]
    ///   (`cancel_stops_a_running_job_and_keeps_it_cancelled`). Its key and its place under
    ///   the queue's concurrency limit stay taken until its lease runs out, so that nothing
    ///   runs beside a handler still stopping
    ///   (`a_cancelled_running_jobs_key_passes_on_once_its_lease_ends`,
    ///   `a_cancelled_running_job_keeps_its_place_until_its_lease_ends`).
    /// - An unknown id gets [`Error::NotFound`](crate::Error::NotFound)
    ///   (`unknown_job_ids_are_not_found`).
    async fn cancel(&self, id: JobId) -> Result<()>;

    /// Resolves when the store hears that job `id` may have been cancelled while running: a
    /// hint, which may come spuriously, for the job's holder to extend its lease at once and
    /// so learn for sure ([`Error::Cancelled`](crate::Error::Cancelled)). The worker waits on
    /// it beside each running job's heartbeat.
    ///
    /// # Contract
    /// - Stores that share a process with the canceller, or hear of it through the database,
    ///   resolve within a second of [`QueueStore::cancel`] (`cancel_stops_a_running_job_and_keeps_it_cancelled`
    ///   runs a worker that must stop within a second). The default never resolves: holders
    ///   then learn at their next heartbeat.
    async fn cancel_requested(&self, id: JobId) {
        let _ = id;
        std::future::pending::<()>().await;
    }

    /// Records what the handler holding `lease` reports of its progress: [`QueueStore::job`]
    /// returns it while the job runs, and later attempts get it in their claimed job.
    ///
    /// # Contract
    /// - The value replaces the one before; it survives a failed attempt and a release
    ///   (`progress_is_kept_across_attempts`). One holding a NUL character gets
    ///   [`Error::InvalidArgument`](crate::Error::InvalidArgument) and changes nothing
    ///   (`completions_and_progress_holding_nul_characters_are_rejected`).
    /// - A lost lease gets [`Error::LeaseLost`](crate::Error::LeaseLost), a cancelled job
    ///   [`Error::Cancelled`](crate::Error::Cancelled); nothing changes.
    async fn set_progress(&self, lease: &Lease, progress: Value) -> Result<()>;

    /// Changes one setting of `queue`: pause and resume it, limit how many of its jobs run at
    /// once or start per period, or set how long its failed and cancelled jobs are kept.
    /// Settings are kept in the store and apply to every worker of it at their next claim.
    ///
    /// # Contract
    /// - A paused queue's jobs are not claimed and do not wake waiters; running ones finish;
    ///   resuming wakes waiters at once (`a_paused_queue_is_not_claimed_until_resumed`). Nor
    ///   are its jobs whose leases ran out (`a_paused_queue_holds_its_expired_jobs_too`).
    /// - With a concurrency limit of `n`, at most `n` of the queue's jobs run under live leases
    ///   at once, however many claim at once (`concurrency_limit_caps_running_jobs`,
    ///   `racing_claimers_never_exceed_the_concurrency_limit`); completing, failing or
    ///   releasing one, or its lease expiring, makes room, and waiters are woken.
    /// - With a rate limit of `n` per period, at most `n` of the queue's jobs are claimed in
    ///   any window of that period (`rate_limit_caps_starts_per_period`). A queue with both
    ///   limits keeps to both (`a_queue_with_both_limits_keeps_to_the_tighter`).
    /// - A bad queue name or setting ([`QueueSetting::validate`]) is rejected; nothing changes
    ///   (`queue_settings_are_validated`).
    async fn configure_queue(&self, queue: &str, setting: QueueSetting) -> Result<()>;

    /// Every queue that holds jobs or has settings, by name, with its settings, its jobs
    /// counted by state and the age of its oldest ready job (`queues_lists_settings_and_counts`,
    /// `queues_tell_how_long_the_oldest_ready_job_waited`).
    async fn queues(&self) -> Result<Vec<QueueInfo>>;

    /// Lists jobs, newest (highest id) first, as `filter` says: for operators and dashboards,
    /// not for workers.
    ///
    /// # Contract
    /// - Only jobs of the filter's queue and state, with ids below its `before`, at most its
    ///   `limit`; each reported as [`QueueStore::job`] would (`list_jobs_lists_newest_first_by_queue_and_state`).
    /// - An invalid filter ([`JobFilter::validate`]) is rejected.
    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>>;

    /// Adds what workers finished to the store's per-minute record of each queue, under the
    /// store's current minute. The worker reports this way every few seconds
    /// ([`Worker::report_every`](crate::Worker::report_every)), off its jobs' path.
    ///
    /// # Contract
    /// - Reports within one minute add up; [`QueueStore::throughput`] returns them
    ///   (`throughput_adds_up_what_workers_report`). A bad queue name is rejected.
    async fn record_throughput(&self, tallies: &[Tally]) -> Result<()>;

    /// The per-minute records of the last `since` (the minute `since` ago included, so a
    /// `since` of zero gives the current minute's: `throughput_includes_the_minute_since_ago`),
    /// oldest first, then by queue. Records older than [`THROUGHPUT_KEPT`](crate::THROUGHPUT_KEPT)
    /// are removed by [`QueueStore::prune`].
    async fn throughput(&self, since: Duration) -> Result<Vec<Throughput>>;

    /// Removes what the store no longer needs to keep, a batch at a time (call it again while
    /// it removes anything): failed and cancelled jobs older than their queue's retention
    /// (default the store's, [`DEFAULT_RETENTION`](crate::DEFAULT_RETENTION) unless set),
    /// records of keys that no job has and that hold no saved state, and history records past
    /// their `keep_until` (as [`QueueStore::cleanup_history`]). The worker calls it
    /// periodically ([`Worker::prune_every`](crate::Worker::prune_every)).
    ///
    /// # Contract
    /// - Failed and cancelled jobs go once their retention has passed, not before
    ///   (`prune_removes_ended_jobs_after_their_retention`), counted from when they failed or
    ///   were cancelled, not from their put (`prune_counts_retention_from_when_a_job_ended`).
    /// - History records go once past their `keep_until`
    ///   (`prune_removes_history_records_past_their_keep_until`); uniqueness periods still
    ///   running stay (`pruning_keeps_unique_periods_that_run_on`).
    /// - A key's record goes once no job has the key and it holds no state; a job put with the
    ///   key at the same time keeps it, and its jobs run (`prune_forgets_idle_keys_only`,
    ///   `racing_puts_and_prunes_lose_no_key`).
    async fn prune(&self) -> Result<Pruned>;

    /// Gives a failed job a fresh start: `attempts = 0`, ready at once, `last_error` kept.
    ///
    /// # Contract
    /// - Only a [`JobState::Failed`] job can be retried; any other state gets
    ///   [`Error::InvalidState`](crate::Error::InvalidState), an unknown id
    ///   [`Error::NotFound`](crate::Error::NotFound) (`retry_restarts_only_failed_jobs`).
    async fn retry(&self, id: JobId) -> Result<()>;

    /// Looks a job up by id.
    ///
    /// # Contract
    /// - Reports the job's state now (`job_reports_every_state`); an unknown id gets
    ///   [`Error::NotFound`](crate::Error::NotFound).
    async fn job(&self, id: JobId) -> Result<Job>;

    /// Counts a queue's jobs in each state (`stats_count_each_state_per_queue`).
    async fn stats(&self, queue: &str) -> Result<QueueStats>;

    /// Removes every job of a queue, whatever its state, and returns how many went.
    /// Holders of running jobs lose their leases, and the keys they held are freed
    /// (`purge_empties_only_that_queue`, `extend_keeps_a_key_held_and_release_and_purge_free_it`).
    async fn purge(&self, queue: &str) -> Result<u64>;

    /// The state of a key of `queue`: `None` if no job ever had the key, `Some(Value::Null)`
    /// if no state was saved yet.
    async fn key_state(&self, queue: &str, key: &str) -> Result<Option<Value>>;

    /// The history record of a completed job.
    ///
    /// # Contract
    /// - Found from completion until [`QueueStore::cleanup_history`] runs after its
    ///   `keep_until`; a job put without [`NewJob::keep_history`], or not yet completed, gets
    ///   [`Error::NotFound`](crate::Error::NotFound).
    async fn finished(&self, id: JobId) -> Result<FinishedJob>;

    /// The history records of `queue`, most recently finished first, at most `limit`.
    async fn history(&self, queue: &str, limit: u32) -> Result<Vec<FinishedJob>>;

    /// Removes the history records whose `keep_until` has passed; returns how many went
    /// (`cleanup_history_removes_expired_records`). It also forgets the uniqueness keys whose
    /// period ([`Unique::For`](crate::Unique::For)) has ended, which hold nothing any more, and
    /// only those (`pruning_keeps_unique_periods_that_run_on`).
    async fn cleanup_history(&self) -> Result<u64>;

    /// Waits until a job may have become claimable in `queues`, or `timeout` passes.
    ///
    /// # Contract
    /// - Returns `true` at once if a job is claimable now; otherwise `true` as soon as one may
    ///   have become claimable (a new job, a retry, a release, a scheduled time or a lease
    ///   expiry reached: `wait_wakes_when_a_job_is_put`,
    ///   `wait_wakes_when_a_failed_attempt_is_retried`, `wait_wakes_when_a_job_is_released_or_retried`,
    ///   `wait_wakes_when_a_scheduled_job_comes_due`, `wait_wakes_when_a_lease_runs_out`),
    ///   `false` once `timeout` has passed with none (`wait_times_out_with_false_when_nothing_arrives`). A `true` may be spurious
    ///   (another worker got there first): claim and wait again.
    /// - Wakes on jobs put through any handle on the same store, without polling the jobs.
    /// - A job held up by its key does not count as claimable; its key being freed wakes
    ///   waiters (`wait_wakes_when_a_key_is_freed`). Nor does a job of a paused queue, or of a
    ///   queue at its concurrency or rate limit; resuming the queue, or a place coming free,
    ///   wakes waiters (`a_paused_queue_is_not_claimed_until_resumed`,
    ///   `concurrency_limit_caps_running_jobs`, `rate_limit_caps_starts_per_period`).
    async fn wait(&self, queues: &[String], timeout: Duration) -> Result<bool>;
}

//! # pq-conformance: the behaviour suite every `QueueStore` runs
//!
//! Each case is a public `async fn(Arc<dyn QueueStore>)` that checks one clause of the
//! [`QueueStore`] contract; its doc sentence states the clause. Cases are grouped by area:
//! [`put`], [`claim`], [`lease`], [`admin`], [`wait`], [`concurrency`], [`control`] (paused
//! queues, limits, cancelling running jobs, progress, pruning), [`keys`] (serial and
//! cursor keys, key states), [`unique`] (unique jobs), [`periodic`] (schedulers),
//! [`history`] (job history, payload codecs), and [`worker`]: the
//! worker and typed tasks running on the store.
//!
//! The suite never builds stores itself: it gets a fresh, isolated store per case from your
//! factory, so cases run in parallel. A downstream store's whole `tests/conformance.rs`, with
//! `pq-conformance` as a dev-dependency (`examples/tests/conformance.rs` in pq's repository
//! runs a store of its own this way):
//!
//! ```
//! //! pq's conformance suite on MyStore.
//! use std::sync::Arc;
//!
//! use pq_api::QueueStore;
//! # use pq_memory::MemoryStore as MyStore;
//!
//! async fn new_store() -> Arc<dyn QueueStore> {
//!     Arc::new(MyStore::new()) // a fresh, isolated store for each case
//! }
//!
//! // MyStore keeps no job history: its cases are skipped, each saying so.
//! pq_conformance::suite!(new_store, skip: [history]);
//! # fn main() {}
//! ```
//!
//! Each case runs on a runtime of its own, on a thread of its own, watched from outside: a
//! case that has not finished within [`CASE_TIMEOUT`] fails with its name, whether it awaits
//! forever or blocks its threads (a store that spins or deadlocks), and the rest of the suite
//! runs on.
//!
//! The `postgres` feature adds the `postgres` module, a harness that finds a PostgreSQL server
//! (`PQ_TEST_DATABASE_URL`, or one started through testcontainers) and names a fresh schema
//! per case.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is this crate's verdict

pub mod admin;
pub mod claim;
pub mod concurrency;
pub mod control;
pub mod history;
pub mod keys;
pub mod lease;
pub mod periodic;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod put;
pub mod unique;
pub mod wait;
pub mod worker;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use pq_api::QueueStore;

/// The longest one case may take before it is failed as hung.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs one case on a fresh multi-threaded runtime with a store from `new_store`; the
/// [`suite!`] macro calls this for every case. It fails, naming the case, if the case does
/// not finish within [`CASE_TIMEOUT`]: see [`run_case_within`].
pub fn run_case<F, Fut, C, CFut>(new_store: F, case: C)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Arc<dyn QueueStore>>,
    C: FnOnce(Arc<dyn QueueStore>) -> CFut + Send + 'static,
    CFut: Future<Output = ()>,
{
    run_case_within(CASE_TIMEOUT, Flavor::MultiThread, new_store, case);
}

/// Runs one case as [`run_case`] does, but on a current-thread runtime, the one
/// `#[tokio::test]` gives: the [`worker`] cases run on both, as the worker runs handlers
/// differently on each.
pub fn run_case_on_current_thread<F, Fut, C, CFut>(new_store: F, case: C)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Arc<dyn QueueStore>>,
    C: FnOnce(Arc<dyn QueueStore>) -> CFut + Send + 'static,
    CFut: Future<Output = ()>,
{
    run_case_within(CASE_TIMEOUT, Flavor::CurrentThread, new_store, case);
}

/// The runtime a case runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Two worker threads.
    MultiThread,
    /// One thread, as `#[tokio::test]` gives.
    CurrentThread,
}

/// Runs one case on a runtime of `flavor`, on a thread of its own, and fails with the case's
/// name if it has not finished within `limit`: whether it awaits forever (the runtime's timer
/// ends it) or blocks its runtime's threads, spinning or deadlocked, where no timer can (a
/// watchdog outside the runtime gives up on it, and the rest of the suite runs on; the
/// thread is left behind).
pub fn run_case_within<F, Fut, C, CFut>(limit: Duration, flavor: Flavor, new_store: F, case: C)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Arc<dyn QueueStore>>,
    C: FnOnce(Arc<dyn QueueStore>) -> CFut + Send + 'static,
    CFut: Future<Output = ()>,
{
    let name = case_name::<C>();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let runs = move || {
        let rt = match flavor {
            Flavor::MultiThread => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build(),
            Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
        }
        .expect("a tokio runtime for the case");
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.block_on(async {
                let store = new_store().await;
                tokio::time::timeout(limit, case(store)).await.is_ok()
            })
        }));
        let _ = done_tx.send(outcome);
    };
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(runs)
        .expect("a thread for the case");
    // The runtime's own timer fires at `limit` for a case that yields; the watchdog waits a
    // little longer, for the one that does not.
    match done_rx.recv_timeout(limit + limit / 4 + Duration::from_secs(1)) {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => panic!("case {name} did not finish within {limit:?}"),
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!(
            "case {name} hung for {limit:?} without yielding: it blocks its runtime's threads \
             (a spin, a deadlock, a blocking call)"
        ),
    }
}

/// `area::case` of a case function, from its type's name.
fn case_name<C>() -> String {
    let full = std::any::type_name::<C>();
    let mut parts = full.rsplit("::");
    match (parts.next(), parts.next()) {
        (Some(case), Some(area)) => format!("{area}::{case}"),
        _ => full.to_string(),
    }
}

/// Expands to one `#[test]` per conformance case, each given a store from `$new_store`
/// (an `async fn() -> Arc<dyn QueueStore>`, or a closure returning such a future, that is
/// `Send + 'static`).
///
/// A store without a capability skips its area, out loud: `suite!(new_store, skip: [history])`
/// runs every case but those of [`history`], each of which prints that it was skipped. The
/// areas: `put`, `claim`, `lease`, `admin`, `wait`, `concurrency`, `keys`, `unique`,
/// `periodic`, `history`, `worker`.
#[macro_export]
macro_rules! suite {
    ($new_store:expr) => {
        $crate::suite!($new_store, skip: []);
    };
    ($new_store:expr, skip: $skips:tt $(,)?) => {
        $crate::__cases!($new_store, $skips;
            put::put_returns_distinct_ids_of_ready_jobs,
            put::put_many_returns_ids_in_the_order_given,
            put::put_many_is_atomic,
            put::put_rejects_bad_queue_names,
            put::put_rejects_zero_max_attempts,
            put::scheduled_job_is_not_claimable_before_its_time,
            put::a_job_keeps_its_time_limit,
            put::delay_strings_schedule_jobs,
            put::time_options_take_the_same_forms,
            put::typed_payloads_round_trip,
            put::queues_are_isolated,
            put::put_rejects_payloads_nested_past_the_limit,
            put::put_rejects_payloads_holding_nul_characters,
            claim::claim_follows_contract_order,
            claim::claim_one_at_a_time_follows_contract_order,
            claim::claim_respects_the_limit,
            claim::claim_from_several_queues_uses_one_order,
            claim::claim_rejects_invalid_requests,
            claim::claimed_job_is_not_claimed_again_while_its_lease_is_live,
            claim::expired_lease_is_claimable_again_as_a_new_attempt,
            claim::expired_jobs_are_claimed_in_order_with_waiting_ones,
            claim::claim_of_nothing_returns_empty,
            lease::complete_removes_the_job,
            lease::complete_many_completes_only_held_leases,
            lease::stale_lease_changes_nothing,
            lease::extend_moves_the_lease_expiry,
            lease::fail_with_attempts_left_schedules_a_retry,
            lease::fail_without_attempts_left_leaves_the_job_failed,
            lease::failing_with_give_up_fails_the_job_at_once,
            lease::retry_restarts_only_failed_jobs,
            lease::release_hands_the_job_back_without_counting_the_attempt,
            lease::snoozed_job_waits_without_counting_the_attempt,
            lease::expired_but_unreclaimed_lease_still_completes_its_job,
            lease::expired_lease_without_attempts_left_is_failed,
            lease::a_failure_message_holding_nul_characters_is_recorded,
            lease::completions_and_progress_holding_nul_characters_are_rejected,
            admin::job_reports_every_state,
            admin::unknown_job_ids_are_not_found,
            admin::cancel_removes_waiting_and_failed_jobs,
            admin::stats_count_each_state_per_queue,
            admin::purge_empties_only_that_queue,
            admin::cancel_removes_a_job_whose_lease_expired,
            wait::wait_returns_at_once_when_a_job_is_ready,
            wait::wait_wakes_when_a_job_is_put,
            wait::wait_times_out_with_false_when_nothing_arrives,
            wait::wait_wakes_when_a_scheduled_job_comes_due,
            wait::wait_wakes_when_a_failed_attempt_is_retried,
            wait::wait_wakes_when_a_job_is_released_or_retried,
            wait::wait_wakes_when_a_lease_runs_out,
            wait::wait_does_not_wake_for_a_job_out_of_attempts,
            wait::wait_wakes_for_the_earliest_job_keyed_or_not,
            wait::blocking_get_returns_a_job_or_none,
            wait::job_stream_yields_every_job,
            concurrency::racing_claimers_claim_every_job_exactly_once,
            concurrency::concurrent_puts_all_land,
            concurrency::racing_reclaimers_of_an_expired_lease_get_it_once,
            worker::invalid_worker_configuration_is_rejected,
            keys::serial_key_runs_one_job_at_a_time_in_order,
            keys::keys_do_not_hold_up_other_jobs,
            keys::expired_lease_frees_the_key,
            keys::a_cancelled_running_jobs_key_passes_on_once_its_lease_ends,
            keys::an_expired_job_without_attempts_left_passes_its_key_on,
            keys::racing_claimers_never_run_two_jobs_of_one_key,
            keys::cursor_key_keeps_one_pending_job,
            keys::cursor_keys_pending_job_outlives_others_and_goes_with_cancel_and_purge,
            keys::concurrent_puts_with_one_cursor_key_make_one_job,
            keys::key_state_is_handed_on_and_saved_on_complete,
            keys::wait_wakes_when_a_key_is_freed,
            keys::wait_wakes_when_a_failure_frees_a_key,
            keys::put_rejects_bad_keys,
            keys::extend_keeps_a_key_held_and_release_and_purge_free_it,
            keys::a_snoozed_job_frees_its_key_and_its_place,
            unique::a_unique_job_holds_its_key_while_pending,
            unique::a_unique_job_holds_its_key_while_active,
            unique::a_unique_job_holds_its_key_for_its_period,
            unique::racing_puts_of_a_unique_key_add_one_job,
            unique::put_rejects_bad_uniqueness_keys,
            unique::a_unique_key_put_after_its_period_ended_is_held_again,
            unique::a_cancelled_or_lapsed_unique_job_frees_its_key,
            unique::pruning_keeps_unique_periods_that_run_on,
            control::a_paused_queue_is_not_claimed_until_resumed,
            control::concurrency_limit_caps_running_jobs,
            control::racing_claimers_never_exceed_the_concurrency_limit,
            control::rate_limit_caps_starts_per_period,
            control::cancel_stops_a_running_job_and_keeps_it_cancelled,
            control::progress_is_kept_across_attempts,
            control::queues_lists_settings_and_counts,
            control::queues_tell_how_long_the_oldest_ready_job_waited,
            control::list_jobs_lists_newest_first_by_queue_and_state,
            control::throughput_adds_up_what_workers_report,
            control::queue_settings_are_validated,
            control::prune_removes_ended_jobs_after_their_retention,
            control::prune_forgets_idle_keys_only,
            control::racing_puts_and_prunes_lose_no_key,
            control::a_queue_with_both_limits_keeps_to_the_tighter,
            control::a_cancelled_running_job_keeps_its_place_until_its_lease_ends,
            control::a_paused_queue_holds_its_expired_jobs_too,
            control::prune_counts_retention_from_when_a_job_ended,
            control::throughput_includes_the_minute_since_ago,
            periodic::schedulers_put_each_tick_once,
            periodic::a_missed_tick_is_made_up_only_when_asked,
            periodic::a_tick_the_store_refused_gives_way_to_the_next,
            history::completed_job_is_kept_in_history_when_asked,
            history::cleanup_history_removes_expired_records,
            history::put_rejects_bad_history_retention,
            history::encoded_payloads_round_trip_through_the_store,
            history::prune_removes_history_records_past_their_keep_until,
        );
        $crate::__worker_cases!($crate::__cases, $new_store, $skips);
        /// The cases that run a worker, again on a current-thread runtime.
        mod on_current_thread {
            #[allow(unused_imports)]
            use super::*;
            $crate::__worker_cases!($crate::__cases_on_current_thread, $new_store, $skips);
        }
    };
}

/// Calls `$cases` with every case that runs a worker: [`suite!`] runs them on both runtime
/// flavours.
#[doc(hidden)]
#[macro_export]
macro_rules! __worker_cases {
    ($cases:path, $new_store:expr, $skips:tt) => {
        $cases!($new_store, $skips;
            worker::worker_runs_each_job_once_and_completes_it,
            worker::failing_handler_is_retried_until_max_attempts,
            worker::failed_attempt_is_scheduled_by_the_backoff,
            worker::panicking_handler_is_a_failed_attempt,
            worker::undecodable_or_unknown_jobs_fail_with_a_clear_error,
            worker::unknown_task_is_handed_back_for_another_worker,
            worker::snoozed_job_runs_later_without_costing_an_attempt,
            worker::a_handler_past_its_time_limit_is_told_and_its_attempt_fails,
            worker::a_handler_ignoring_its_time_limit_is_dropped_after_the_grace,
            worker::a_jobs_own_time_limit_overrides_its_tasks_either_way,
            worker::a_handler_that_succeeds_in_the_grace_after_its_time_limit_completes_its_job,
            worker::a_stopping_worker_reports_what_it_finished,
            worker::retry_delay_past_the_limit_is_recorded,
            worker::store_failure_under_a_handler_costs_no_attempt,
            worker::outcomes_are_recorded_through_store_blips,
            worker::a_store_call_that_never_answers_is_given_up_and_tried_again,
            worker::a_heartbeat_that_never_answers_does_not_cost_the_lease,
            worker::lost_lease_cancels_the_handler_and_drops_its_outcome,
            worker::cancelling_a_running_job_tells_its_handler_within_a_second,
            worker::drain_stops_when_no_job_is_ready,
            worker::finish_lets_running_jobs_end_and_claims_no_more,
            worker::abort_hands_running_jobs_back_at_once,
            worker::abort_tells_handlers_and_keeps_what_they_finish_in_the_grace,
            worker::two_workers_share_a_queue_running_each_job_once,
            worker::job_of_a_dead_worker_runs_again_after_its_lease,
            worker::finished_job_is_completed_while_the_worker_idles,
            keys::worker_threads_key_state_through_a_keys_jobs,
            keys::draining_worker_runs_every_keyed_job,
            history::worker_keeps_the_handlers_result_in_history,
            history::a_result_that_cannot_be_kept_fails_only_its_own_job,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __cases_on_current_thread {
    ($new_store:expr, $skips:tt; $($area:ident :: $case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                if $crate::skipped(stringify!($skips), stringify!($area), stringify!($case)) {
                    return;
                }
                $crate::run_case_on_current_thread($new_store, $crate::$area::$case);
            }
        )*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __cases {
    ($new_store:expr, $skips:tt; $($area:ident :: $case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                if $crate::skipped(stringify!($skips), stringify!($area), stringify!($case)) {
                    return;
                }
                $crate::run_case($new_store, $crate::$area::$case);
            }
        )*
    };
}

/// The areas a store may skip in [`suite!`].
pub const AREAS: [&str; 12] = [
    "put",
    "claim",
    "lease",
    "admin",
    "wait",
    "concurrency",
    "control",
    "keys",
    "unique",
    "periodic",
    "history",
    "worker",
];

/// Whether `area` is in `skips` (the `[a, b]` given to [`suite!`], as text); says so on
/// standard error when it is. An unknown area fails the case: a misspelt skip must not
/// quietly run nothing, nor everything.
#[doc(hidden)]
pub fn skipped(skips: &str, area: &str, case: &str) -> bool {
    let mut skip = false;
    for name in skips
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        assert!(
            AREAS.contains(&name),
            "suite!: cannot skip {name:?}: the areas are {AREAS:?}"
        );
        skip |= name == area;
    }
    if skip {
        eprintln!("skipped: {area}::{case} (this store skips the {area} area)");
    }
    skip
}

/// Sleeps long enough for a lease of [`SHORT_LEASE`] to have expired on any store's clock.
pub async fn let_short_lease_expire() {
    tokio::time::sleep(Duration::from_millis(30)).await;
}

/// A lease that is over almost as soon as it starts.
pub const SHORT_LEASE: Duration = Duration::from_millis(1);
/// A lease that outlives any case.
pub const LONG_LEASE: Duration = Duration::from_secs(3600);
/// An hour, for scheduling ahead and behind without sleeping.
pub const HOUR: Duration = Duration::from_secs(3600);

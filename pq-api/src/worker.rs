//! The worker: claims jobs of the registered tasks, runs their handlers concurrently, and
//! records each outcome.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::job::{
    validate_lease, Claim, ClaimedJob, Done, Failure, JobState, Lease, MAX_CLAIM_LIMIT,
    MAX_DURATION,
};
use crate::metrics::{Finished, Meters, QueueMeter};
use crate::queue::Pruned;
use crate::store::QueueStore;
use crate::task::{
    CancelHandle, Cancelled, Completion, Registered, Registry, TaskContext, TaskError, Unroutable,
};

/// How long a worker with few free slots waits for more to free up before it claims anyway.
const CLAIM_LINGER: Duration = Duration::from_millis(2);

/// The first pause before recording an outcome again after the store failed; it doubles up
/// to [`RECORD_RETRY_MAX`].
const RECORD_RETRY_FIRST: Duration = Duration::from_millis(50);
/// The longest pause between two tries at recording an outcome.
const RECORD_RETRY_MAX: Duration = Duration::from_secs(1);

/// How long a handler may take to return once told the worker aborts, by default: see
/// [`Worker::abort_grace`].
pub const DEFAULT_ABORT_GRACE: Duration = Duration::from_secs(1);

/// How often a worker prunes its store unless told otherwise ([`Worker::prune_every`]).
pub const DEFAULT_PRUNE_EVERY: Duration = Duration::from_secs(60);

/// How often a worker reports its throughput to the store, unless
/// [`Worker::report_every`] says otherwise: 10 s.
pub const DEFAULT_REPORT_EVERY: Duration = Duration::from_secs(10);

/// The longest a running job waits for its first heartbeat: a job cancelled as it started is
/// learned of by then.
const FIRST_BEAT: Duration = Duration::from_millis(500);

/// How many prunes in a row a worker runs at most while each removes something.
const PRUNE_ROUNDS: usize = 10;

/// What a worker does with a job whose task it does not know (a job of a newer version of
/// the application, during a rolling deploy, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnknownTasks {
    /// Hand the job back without counting the attempt, claimable again after this delay
    /// ([`QueueStore::snooze`]), for a worker that knows the task. The default, with 10 s.
    HandBack(Duration),
    /// Fail the job for good, with a `last_error` naming the task.
    Fail,
}

impl Default for UnknownTasks {
    fn default() -> Self {
        UnknownTasks::HandBack(Duration::from_secs(10))
    }
}

/// How a worker stops (PyPGQueue's stop modes). A later, stronger request overrides a weaker
/// one: `Drain` < `Finish` < `Abort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StopMode {
    /// Keep working until no job is ready, then stop.
    Drain,
    /// Stop claiming; finish the running jobs, recording their outcomes, then stop.
    Finish,
    /// Cancel running handlers now: each is told through
    /// [`TaskContext::cancelled`](crate::TaskContext::cancelled) ([`Cancelled::Abort`]) and
    /// given the worker's [`abort_grace`](Worker::abort_grace) (default 1 s) to return, then
    /// dropped. A handler that succeeds within it has its job completed; every other job is
    /// handed back, claimable at once, the attempt not counted. Then stop.
    Abort,
}

/// What a worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerState {
    /// Claiming and running jobs.
    Running,
    /// Stopping in this mode.
    Stopping(StopMode),
    /// Stopped: [`Worker::run`] has returned or is about to.
    Stopped,
}

/// A worker's counts (PyPGQueue's status query), from [`WorkerHandle::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStatus {
    /// What the worker is doing.
    pub state: WorkerState,
    /// Handlers running now.
    pub running: u64,
    /// Jobs completed.
    pub processed: u64,
    /// Failed attempts that will be retried.
    pub retried: u64,
    /// Jobs left failed (out of attempts, or given up).
    pub failed: u64,
    /// Jobs whose lease was lost while they ran; their outcome was not recorded.
    pub lost: u64,
    /// Jobs handed back without counting the attempt: by an abort, after the store failed
    /// under their handler, or because their task is unknown here ([`UnknownTasks`]).
    pub released: u64,
    /// Jobs their handlers snoozed ([`TaskError::snooze`]): put back to run later, the
    /// attempt not counted.
    pub snoozed: u64,
    /// Jobs cancelled while they ran ([`QueueStore::cancel`]); their outcome was not recorded.
    pub cancelled: u64,
}

#[derive(Debug, Default)]
struct Counters {
    running: AtomicU64,
    processed: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
    lost: AtomicU64,
    released: AtomicU64,
    snoozed: AtomicU64,
    cancelled: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Shared {
    stop: watch::Sender<Option<StopMode>>,
    stopped: watch::Sender<bool>,
    counts: Counters,
    meters: Meters,
}

/// Controls a running worker from anywhere: any thread, a signal handler task, another
/// worker. Cheap to clone.
#[derive(Debug, Clone)]
pub struct WorkerHandle {
    shared: Arc<Shared>,
}

impl WorkerHandle {
    /// Asks the worker to stop in `mode` (psycopg2_mq's graceful shutdown). Returns at once;
    /// await [`WorkerHandle::stopped`] to know when it has. A weaker mode than one already
    /// asked for changes nothing.
    pub fn stop(&self, mode: StopMode) {
        self.shared.stop.send_if_modified(|current| {
            if current.is_some_and(|c| c >= mode) {
                false
            } else {
                *current = Some(mode);
                true
            }
        });
    }

    /// The worker's state and counts now.
    pub fn status(&self) -> WorkerStatus {
        let c = &self.shared.counts;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let state = if *self.shared.stopped.borrow() {
            WorkerState::Stopped
        } else {
            match *self.shared.stop.borrow() {
                None => WorkerState::Running,
                Some(mode) => WorkerState::Stopping(mode),
            }
        };
        WorkerStatus {
            state,
            running: get(&c.running),
            processed: get(&c.processed),
            retried: get(&c.retried),
            failed: get(&c.failed),
            lost: get(&c.lost),
            released: get(&c.released),
            snoozed: get(&c.snoozed),
            cancelled: get(&c.cancelled),
        }
    }

    /// Resolves once the worker has stopped.
    pub async fn stopped(&self) {
        let mut rx = self.shared.stopped.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// Runs the tasks of a [`Registry`] from any [`QueueStore`].
///
/// Runs up to `concurrency` handlers at once, claiming in batches sized to its free
/// capacity, and idles on [`QueueStore::wait`] (woken by LISTEN/NOTIFY on the SQL stores)
/// when nothing is claimable. While a handler runs, its lease is extended every `heartbeat`;
/// if the lease is lost the handler is told through [`TaskContext::cancelled`] and its
/// outcome is not recorded; the same when its job is cancelled. Every
/// [`prune_every`](Worker::prune_every) it prunes the store ([`QueueStore::prune`]).
/// Successes are completed in batches; a failure or a panic is a
/// failed attempt, retried by the task's [`Backoff`](crate::Backoff) until `max_attempts`.
/// Run as many workers as you like, in one process or many, on one database.
///
/// # Contract
/// Each promise has its case in `pq_conformance::worker`:
/// - every job runs once and is completed (`worker_runs_each_job_once_and_completes_it`,
///   `two_workers_share_a_queue_running_each_job_once`), also one that finished while the
///   worker idles (`finished_job_is_completed_while_the_worker_idles`);
/// - a failure or a panic is a failed attempt, retried by the backoff until `max_attempts`
///   (`failing_handler_is_retried_until_max_attempts`, `failed_attempt_is_scheduled_by_the_backoff`,
///   `panicking_handler_is_a_failed_attempt`); a retry delay past what a store can record is
///   clamped (`retry_delay_past_the_limit_is_recorded`);
/// - a handler past its time limit is told and, unless it succeeds within the grace, its
///   attempt fails (`a_handler_past_its_time_limit_is_told_and_its_attempt_fails`,
///   `a_handler_ignoring_its_time_limit_is_dropped_after_the_grace`,
///   `a_handler_that_succeeds_in_the_grace_after_its_time_limit_completes_its_job`); a job's
///   own limit overrides its task's (`a_jobs_own_time_limit_overrides_its_tasks_either_way`);
/// - a payload that is no task, or whose args do not decode, fails at once with a clear
///   error (`undecodable_or_unknown_jobs_fail_with_a_clear_error`); a task this worker does
///   not know is handed back ([`UnknownTasks`]; `unknown_task_is_handed_back_for_another_worker`);
/// - a store failure under a handler costs no attempt
///   (`store_failure_under_a_handler_costs_no_attempt`); outcomes the store fails to take are
///   tried again while the lease lasts (`outcomes_are_recorded_through_store_blips`), and no
///   store call waits without bound (`a_store_call_that_never_answers_is_given_up_and_tried_again`);
/// - a heartbeat that goes unanswered is given up on and tried again well before the lease
///   runs out (`a_heartbeat_that_never_answers_does_not_cost_the_lease`);
/// - a lost lease cancels the handler (`lost_lease_cancels_the_handler_and_drops_its_outcome`);
///   so does cancelling its job, which the handler hears within a second
///   ([`Cancelled::Requested`](crate::Cancelled::Requested), through
///   [`QueueStore::cancel_requested`] beside the heartbeat;
///   `cancelling_a_running_job_tells_its_handler_within_a_second`);
///   a dead worker's job runs again after its lease (`job_of_a_dead_worker_runs_again_after_its_lease`);
/// - the stop modes ([`StopMode`]: `drain_stops_when_no_job_is_ready`,
///   `finish_lets_running_jobs_end_and_claims_no_more`, `abort_hands_running_jobs_back_at_once`,
///   `abort_tells_handlers_and_keeps_what_they_finish_in_the_grace`);
/// - an invalid configuration is rejected before any claim
///   (`invalid_worker_configuration_is_rejected`).
///
/// On a multi-thread runtime each job runs as a task of its own, so handlers run in parallel.
/// On a current-thread runtime (`#[tokio::test]`'s) there is no other thread to run them on:
/// a handler's first poll runs in the worker's own task, and only a handler still pending
/// after it becomes a task. Either way, work that blocks its thread belongs in
/// `tokio::task::spawn_blocking`.
///
/// ```
/// use pq_api::{QueueStoreExt, Registry, RunTask, Task, TaskContext, TaskError, Worker};
/// use std::sync::Arc;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Greet { name: String }
/// impl Task for Greet { const NAME: &'static str = "greet"; }
/// impl RunTask for Greet {
///     async fn run(self, _cx: TaskContext) -> Result<(), TaskError> {
///         println!("hello, {}", self.name);
///         Ok(())
///     }
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = Arc::new(pq_memory::MemoryStore::new());
/// store.put_job(Greet { name: "Ada".into() }.to_job()?).await?;
///
/// let worker = Worker::new(store, Registry::new().register::<Greet>()?).concurrency(4);
/// let status = worker.run_until_drained().await?;
/// assert_eq!(status.processed, 1);
/// # Ok::<(), pq_api::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct Worker {
    store: Arc<dyn QueueStore>,
    registry: Arc<Registry>,
    concurrency: u32,
    batch_size: u32,
    lease: Duration,
    heartbeat: Option<Duration>,
    idle_wait: Duration,
    error_pause: Duration,
    unknown_tasks: UnknownTasks,
    abort_grace: Duration,
    prune_every: Duration,
    report_every: Duration,
    queue_gauges_every: Duration,
    shared: Arc<Shared>,
}

/// What a job's task reports back to the worker loop.
enum Outcome {
    /// Succeeded; the worker completes it (and counts it in its queue's meter).
    Succeeded(Done, Arc<QueueMeter>),
    /// Everything already recorded.
    Settled,
}

impl Worker {
    /// A worker for `registry`'s tasks on `store`: concurrency 8, batches up to the free
    /// capacity, leases of [`DEFAULT_LEASE`](crate::DEFAULT_LEASE) extended every third of it.
    pub fn new(store: Arc<dyn QueueStore>, registry: Registry) -> Self {
        let meters = Meters::new(&registry.queues());
        Worker {
            store,
            registry: Arc::new(registry),
            concurrency: 8,
            batch_size: MAX_CLAIM_LIMIT,
            lease: crate::DEFAULT_LEASE,
            heartbeat: None,
            idle_wait: Duration::from_secs(30),
            error_pause: Duration::from_secs(1),
            unknown_tasks: UnknownTasks::default(),
            abort_grace: DEFAULT_ABORT_GRACE,
            prune_every: DEFAULT_PRUNE_EVERY,
            report_every: DEFAULT_REPORT_EVERY,
            queue_gauges_every: Duration::ZERO,
            shared: Arc::new(Shared {
                stop: watch::channel(None).0,
                stopped: watch::channel(false).0,
                counts: Counters::default(),
                meters,
            }),
        }
    }

    /// Handlers run at once, at most (at least 1).
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n;
        self
    }

    /// Jobs claimed per statement, at most; a claim never asks for more than the free
    /// capacity.
    pub fn batch_size(mut self, n: u32) -> Self {
        self.batch_size = n;
        self
    }

    /// The lease each job is claimed, and extended, for.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How often a running job's lease is extended (default: a third of the lease); must
    /// be shorter than the lease.
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = Some(every);
        self
    }

    /// The longest single idle [`QueueStore::wait`] before claiming again anyway.
    pub fn idle_wait(mut self, wait: Duration) -> Self {
        self.idle_wait = wait;
        self
    }

    /// What to do with a job whose task this worker does not know (default: hand it back
    /// for 10 s, its attempt not counted: [`UnknownTasks::HandBack`]).
    pub fn unknown_tasks(mut self, what: UnknownTasks) -> Self {
        self.unknown_tasks = what;
        self
    }

    /// How long a handler may take to return once told that the worker aborts (default
    /// [`DEFAULT_ABORT_GRACE`]): see [`StopMode::Abort`]. Zero still polls it once after
    /// telling it, so a handler that returns on cancellation has its say.
    pub fn abort_grace(mut self, grace: Duration) -> Self {
        self.abort_grace = grace;
        self
    }

    /// How often the worker prunes the store ([`QueueStore::prune`]): failed and cancelled
    /// jobs past their retention, idle key records, expired history. Default
    /// [`DEFAULT_PRUNE_EVERY`]; the first prune comes at a random point within the first
    /// period, so workers started together spread theirs. Zero never prunes (prune from
    /// elsewhere then, or the tables grow).
    pub fn prune_every(mut self, every: Duration) -> Self {
        self.prune_every = every;
        self
    }

    /// How often the worker adds what it finished to the store's per-minute throughput record
    /// ([`QueueStore::record_throughput`]; the dashboard's chart). Default
    /// [`DEFAULT_REPORT_EVERY`]: one small statement per period, off the jobs' path, and one
    /// more as the worker stops (`a_stopping_worker_reports_what_it_finished`). Zero never
    /// reports.
    pub fn report_every(mut self, every: Duration) -> Self {
        self.report_every = every;
        self
    }

    /// How often the worker reports the store's queue gauges (jobs by state, the oldest ready
    /// job's wait: [`metrics::record_queues`](crate::metrics::record_queues)) through the
    /// metrics facade. Each report counts the table ([`QueueStore::queues`]), so the default
    /// is zero, never; one worker of a deployment reporting them is enough.
    pub fn queue_gauges_every(mut self, every: Duration) -> Self {
        self.queue_gauges_every = every;
        self
    }

    /// A handle to stop the worker and read its status, from anywhere.
    pub fn handle(&self) -> WorkerHandle {
        WorkerHandle {
            shared: self.shared.clone(),
        }
    }

    /// Runs until no job is ready, then stops ([`StopMode::Drain`] from the start).
    pub async fn run_until_drained(self) -> Result<WorkerStatus> {
        self.handle().stop(StopMode::Drain);
        self.run().await
    }

    fn validate(&self) -> Result<Duration> {
        if self.concurrency == 0 {
            return Err(Error::invalid("concurrency", "must be at least 1"));
        }
        if self.batch_size == 0 || self.batch_size > MAX_CLAIM_LIMIT {
            return Err(Error::invalid(
                "batch size",
                format!("must be between 1 and {MAX_CLAIM_LIMIT}"),
            ));
        }
        validate_lease(self.lease)?;
        let heartbeat = self.heartbeat.unwrap_or(self.lease / 3);
        if heartbeat.is_zero() || heartbeat >= self.lease {
            return Err(Error::invalid(
                "heartbeat",
                format!("must be above zero and below the lease ({:?})", self.lease),
            ));
        }
        if self.registry.names().is_empty() {
            return Err(Error::invalid("registry", "no task is registered"));
        }
        if let UnknownTasks::HandBack(d) = self.unknown_tasks {
            if d.is_zero() {
                return Err(Error::invalid(
                    "unknown tasks",
                    "hand jobs back for longer than zero, or a worker would spin on them",
                ));
            }
            crate::job::validate_delay(d)?;
        }
        Ok(heartbeat)
    }

    /// Runs until stopped through a [`WorkerHandle`], and returns the final status.
    ///
    /// Store errors do not end the run: they are logged, and the worker pauses and tries
    /// again. Every store call it makes is bounded (a claim or a completion by half the lease,
    /// so a completion given up on is tried again before the lease runs out; a heartbeat by the
    /// heartbeat interval, a failed one tried again within a second; an idle wait by
    /// `idle_wait` plus the lease): a call the store does not answer in
    /// time counts as [`Error::Unavailable`]. Only an invalid
    /// configuration is returned as an error, before any job is claimed.
    pub async fn run(self) -> Result<WorkerStatus> {
        let heartbeat = self.validate()?;
        let queues = self.registry.queues();
        let handle = self.handle();
        let span = tracing::info_span!("pq.worker", queues = ?queues);
        let pruner = (!self.prune_every.is_zero())
            .then(|| tokio::spawn(prune_forever(self.store.clone(), self.prune_every)));
        let reporter = (!self.report_every.is_zero()).then(|| {
            let (store, shared) = (self.store.clone(), self.shared.clone());
            tokio::spawn(report_forever(store, shared, self.report_every))
        });
        let gauges = (!self.queue_gauges_every.is_zero())
            .then(|| tokio::spawn(gauges_forever(self.store.clone(), self.queue_gauges_every)));
        self.run_loop(queues, heartbeat).instrument(span).await;
        for task in [pruner, reporter, gauges].into_iter().flatten() {
            task.abort();
        }
        if !self.report_every.is_zero() {
            report(&*self.store, &self.shared.meters, RECORD_RETRY_MAX).await;
        }
        self.shared.stopped.send_replace(true);
        Ok(handle.status())
    }

    async fn run_loop(&self, queues: Vec<String>, heartbeat: Duration) {
        let mut stop_rx = self.shared.stop.subscribe();
        let (abort_tx, _) = watch::channel(false);
        let mut running: JoinSet<Outcome> = JoinSet::new();
        let mut done = Finished::default();
        let mut claim = Claim::new(queues.iter().cloned()).lease(self.lease);
        let mut linger_until: Option<Instant> = None;
        let inline = tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::CurrentThread;
        let mut maybe_claimable = true;
        tracing::info!(concurrency = self.concurrency, "worker started");
        loop {
            let stop = *stop_rx.borrow_and_update();
            if stop == Some(StopMode::Abort) {
                abort_tx.send_replace(true);
                while let Some(r) = running.join_next().await {
                    self.reap(r, &mut done);
                }
                break;
            }
            while let Some(r) = running.try_join_next() {
                maybe_claimable |= self.reap(r, &mut done);
            }
            // Draining stops on an empty claim, so it must really claim.
            maybe_claimable |= stop == Some(StopMode::Drain);
            self.set_running(&running);

            let free = self.concurrency.saturating_sub(len_u32(&running));
            // With only a few slots free and others about to free up, wait a moment: one claim
            // (and one completion) for many jobs costs far less than one for each.
            let worth_claiming = self.concurrency.min(self.batch_size);
            if free > 0 && free < worth_claiming && stop != Some(StopMode::Finish) {
                let until = *linger_until.get_or_insert_with(|| Instant::now() + CLAIM_LINGER);
                if Instant::now() < until {
                    tokio::select! {
                        r = running.join_next() => if let Some(r) = r {
                            maybe_claimable |= self.reap(r, &mut done);
                        },
                        () = tokio::time::sleep_until(until) => {}
                        _ = stop_rx.changed() => {}
                    }
                    continue;
                }
            }
            linger_until = None;
            if stop == Some(StopMode::Finish) || free == 0 {
                self.flush(&mut done).await;
                if running.is_empty() {
                    break;
                }
                tokio::select! {
                    r = running.join_next() => if let Some(r) = r {
                        maybe_claimable |= self.reap(r, &mut done);
                    },
                    _ = stop_rx.changed() => {}
                }
                continue;
            }

            let limit = free.min(self.batch_size);
            // Completing the finished jobs and claiming the next ones are independent: send
            // both at once (two connections on the SQL stores).
            claim.limit = limit;
            let claiming = async {
                if maybe_claimable {
                    let started = Instant::now();
                    let claimed = bounded(self.lease / 2, self.store.claim(&claim)).await;
                    self.shared.meters.claimed_in(started.elapsed());
                    claimed
                } else {
                    Ok(Vec::new())
                }
            };
            // A claim sent alongside completions may miss what they free (a job's serial key),
            // so draining does not end on such a claim.
            let mut flushed_alongside = !done.is_empty();
            // The claim goes first: on a pool that hands out the connection returned last, it
            // then gets the one the previous claim returned (claims take longer), and each
            // statement keeps to its own server process, as in the benchmark's bare loop.
            let (claimed, ()) = tokio::join!(claiming, self.flush(&mut done));
            match claimed {
                Ok(jobs) => {
                    // A short batch means nothing more was claimable: wait rather than claim
                    // again (the wait returns at once if that has changed).
                    let full = jobs.len() >= usize::try_from(limit).unwrap_or(usize::MAX);
                    maybe_claimable = full;
                    let mut spawned = false;
                    for job in jobs {
                        match self
                            .start(&mut running, job, heartbeat, &abort_tx, inline)
                            .await
                        {
                            Some(outcome) => maybe_claimable |= self.reap(Ok(outcome), &mut done),
                            None => spawned = true,
                        }
                    }
                    self.set_running(&running);
                    if spawned {
                        // Let the handlers just spawned start before this loop sends its next
                        // statement: a store may write to its socket inside the poll (sqlx
                        // does), and on a busy host that send alone was measured at 0.5–1 ms,
                        // every one of it added to each job's pickup latency.
                        tokio::task::yield_now().await;
                    }
                    if full {
                        continue;
                    }
                    if !done.is_empty() {
                        // Jobs that finished as they started: complete them before idling, as
                        // their completion may free a key, and with it the next job.
                        self.flush(&mut done).await;
                        flushed_alongside = true;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "claim failed; pausing before trying again");
                    self.pause(self.error_pause, &mut running, &mut done, &mut stop_rx)
                        .await;
                    continue;
                }
            }
            if stop == Some(StopMode::Drain) && running.is_empty() {
                // A job that finished as it started may have left a retry due now.
                if flushed_alongside || maybe_claimable {
                    continue;
                }
                break;
            }
            tokio::select! {
                r = running.join_next(), if !running.is_empty() => {
                    if let Some(r) = r { maybe_claimable |= self.reap(r, &mut done) }
                }
                // Completions the store could not take yet are tried again soon, not after
                // an idle wait that could outlast their leases.
                () = tokio::time::sleep(self.error_pause), if !done.is_empty() => {}
                woke = bounded(self.idle_wait + self.lease, self.store.wait(&queues, self.idle_wait)) => {
                    maybe_claimable = true;
                    if let Err(e) = woke {
                        tracing::warn!(error = %e, "wait failed; pausing before trying again");
                        self.pause(self.error_pause, &mut running, &mut done, &mut stop_rx).await;
                    }
                }
                _ = stop_rx.changed() => maybe_claimable = true,
            }
        }
        // Aborting, the worker does not wait on a store that is down: the jobs then run again
        // once their leases expire.
        if *stop_rx.borrow() == Some(StopMode::Abort) {
            self.flush_within(&mut done, RECORD_RETRY_MAX).await;
        } else {
            self.flush(&mut done).await;
        }
        self.set_running(&running);
        tracing::info!(status = ?self.handle().status(), "worker stopped");
    }

    /// Sleeps `d` after a store error, still reaping finished jobs and heeding stop requests.
    async fn pause(
        &self,
        d: Duration,
        running: &mut JoinSet<Outcome>,
        done: &mut Finished,
        stop_rx: &mut watch::Receiver<Option<StopMode>>,
    ) {
        let until = Instant::now() + d;
        loop {
            tokio::select! {
                r = running.join_next(), if !running.is_empty() => {
                    if let Some(r) = r { self.reap(r, done); }
                }
                _ = stop_rx.changed() => return,
                () = tokio::time::sleep_until(until) => return,
            }
        }
    }

    fn set_running(&self, running: &JoinSet<Outcome>) {
        let n = u64::try_from(running.len()).unwrap_or(u64::MAX);
        self.shared.counts.running.store(n, Ordering::Relaxed);
    }

    /// Collects a finished job's outcome; true if it may have left a job claimable (a retry,
    /// a release).
    fn reap(&self, joined: std::result::Result<Outcome, JoinError>, done: &mut Finished) -> bool {
        match joined {
            Ok(Outcome::Succeeded(finished, meter)) => {
                done.push(finished, meter);
                false
            }
            Ok(Outcome::Settled) => true,
            // Job tasks catch their handlers' panics; this is a bug in the worker itself.
            Err(e) => {
                tracing::error!(error = %e, "job task ended abnormally");
                true
            }
        }
    }

    /// Completes every succeeded job in one statement.
    async fn flush(&self, done: &mut Finished) {
        self.flush_within(done, self.lease / 2).await;
    }

    /// Completes every succeeded job in one statement, if the store answers within `d`.
    async fn flush_within(&self, done: &mut Finished, d: Duration) {
        if done.is_empty() {
            return;
        }
        match bounded(d, self.store.complete_many(&done.done)).await {
            Ok(ids) => {
                let counts = &self.shared.counts;
                let lost = done.len() - ids.len();
                Counters::bump(&counts.processed, u64::try_from(ids.len()).unwrap_or(0));
                if lost > 0 {
                    Counters::bump(&counts.lost, u64::try_from(lost).unwrap_or(0));
                    tracing::warn!(
                        lost,
                        "jobs succeeded after their leases were lost; not recorded"
                    );
                }
                tracing::debug!(completed = ids.len(), "jobs completed");
                done.completed(&ids);
            }
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, jobs = done.len(), "completing failed; will try again");
            }
            Err(e) => {
                // Not retryable: the jobs run again once their leases expire.
                tracing::error!(error = %e, jobs = done.len(), "completing failed");
                done.clear();
            }
        }
    }

    /// Starts a claimed job. On a current-thread runtime its first poll runs here, and a
    /// handler finishing on it (most do) costs no task: there is no other thread a task could
    /// run it on. Otherwise, or if the handler is still pending, it runs on as a task of
    /// `running`. Returns the outcome of a job that finished here.
    async fn start(
        &self,
        running: &mut JoinSet<Outcome>,
        claimed: ClaimedJob,
        heartbeat: Duration,
        abort: &watch::Sender<bool>,
        inline: bool,
    ) -> Option<Outcome> {
        let routed = self.registry.route(&claimed.job.payload).cloned();
        let meter = self.shared.meters.of(&claimed.job.queue);
        meter.claimed.increment(1);
        let span = tracing::info_span!(
            "pq.job",
            job.id = claimed.job.id.0,
            queue = %claimed.job.queue,
            task = routed.as_ref().map_or("?", |entry| entry.name),
            attempt = claimed.job.attempts,
        );
        let run = JobRun {
            store: self.store.clone(),
            shared: self.shared.clone(),
            meter,
            lease_for: self.lease,
            lease_until: Instant::now() + self.lease,
            heartbeat,
            unknown_tasks: self.unknown_tasks,
            abort: abort.subscribe(),
            abort_grace: self.abort_grace,
            aborting: false,
            timed_out: None,
        };
        let (cx, cancel) = TaskContext::claimed(claimed, self.store.clone());
        let job = run.run(cx, cancel, routed).instrument(span);
        if !inline {
            running.spawn(job);
            return None;
        }
        let mut job = Box::pin(job);
        // Polled with this loop's waker: should the job stay pending, whatever it registered
        // wakes this loop once, spuriously, and its task's waker takes over from its next poll.
        match std::future::poll_fn(|cx| Poll::Ready(job.as_mut().poll(cx))).await {
            Poll::Ready(outcome) => Some(outcome),
            Poll::Pending => {
                running.spawn(job);
                None
            }
        }
    }
}

fn len_u32(set: &JoinSet<Outcome>) -> u32 {
    u32::try_from(set.len()).unwrap_or(u32::MAX)
}

/// Why a running handler was dropped before it finished.
enum Interrupted {
    /// The worker aborts.
    Aborted,
    /// The job was cancelled (already counted).
    Cancelled,
    /// The job's lease was lost (already counted).
    LeaseLost,
    /// The handler ran past its time limit and did not return within the grace.
    TimedOut,
}

/// One job's run: handler, heartbeats, and failure recording.
struct JobRun {
    store: Arc<dyn QueueStore>,
    shared: Arc<Shared>,
    /// The metrics handles of the job's queue.
    meter: Arc<QueueMeter>,
    lease_for: Duration,
    /// No later than the lease runs out (taken after the claim, moved on by each heartbeat):
    /// how long recording an outcome is worth trying.
    lease_until: Instant,
    heartbeat: Duration,
    unknown_tasks: UnknownTasks,
    abort: watch::Receiver<bool>,
    /// How long the handler may take to return once told the worker aborts.
    abort_grace: Duration,
    /// Whether the handler was told the worker aborts (and returned within the grace).
    aborting: bool,
    /// The time limit the handler ran past, if it did.
    timed_out: Option<Duration>,
}

impl JobRun {
    /// Runs the job to its outcome. Everything but the handler's first poll is boxed when
    /// taken: a job that finishes on it (most) then lives in a small future, one allocation
    /// under the allocator's large-request size (a larger one made glibc consolidate its free
    /// lists at every job).
    async fn run(
        mut self,
        cx: TaskContext,
        cancel: CancelHandle,
        routed: std::result::Result<Registered, Unroutable>,
    ) -> Outcome {
        let lease = *cx.lease();
        let (attempt, max_attempts) = (cx.attempt(), cx.job().max_attempts);
        let entry = match (routed, self.unknown_tasks) {
            (Ok(r), _) => r,
            (Err(Unroutable::Unknown(e)), UnknownTasks::HandBack(after)) => {
                tracing::warn!(error = %e, ?after, "unknown task; handed back for another worker");
                return Box::pin(self.hand_back(&lease, after)).await;
            }
            (Err(Unroutable::Unknown(e) | Unroutable::NotATask(e)), _) => {
                return Box::pin(self.record_failure(&lease, attempt, None, e.give_up())).await
            }
        };
        let record = cx.clone();
        let args = record
            .job()
            .payload
            .get(crate::task::ARGS_FIELD)
            .unwrap_or(&serde_json::Value::Null);
        tracing::debug!("handler started");
        let handler = entry.handler.clone();
        // The clock is read only for a job with a time limit: most have none.
        let deadline = record
            .job()
            .timeout
            .or(entry.timeout)
            .map(|limit| (Instant::now() + limit, limit));
        let started = Instant::now();
        let result = {
            let mut fut = std::pin::pin!(AssertUnwindSafe(handler.handle(cx, args)).catch_unwind());
            // Many handlers finish on their first poll: they need no heartbeat timer.
            let first = std::future::poll_fn(|ctx| Poll::Ready(fut.as_mut().poll(ctx))).await;
            match first {
                Poll::Ready(r) => Ok(r),
                Poll::Pending => {
                    Box::pin(self.beat_until_done(fut.as_mut(), &lease, &cancel, deadline)).await
                }
            }
            // The handler is dropped here, before its job is handed back: a transactional
            // handler's transaction, which may hold the job's row, ends first.
        };
        self.meter.ran(started.elapsed());
        let retry = (attempt < max_attempts).then_some(entry);
        let result = match result {
            Err(Interrupted::Cancelled) => return Outcome::Settled,
            // A handler told the worker aborts, or that it ran out of time, that still
            // succeeded has done its work.
            Ok(Ok(Ok(done))) if self.aborting || self.timed_out.is_some() => Ok(Ok(done)),
            Ok(_) | Err(Interrupted::TimedOut) if self.timed_out.is_some() && !self.aborting => {
                let limit = self.timed_out.unwrap_or_default();
                let e = TaskError::new(format_args!("timed out after {limit:?}"));
                return Box::pin(self.record_failure(&lease, attempt, retry, e)).await;
            }
            Ok(r) if !self.aborting => r,
            Ok(_) | Err(Interrupted::Aborted) => {
                // Once: a worker aborting does not wait on a store that is down (the job then
                // runs again once its lease expires).
                let once = JobRun {
                    lease_until: Instant::now(),
                    ..self
                };
                return Box::pin(once.hand_back(&lease, Duration::ZERO)).await;
            }
            Err(Interrupted::LeaseLost | Interrupted::TimedOut) => return Outcome::Settled,
        };
        match result {
            Ok(Ok(Completion::Pending)) => {
                let done = record.done();
                match done.validate() {
                    Ok(()) => Outcome::Succeeded(done, self.meter.clone()),
                    // What no store can keep fails this job's attempt, not the batch of
                    // completions it would have joined.
                    Err(e) => {
                        let e = TaskError::new(e.to_string());
                        Box::pin(self.record_failure(&lease, attempt, retry, e)).await
                    }
                }
            }
            Ok(Ok(Completion::Committed)) => {
                Counters::bump(&self.shared.counts.processed, 1);
                self.meter.completed(1);
                tracing::debug!("completed in the handler's transaction");
                Outcome::Settled
            }
            Ok(Err(e)) if e.snoozed().is_some() => {
                let delay = e.snoozed().unwrap_or_default().min(MAX_DURATION);
                Box::pin(self.snooze(&lease, delay)).await
            }
            Ok(Err(e)) if e.is_store_failure() => {
                tracing::warn!(error = %e, "the store failed under the handler; the attempt is not counted");
                Box::pin(self.hand_back(&lease, RECORD_RETRY_MAX)).await
            }
            Ok(Err(e)) => Box::pin(self.record_failure(&lease, attempt, retry, e)).await,
            Err(panic) => {
                let e = TaskError::new(format!("handler panicked: {}", panic_message(&*panic)));
                Box::pin(self.record_failure(&lease, attempt, retry, e)).await
            }
        }
    }

    /// Drives a handler that did not finish at once, extending its lease every heartbeat.
    ///
    /// The heartbeats run beside the handler, never instead of it: a heartbeat may wait on
    /// the job's row while the handler's own transaction holds it, and that transaction must
    /// go on to commit. Once the lease is lost the handler is told, and given the rest of
    /// what would have been its lease to finish; its outcome is then recorded as any other
    /// (the store fences it: a transactional handler that removed its job before the
    /// heartbeat saw it gone has completed it).
    ///
    /// Past `deadline` (an instant and the time limit it stands for) the handler is told it
    /// timed out and given the abort grace to return.
    async fn beat_until_done<F: Future>(
        &mut self,
        mut fut: Pin<&mut F>,
        lease: &Lease,
        cancel: &CancelHandle,
        deadline: Option<(Instant, Duration)>,
    ) -> std::result::Result<F::Output, Interrupted> {
        let beats = heartbeats(
            self.store.clone(),
            *lease,
            self.heartbeat,
            self.lease_for,
            &mut self.lease_until,
        );
        let ended;
        tokio::select! {
            r = fut.as_mut() => return Ok(r),
            end = beats => ended = end,
            () = aborted(&mut self.abort) => {
                cancel.cancel(Cancelled::Abort);
                self.aborting = true;
                // The handler hears of it on its next poll, which the timeout gives it first.
                return match tokio::time::timeout(self.abort_grace, fut.as_mut()).await {
                    Ok(r) => Ok(r),
                    Err(_) => Err(Interrupted::Aborted),
                };
            }
            limit = past(deadline) => {
                cancel.cancel(Cancelled::Timeout);
                self.timed_out = Some(limit);
                tracing::warn!(?limit, "handler ran past its time limit; it is told to stop");
                return match tokio::time::timeout(self.abort_grace, fut.as_mut()).await {
                    Ok(r) => Ok(r),
                    Err(_) => Err(Interrupted::TimedOut),
                };
            }
        }
        if let BeatEnd::Cancelled = ended {
            cancel.cancel(Cancelled::Requested);
            Counters::bump(&self.shared.counts.cancelled, 1);
            self.meter.cancelled.increment(1);
            tracing::info!("job cancelled while it ran; the handler is told to stop");
            // Whatever it returns now, the job stays cancelled: its outcome is dropped.
            let _ = tokio::time::timeout(self.abort_grace, fut.as_mut()).await;
            return Err(Interrupted::Cancelled);
        }
        cancel.cancel(Cancelled::LeaseLost);
        tracing::warn!("lease lost while the handler ran; it is told to stop");
        match tokio::time::timeout(self.lease_for, fut.as_mut()).await {
            Ok(r) => Ok(r),
            Err(_) => {
                Counters::bump(&self.shared.counts.lost, 1);
                self.meter.lost.increment(1);
                Err(Interrupted::LeaseLost)
            }
        }
    }

    /// Hands the job back without counting the attempt, claimable after `delay` (an abort,
    /// a store failure under the handler, an unknown task), trying while the lease lasts.
    async fn hand_back(&self, lease: &Lease, delay: Duration) -> Outcome {
        match self.persist(|| self.store.snooze(lease, delay)).await {
            Ok(()) => {
                Counters::bump(&self.shared.counts.released, 1);
                self.meter.released.increment(1);
                tracing::info!(?delay, "job handed back");
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not hand the job back; it runs again once its lease expires")
            }
        }
        Outcome::Settled
    }

    /// Puts the job back to run after `delay`, as its handler asked, without counting the
    /// attempt, trying while the lease lasts.
    async fn snooze(&self, lease: &Lease, delay: Duration) -> Outcome {
        match self.persist(|| self.store.snooze(lease, delay)).await {
            Ok(()) => {
                Counters::bump(&self.shared.counts.snoozed, 1);
                self.meter.snoozed.increment(1);
                tracing::debug!(?delay, "job snoozed");
            }
            Err(Error::LeaseLost(_)) => {
                Counters::bump(&self.shared.counts.lost, 1);
                self.meter.lost.increment(1);
                tracing::warn!("snoozed after its lease was lost; not recorded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not snooze the job; it runs again once its lease expires")
            }
        }
        Outcome::Settled
    }

    /// Runs `op` until it succeeds, fails for good, or the lease runs out: a store that
    /// cannot be reached now is tried again, with a growing pause, rather than leaving the
    /// job to wait out its whole lease.
    async fn persist<T, Fut>(&self, op: impl Fn() -> Fut) -> Result<T>
    where
        Fut: Future<Output = Result<T>>,
    {
        let mut pause = RECORD_RETRY_FIRST;
        loop {
            let left = self.lease_until.saturating_duration_since(Instant::now());
            match bounded(left.max(RECORD_RETRY_MAX), op()).await {
                Err(e) if e.is_retryable() && Instant::now() + pause < self.lease_until => {
                    tracing::debug!(error = %e, ?pause, "store failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RECORD_RETRY_MAX);
                }
                done => return done,
            }
        }
    }

    /// Records a failed attempt; `retry` is the task's entry when attempts are left.
    async fn record_failure(
        &self,
        lease: &Lease,
        attempt: u32,
        retry: Option<Registered>,
        e: TaskError,
    ) -> Outcome {
        let mut failure = Failure::new(e.message());
        match retry {
            Some(entry) if !e.gives_up() => {
                let delay = e
                    .retry_delay()
                    .unwrap_or_else(|| entry.backoff.delay(attempt));
                // A delay past what a store can record waits as long as one can.
                failure = failure.retry_at(delay.min(MAX_DURATION));
            }
            _ => failure = failure.give_up(),
        }
        let counts = &self.shared.counts;
        match self
            .persist(|| self.store.fail(lease, failure.clone()))
            .await
        {
            Ok(JobState::Failed) => {
                Counters::bump(&counts.failed, 1);
                self.meter.failed();
                tracing::error!(error = %e, "job failed for good");
            }
            Ok(_) => {
                Counters::bump(&counts.retried, 1);
                self.meter.retried.increment(1);
                tracing::warn!(error = %e, "attempt failed; will retry");
            }
            Err(Error::LeaseLost(_)) => {
                Counters::bump(&counts.lost, 1);
                self.meter.lost.increment(1);
                tracing::warn!(error = %e, "attempt failed after its lease was lost; not recorded");
            }
            Err(store_err) => tracing::error!(
                error = %e, store_error = %store_err,
                "could not record the failure; the job runs again once its lease expires"
            ),
        }
        Outcome::Settled
    }
}

/// How a job's heartbeats ended.
enum BeatEnd {
    /// The lease is lost.
    Lost,
    /// The job was cancelled.
    Cancelled,
}

/// Prunes `store` every `every`, the first time at a random point within the first period.
/// Adds what the worker finished since its last report to the store's throughput record,
/// every `every`.
async fn report_forever(store: Arc<dyn QueueStore>, shared: Arc<Shared>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        report(&*store, &shared.meters, every).await;
    }
}

/// One throughput report, given up on after `within`; what it could not deliver waits for the
/// next.
async fn report(store: &dyn QueueStore, meters: &Meters, within: Duration) {
    let tallies = meters.take_tallies();
    if tallies.is_empty() {
        return;
    }
    if let Err(e) = bounded(within, store.record_throughput(&tallies)).await {
        meters.restore(&tallies);
        tracing::warn!(error = %e, "could not report throughput; trying again next period");
    }
}

/// Reports the store's queue gauges every `every`.
async fn gauges_forever(store: Arc<dyn QueueStore>, every: Duration) {
    loop {
        match bounded(every, store.queues()).await {
            Ok(queues) => crate::metrics::record_queues(&queues),
            Err(e) => tracing::warn!(error = %e, "could not read the queues for their gauges"),
        }
        tokio::time::sleep(every).await;
    }
}

async fn prune_forever(store: Arc<dyn QueueStore>, every: Duration) {
    tokio::time::sleep(every.mul_f64(fastrand::f64())).await;
    loop {
        // A full batch may leave more: go on at once, a few rounds at most.
        for _ in 0..PRUNE_ROUNDS {
            match store.prune().await {
                Ok(p) if p == Pruned::default() => break,
                Ok(p) => {
                    tracing::debug!(jobs = p.jobs, keys = p.keys, history = p.history, "pruned")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "prune failed; trying again next period");
                    break;
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// Extends `lease` every `every` by `lease_for`, moving `lease_until` on after each success;
/// resolves once the lease is lost or the job cancelled. A hint that the job may have been
/// cancelled ([`QueueStore::cancel_requested`]) brings the next heartbeat forward.
///
/// A heartbeat is given up on once it has gone unanswered for `every` (a connection gone
/// quiet, a server that stopped answering), and one that failed is tried again after a short
/// pause rather than a whole beat: the lease is renewed through anything that ends well
/// before it runs out, not only through what ends before the next beat.
async fn heartbeats(
    store: Arc<dyn QueueStore>,
    lease: Lease,
    every: Duration,
    lease_for: Duration,
    lease_until: &mut Instant,
) -> BeatEnd {
    // The first beat comes early: a cancel sent between the handler's start and the hint's
    // subscription below went unheard, and is learned from this extension instead.
    let mut next = Instant::now() + every.min(FIRST_BEAT);
    let mut pause = RECORD_RETRY_FIRST;
    let mut hint = store.cancel_requested(lease.job_id);
    let _ = (&mut hint).now_or_never();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = &mut hint => {
                // Listen again before extending: a cancellation heard while the extension
                // is on its way is then not missed (one heard before it, the extension sees).
                hint = store.cancel_requested(lease.job_id);
                let _ = (&mut hint).now_or_never();
            }
        }
        let sent = Instant::now();
        match bounded(every, store.extend(&lease, lease_for)).await {
            Ok(_) => {
                *lease_until = sent + lease_for;
                next = sent + every;
                pause = RECORD_RETRY_FIRST;
            }
            Err(Error::Cancelled(_)) => return BeatEnd::Cancelled,
            Err(Error::LeaseLost(_) | Error::NotFound(_)) => return BeatEnd::Lost,
            Err(e) => {
                tracing::warn!(error = %e, ?pause, "heartbeat failed; trying again");
                next = Instant::now() + pause;
                pause = (pause * 2).min(RECORD_RETRY_MAX);
            }
        }
    }
}

/// `op`, or a retryable [`Error::Unavailable`] if the store has not answered within `d`: no
/// store call of the worker waits without bound (on a lock held by a transaction whose client
/// is gone, on a server that stopped answering), and a call that gave up leaves its
/// connection to the pool to check.
async fn bounded<T>(d: Duration, op: impl Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(d, op).await {
        Ok(r) => r,
        Err(_) => Err(Error::Unavailable(
            format!("the store did not answer within {d:?}").into(),
        )),
    }
}

/// Resolves with the time limit once `deadline` has passed; never without one.
async fn past(deadline: Option<(Instant, Duration)>) -> Duration {
    match deadline {
        Some((at, limit)) => {
            tokio::time::sleep_until(at).await;
            limit
        }
        None => std::future::pending().await,
    }
}

/// Resolves once the worker aborts.
async fn aborted(abort: &mut watch::Receiver<bool>) {
    if abort.wait_for(|a| *a).await.is_err() {
        // The worker loop is gone, and with it this task's JoinSet: nothing to do.
        std::future::pending::<()>().await;
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

//! Typed tasks: serde types with a name, a queue and a handler, registered in a [`Registry`]
//! that a [`Worker`](crate::Worker) runs.
//!
//! A task's job carries the envelope `{"task": NAME, "args": <the task, serialized>}`, so
//! jobs put from SQL (`INSERT … VALUES ('emails', '{"task": "send_email", "args": {…}}')`)
//! run too.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Notify;

use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::job::{
    set_option, validate_queue_name, validate_span, BadOption, ClaimedJob, Done, IntoDelay,
    IntoWhen, Job, JobId, Lease, NewJob, When, DEFAULT_MAX_ATTEMPTS,
};
use crate::store::QueueStore;

/// The envelope field naming the task.
pub const TASK_FIELD: &str = "task";
/// The envelope field holding the task's arguments.
pub const ARGS_FIELD: &str = "args";

/// What a task is: its name, its queue, its defaults, and how it serializes.
///
/// Implement [`RunTask`] too for a handler run by the worker, or a backend's transactional
/// variant (`pq_sqlx::SqlxTask`, `pq_diesel::DieselTask`) for one that runs inside the job's
/// transaction.
///
/// ```
/// use pq_api::{Backoff, Task, TaskDefaults};
/// use std::time::Duration;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct SendEmail { to: String }
///
/// impl Task for SendEmail {
///     const NAME: &'static str = "send_email";
///     const QUEUE: &'static str = "emails";
///     fn defaults() -> TaskDefaults {
///         TaskDefaults::new().max_retries(3).retry_in(Duration::from_secs(30))
///     }
/// }
///
/// // malthe/pq's `eat('Cox', _expected_at='2m', _schedule_at='1m')`:
/// let job = SendEmail { to: "ada@example.com".into() }
///     .to_job()?
///     .delay("1m")?
///     .expected_at(Duration::from_secs(120));
/// assert_eq!(job.queue, "emails");
/// assert_eq!(job.max_attempts, 4);
/// assert_eq!(job.payload["task"], "send_email");
/// # Ok::<(), pq_api::Error>(())
/// ```
pub trait Task: Serialize + DeserializeOwned + Send + 'static {
    /// The name the worker routes on; unique within a [`Registry`].
    const NAME: &'static str;
    /// The queue the task's jobs go to.
    const QUEUE: &'static str = "default";

    /// Options every job of this task starts with; override per call on the [`NewJob`]
    /// that [`Task::to_job`] returns.
    fn defaults() -> TaskDefaults {
        TaskDefaults::new()
    }

    /// Encodes the task into its job's `args`: serde JSON unless overridden. To store a task
    /// in another format, override this and [`Task::decode`] with a [`Codec`]:
    ///
    /// ```
    /// # #[cfg(feature = "msgpack")] {
    /// use pq_api::{Codec, MessagePack, Result, Task};
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Thumbnail { image: Vec<u8> }
    /// impl Task for Thumbnail {
    ///     const NAME: &'static str = "thumbnail";
    ///     fn encode(&self) -> Result<serde_json::Value> { MessagePack::encode(self) }
    ///     fn decode(args: &serde_json::Value) -> Result<Self> { MessagePack::decode(args) }
    /// }
    /// let job = Thumbnail { image: vec![0; 64] }.to_job()?;
    /// assert_eq!(job.payload["args"]["codec"], "msgpack");
    /// # }
    /// # Ok::<(), pq_api::Error>(())
    /// ```
    fn encode(&self) -> Result<Value> {
        crate::codec::Json::encode(self)
    }

    /// Decodes the task from its job's `args`; the inverse of [`Task::encode`].
    fn decode(args: &Value) -> Result<Self> {
        crate::codec::Json::decode(args)
    }

    /// The job that runs this task, with the task's defaults applied.
    fn to_job(&self) -> Result<NewJob> {
        let defaults = Self::defaults();
        if let Some((what, reason)) = defaults.bad_option {
            return Err(Error::invalid(what, reason));
        }
        let mut envelope = serde_json::Map::with_capacity(2);
        envelope.insert(TASK_FIELD.into(), Value::from(Self::NAME));
        envelope.insert(ARGS_FIELD.into(), self.encode()?);
        let mut job = NewJob::from_json(Self::QUEUE, Value::Object(envelope))
            .priority(defaults.priority)
            .max_attempts(defaults.max_attempts);
        if let Some(at) = defaults.schedule_at {
            job = job.run_at(at);
        }
        if let Some(at) = defaults.expected_at {
            job = job.expected_at(at);
        }
        if let Some(keep) = defaults.keep_history {
            job = job.keep_history(keep);
        }
        Ok(job)
    }
}

/// A task's handler, run by the [`Worker`](crate::Worker).
///
/// Return `Ok(())` to complete the job, an error to fail the attempt (retried by the task's
/// [`Backoff`] while attempts are left). A panic counts as a failed attempt.
///
/// ```
/// use pq_api::{RunTask, Task, TaskContext, TaskError};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Resize { image: String }
/// impl Task for Resize { const NAME: &'static str = "resize"; }
///
/// impl RunTask for Resize {
///     async fn run(self, cx: TaskContext) -> Result<(), TaskError> {
///         if self.image.is_empty() {
///             return Err(TaskError::new("no image").give_up());
///         }
///         tokio::select! {
///             _ = cx.cancelled() => Err(TaskError::new("cancelled")),
///             _ = tokio::time::sleep(std::time::Duration::from_millis(1)) => Ok(()),
///         }
///     }
/// }
/// ```
pub trait RunTask: Task {
    /// Runs the task. Watch [`TaskContext::cancelled`] in long handlers: once it fires, stop
    /// (see [`Cancelled`] for what becomes of the outcome).
    fn run(self, cx: TaskContext) -> impl Future<Output = Result<(), TaskError>> + Send;
}

/// Defaults a [`Task`] declares for its jobs (malthe/pq's `schedule_at`, `max_retries`,
/// `retry_in`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TaskDefaults {
    /// When jobs run (`None`: at once).
    pub schedule_at: Option<When>,
    /// When jobs are expected to be done (claimed sooner than jobs expected later).
    pub expected_at: Option<When>,
    /// Priority (higher first).
    pub priority: i32,
    /// Attempts before a job is left failed.
    pub max_attempts: u32,
    /// Delay before each retry.
    pub backoff: Backoff,
    /// Keep a record of each completed job this long ([`NewJob::keep_history`]).
    pub keep_history: Option<Duration>,
    /// The longest one attempt may run, for jobs without their own ([`TaskDefaults::timeout`]).
    pub timeout: Option<Duration>,
    /// An option given a string that is no time: the task's jobs are refused.
    bad_option: BadOption,
}

impl Default for TaskDefaults {
    fn default() -> Self {
        TaskDefaults {
            schedule_at: None,
            expected_at: None,
            priority: 0,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff: Backoff::default(),
            keep_history: None,
            timeout: None,
            bad_option: None,
        }
    }
}

impl TaskDefaults {
    /// Run at once, priority 0, [`DEFAULT_MAX_ATTEMPTS`] attempts, [`Backoff::default`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Jobs run at `when`: a [`std::time::Duration`] from enqueueing, an instant, or a string
    /// such as `"1m"` ([`IntoWhen`]; one that is no time has the task's jobs refused by
    /// [`Task::to_job`]).
    pub fn schedule_at(mut self, when: impl IntoWhen) -> Self {
        set_option(
            &mut self.schedule_at,
            &mut self.bad_option,
            "schedule_at",
            when.into_when(),
        );
        self
    }

    /// Jobs are expected done by `when`: the same forms as
    /// [`schedule_at`](TaskDefaults::schedule_at).
    pub fn expected_at(mut self, when: impl IntoWhen) -> Self {
        set_option(
            &mut self.expected_at,
            &mut self.bad_option,
            "expected_at",
            when.into_when(),
        );
        self
    }

    /// Priority of the task's jobs.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Retries after the first attempt (`max_attempts = retries + 1`).
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_attempts = retries.saturating_add(1);
        self
    }

    /// Attempts in all, the first included.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Retry after a fixed delay (malthe/pq's `retry_in`): a [`Duration`] or a string such as
    /// `"30s"` ([`IntoDelay`]; one that is no delay has the task's jobs refused by
    /// [`Task::to_job`]).
    pub fn retry_in(mut self, delay: impl IntoDelay) -> Self {
        let mut fixed = None;
        set_option(
            &mut fixed,
            &mut self.bad_option,
            "retry_in",
            delay.into_delay(),
        );
        match fixed {
            Some(d) => self.backoff(Backoff::Fixed(d)),
            None => self,
        }
    }

    /// Retry by this policy.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Keep a record of each completed job, with its result, for `retention`.
    pub fn keep_history(mut self, retention: Duration) -> Self {
        self.keep_history = Some(retention);
        self
    }

    /// The longest one attempt at a job of the task may run, unless the job sets its own
    /// ([`NewJob::timeout`], which describes what happens past it): a [`Duration`] or a
    /// string such as `"30s"` ([`IntoDelay`]; one that is no delay has the task's jobs
    /// refused by [`Task::to_job`]). Read by the worker when it runs a job, so a change
    /// reaches jobs already queued.
    ///
    /// ```
    /// # use pq_api::{Task, TaskDefaults};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Export;
    /// impl Task for Export {
    ///     const NAME: &'static str = "export";
    ///     fn defaults() -> TaskDefaults {
    ///         TaskDefaults::new().timeout("5m")
    ///     }
    /// }
    /// ```
    pub fn timeout(mut self, limit: impl IntoDelay) -> Self {
        set_option(
            &mut self.timeout,
            &mut self.bad_option,
            "timeout",
            limit.into_delay(),
        );
        self
    }
}

/// How long to wait before retrying a failed attempt.
///
/// ```
/// use pq_api::Backoff;
/// use std::time::Duration;
/// let b = Backoff::exponential(Duration::from_secs(1), Duration::from_secs(60)).jitter(false);
/// assert_eq!(b.delay(1), Duration::from_secs(1));
/// assert_eq!(b.delay(3), Duration::from_secs(4));
/// assert_eq!(b.delay(30), Duration::from_secs(60));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backoff {
    /// The same delay every time.
    Fixed(Duration),
    /// `first`, doubled after each failed attempt, at most `max`; with `jitter`, each delay
    /// is drawn uniformly from its upper half, so failures of many jobs spread out.
    Exponential {
        /// Delay after the first failed attempt.
        first: Duration,
        /// The cap.
        max: Duration,
        /// Randomise each delay within `[d/2, d]`.
        jitter: bool,
    },
}

impl Default for Backoff {
    /// Exponential from 1 s up to 1 h, with jitter.
    fn default() -> Self {
        Backoff::exponential(Duration::from_secs(1), Duration::from_secs(3600))
    }
}

impl Backoff {
    /// Exponential backoff with jitter.
    pub fn exponential(first: Duration, max: Duration) -> Self {
        Backoff::Exponential {
            first,
            max,
            jitter: true,
        }
    }

    /// Turns jitter on or off (exponential only).
    pub fn jitter(self, on: bool) -> Self {
        match self {
            Backoff::Exponential { first, max, .. } => Backoff::Exponential {
                first,
                max,
                jitter: on,
            },
            fixed => fixed,
        }
    }

    /// The delay after failed attempt number `attempt` (1 for the first).
    pub fn delay(&self, attempt: u32) -> Duration {
        match *self {
            Backoff::Fixed(d) => d,
            Backoff::Exponential { first, max, jitter } => {
                let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
                let d = first.saturating_mul(factor).min(max);
                if jitter {
                    let half = d / 2;
                    let span = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
                    half + Duration::from_nanos(fastrand::u64(0..=span))
                } else {
                    d
                }
            }
        }
    }
}

/// Why a handler was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cancelled {
    /// The job's lease was lost (reclaimed after expiring, cancelled, purged): another
    /// holder may run it, and this handler's outcome is not recorded.
    LeaseLost,
    /// The worker is stopping in [`StopMode::Abort`](crate::StopMode::Abort): the handler has
    /// the worker's [`abort_grace`](crate::Worker::abort_grace) to return. If it succeeds
    /// within it its job is completed; otherwise the job is handed back, its attempt not
    /// counted (an error returned now is no failure of the job).
    Abort,
    /// The job was cancelled ([`QueueStore::cancel`]): it stays
    /// cancelled whatever the handler returns, so it should stop at once; the worker drops it
    /// after the worker's [`abort_grace`](crate::Worker::abort_grace).
    Requested,
    /// The attempt ran past its time limit ([`NewJob::timeout`],
    /// [`TaskDefaults::timeout`]): the handler has the worker's
    /// [`abort_grace`](crate::Worker::abort_grace) to return. If it succeeds within it its job
    /// is completed; otherwise the attempt counts as failed, "timed out after …".
    Timeout,
}

impl Cancelled {
    /// Its code in [`ContextInner::cancelled`] (0 means not cancelled).
    fn code(self) -> u8 {
        match self {
            Cancelled::LeaseLost => 1,
            Cancelled::Abort => 2,
            Cancelled::Timeout => 3,
            Cancelled::Requested => 4,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Cancelled::LeaseLost),
            2 => Some(Cancelled::Abort),
            3 => Some(Cancelled::Timeout),
            4 => Some(Cancelled::Requested),
            _ => None,
        }
    }
}

/// What a handler gets besides its task: the job, its lease, the store, and a cancellation
/// signal. Cheap to clone.
#[derive(Clone)]
pub struct TaskContext {
    inner: Arc<ContextInner>,
}

struct ContextInner {
    job: Job,
    lease: Lease,
    store: Arc<dyn QueueStore>,
    /// Why the handler was cancelled: 0 if it was not, else [`Cancelled::code`].
    cancelled: AtomicU8,
    /// Wakes [`TaskContext::cancelled`] waiters. Nothing is sent when a job simply ends, so
    /// a job that is never cancelled costs one atomic and no wake-up.
    cancel_wake: Notify,
    key_state: Option<Value>,
    /// What the handler asked to record on completion: result, new key state.
    record: Mutex<(Option<Value>, Option<Value>)>,
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("job", &self.inner.job.id)
            .field("attempt", &self.inner.job.attempts)
            .finish_non_exhaustive()
    }
}

impl TaskContext {
    /// A context for `job` held under `lease`, and the handle that cancels it. The worker
    /// builds these; call it to drive a handler by hand (in a test, or a custom runner).
    ///
    /// ```
    /// use pq_api::{Cancelled, Job, JobId, Lease, TaskContext};
    /// use std::sync::Arc;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let job = Job::new(JobId(1), "default", serde_json::json!({}), chrono::Utc::now());
    /// let lease = Lease { job_id: JobId(1), token: 7 };
    /// let (cx, cancel) = TaskContext::new(job, lease, Arc::new(pq_memory::MemoryStore::new()));
    /// assert!(!cx.is_cancelled());
    /// cancel.cancel(Cancelled::Abort);
    /// assert_eq!(cx.cancelled().await, Cancelled::Abort);
    /// # });
    /// ```
    pub fn new(job: Job, lease: Lease, store: Arc<dyn QueueStore>) -> (Self, CancelHandle) {
        Self::claimed(ClaimedJob::new(job, lease), store)
    }

    /// A context for a claimed job (with its key state), and the handle that cancels it.
    pub fn claimed(claimed: ClaimedJob, store: Arc<dyn QueueStore>) -> (Self, CancelHandle) {
        let inner = Arc::new(ContextInner {
            job: claimed.job,
            lease: claimed.lease,
            store,
            cancelled: AtomicU8::new(0),
            cancel_wake: Notify::new(),
            key_state: claimed.key_state,
            record: Mutex::new((None, None)),
        });
        (
            TaskContext {
                inner: inner.clone(),
            },
            CancelHandle { inner },
        )
    }

    /// The job as claimed, its payload whole (the handler's `args` are borrowed from it).
    pub fn job(&self) -> &Job {
        &self.inner.job
    }

    /// The job's id.
    pub fn id(&self) -> JobId {
        self.inner.job.id
    }

    /// Which attempt this is, 1 for the first.
    pub fn attempt(&self) -> u32 {
        self.inner.job.attempts
    }

    /// Whether a failure now would leave the job failed.
    pub fn is_last_attempt(&self) -> bool {
        self.inner.job.attempts >= self.inner.job.max_attempts
    }

    /// The lease the job is held under (a transactional handler completes with it).
    pub fn lease(&self) -> &Lease {
        &self.inner.lease
    }

    /// The store the job came from, to enqueue follow-up jobs.
    pub fn store(&self) -> &Arc<dyn QueueStore> {
        &self.inner.store
    }

    /// The state of the job's serial or cursor key when the job was claimed
    /// (`Value::Null` if none was saved yet); `None` for a job without a key.
    pub fn key_state(&self) -> Option<&Value> {
        self.inner.key_state.as_ref()
    }

    /// Saves `state` as the key's new state when the job completes (not if it fails).
    /// A job without a key gets [`Error::InvalidArgument`].
    pub fn set_key_state(&self, state: Value) -> Result<()> {
        if self.inner.job.key().is_none() {
            return Err(Error::invalid(
                "key state",
                format!("job {} has no serial or cursor key", self.inner.job.id),
            ));
        }
        self.record().1 = Some(state);
        Ok(())
    }

    /// Reports the job's progress: saved in the store at once, returned by
    /// [`QueueStore::job`] while the job runs and kept for later attempts, which find it in
    /// [`TaskContext::job`]'s `progress` (a handler can resume where an earlier attempt got).
    /// Fails as [`QueueStore::set_progress`] does: [`Error::LeaseLost`] once the lease is lost,
    /// [`Error::Cancelled`] once the job was cancelled.
    ///
    /// ```
    /// use pq_api::{Claim, QueueStore, QueueStoreExt, TaskContext};
    /// use std::sync::Arc;
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let store: Arc<dyn QueueStore> = Arc::new(pq_memory::MemoryStore::new());
    /// let id = store.put("imports", &"rows.csv").await?;
    /// let claimed = store.claim(&Claim::new(["imports"])).await?.remove(0);
    /// let (cx, _cancel) = TaskContext::claimed(claimed, store.clone());
    /// cx.progress(serde_json::json!({"rows": 500})).await?;
    /// assert_eq!(store.job(id).await?.progress, Some(serde_json::json!({"rows": 500})));
    /// # Ok::<(), pq_api::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn progress(&self, progress: Value) -> Result<()> {
        self.inner
            .store
            .set_progress(&self.inner.lease, progress)
            .await
    }

    /// Records `result` in the job's history record when it completes (kept only for jobs put
    /// with [`NewJob::keep_history`]). A result no store can keep (a NUL character in a
    /// string or key, [`validate_json`](crate::validate::validate_json)) fails the job's
    /// attempt once the handler returns.
    pub fn set_result(&self, result: Value) {
        self.record().0 = Some(result);
    }

    /// What completing the job records: its lease, and the result and key state set so far.
    /// A transactional handler completes its job with this.
    pub fn done(&self) -> Done {
        let record = self.record();
        Done {
            lease: self.inner.lease,
            result: record.0.clone(),
            key_state: record.1.clone(),
        }
    }

    fn record(&self) -> std::sync::MutexGuard<'_, (Option<Value>, Option<Value>)> {
        // Only whole values are ever stored, so a poisoned lock holds a consistent value.
        self.inner.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why the handler was cancelled, if it was.
    pub fn cancelled_because(&self) -> Option<Cancelled> {
        Cancelled::from_code(self.inner.cancelled.load(Ordering::Acquire))
    }

    /// Whether the handler was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled_because().is_some()
    }

    /// Resolves once the handler is cancelled (never, if it is not).
    pub async fn cancelled(&self) -> Cancelled {
        loop {
            // Registered before looking, so a cancellation between the look and the wait
            // still wakes it.
            let woken = self.inner.cancel_wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if let Some(why) = self.cancelled_because() {
                return why;
            }
            woken.await;
        }
    }
}

/// Cancels a running handler's [`TaskContext`]: the worker keeps one per running job.
/// Cheap to clone; dropping it cancels nothing.
#[derive(Clone)]
pub struct CancelHandle {
    inner: Arc<ContextInner>,
}

impl fmt::Debug for CancelHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelHandle")
            .field("job", &self.inner.job.id)
            .finish_non_exhaustive()
    }
}

impl CancelHandle {
    /// Cancels the handler for `why` (a later call replaces the reason) and wakes every
    /// [`TaskContext::cancelled`] waiting on it.
    pub fn cancel(&self, why: Cancelled) {
        self.inner.cancelled.store(why.code(), Ordering::Release);
        self.inner.cancel_wake.notify_waiters();
    }
}

/// A failed attempt, as a handler reports it.
///
/// Any [`std::error::Error`] converts with `?`; [`TaskError::new`] takes anything printable.
/// The message, with the error's sources, becomes the job's `last_error`.
#[derive(Debug)]
pub struct TaskError {
    message: String,
    give_up: bool,
    retry_in: Option<Duration>,
    store_failed: bool,
    snooze: Option<Duration>,
}

impl TaskError {
    /// A failure with this message, retried by the task's [`Backoff`].
    pub fn new(message: impl fmt::Display) -> Self {
        TaskError {
            message: message.to_string(),
            give_up: false,
            retry_in: None,
            store_failed: false,
            snooze: None,
        }
    }

    /// Not yet: put the job back to run after `delay` (a [`Duration`] or a string such as
    /// `"30s"`: [`IntoDelay`]) without counting the attempt or recording an error. The job
    /// keeps its attempts and its `last_error`; the worker counts it in [`WorkerStatus::snoozed`](crate::WorkerStatus::snoozed). A delay past what
    /// a store can record waits as long as one can. A string that is no duration makes this
    /// a failed attempt saying so.
    ///
    /// ```
    /// # use pq_api::{RunTask, Task, TaskContext, TaskError};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Report;
    /// # impl Task for Report { const NAME: &'static str = "report"; }
    /// # fn ready() -> bool { false }
    /// impl RunTask for Report {
    ///     async fn run(self, _cx: TaskContext) -> Result<(), TaskError> {
    ///         if !ready() {
    ///             return Err(TaskError::snooze("30s")); // try again in 30 s
    ///         }
    ///         Ok(())
    ///     }
    /// }
    /// ```
    pub fn snooze(delay: impl IntoDelay) -> Self {
        match delay.into_delay() {
            Ok(d) => TaskError {
                snooze: Some(d),
                ..TaskError::new(format_args!("snoozed for {d:?}"))
            },
            Err(e) => TaskError::new(format_args!("cannot snooze: {e}")),
        }
    }

    /// The delay the handler snoozed its job for ([`TaskError::snooze`]), if it did.
    pub fn snoozed(&self) -> Option<Duration> {
        self.snooze
    }

    /// The store, not the handler, failed: the database could not be reached, or a connection
    /// broke under the handler's transaction. The attempt is not counted: the worker hands the
    /// job back ([`QueueStore::snooze`]) to run again shortly. A retryable [`Error`]
    /// ([`Error::is_retryable`]) converted with `?`, or found among an error's sources, is
    /// marked so by itself. Any other error, an I/O error of the handler's own calls among
    /// them, is the handler's failure: a service it calls being down is retried by the task's
    /// backoff and counts its attempts.
    pub fn store_failed(mut self) -> Self {
        self.store_failed = true;
        self
    }

    /// Whether the store failed rather than the handler ([`TaskError::store_failed`]).
    pub fn is_store_failure(&self) -> bool {
        self.store_failed
    }

    /// Do not retry: the job is left failed now (it can still be retried by id).
    pub fn give_up(mut self) -> Self {
        self.give_up = true;
        self
    }

    /// Retry after `delay` instead of the task's backoff.
    pub fn retry_in(mut self, delay: Duration) -> Self {
        self.retry_in = Some(delay);
        self
    }

    /// The message recorded on the job.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the job is to be left failed at once.
    pub fn gives_up(&self) -> bool {
        self.give_up
    }

    /// The retry delay asked for, overriding the backoff.
    pub fn retry_delay(&self) -> Option<Duration> {
        self.retry_in
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for TaskError {
    fn from(err: E) -> Self {
        let mut message = err.to_string();
        let mut store_failed = (&err as &dyn std::any::Any)
            .downcast_ref::<Error>()
            .is_some_and(Error::is_retryable);
        let mut source = err.source();
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            store_failed |= s.downcast_ref::<Error>().is_some_and(Error::is_retryable);
            source = s.source();
        }
        let error = TaskError::new(message);
        if store_failed {
            error.store_failed()
        } else {
            error
        }
    }
}

/// Decodes a task from its job's `args`; a payload that cannot decode gives up (retrying
/// would not help).
pub fn decode_args<T: Task>(args: &Value) -> Result<T, TaskError> {
    T::decode(args).map_err(|e| {
        TaskError::new(format!("cannot decode the args of task {:?}: {e}", T::NAME)).give_up()
    })
}

/// How a handler's success was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Completion {
    /// Not yet: the worker completes the job (batched with others).
    Pending,
    /// The handler completed the job itself, in the transaction that holds its writes.
    Committed,
}

/// A type-erased handler, what the [`Registry`] holds. [`RunTask`] types get one through
/// [`Registry::register`]; backends implement it for their transactional variants.
#[async_trait]
pub trait JobHandler: Send + Sync + 'static {
    /// Runs the job whose envelope carried `args` (borrowed from the job's payload, which
    /// [`TaskContext::job`] also shows).
    async fn handle(&self, cx: TaskContext, args: &Value) -> Result<Completion, TaskError>;
}

struct Typed<T>(std::marker::PhantomData<fn() -> T>);

#[async_trait]
impl<T: RunTask> JobHandler for Typed<T> {
    async fn handle(&self, cx: TaskContext, args: &Value) -> Result<Completion, TaskError> {
        decode_args::<T>(args)?.run(cx).await?;
        Ok(Completion::Pending)
    }
}

/// A registered task; cloning it is one reference count.
#[derive(Clone)]
pub(crate) struct Registered {
    pub(crate) name: &'static str,
    pub(crate) queue: &'static str,
    pub(crate) handler: Arc<dyn JobHandler>,
    pub(crate) backoff: Backoff,
    /// The task's time limit for a job without its own.
    pub(crate) timeout: Option<Duration>,
}

/// The tasks a worker knows, by name.
///
/// ```
/// # use pq_api::{RunTask, Task, TaskContext, TaskError};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct A;
/// # impl Task for A { const NAME: &'static str = "a"; const QUEUE: &'static str = "q1"; }
/// # impl RunTask for A { async fn run(self, _: TaskContext) -> Result<(), TaskError> { Ok(()) } }
/// # #[derive(serde::Serialize, serde::Deserialize)] struct B;
/// # impl Task for B { const NAME: &'static str = "b"; const QUEUE: &'static str = "q2"; }
/// # impl RunTask for B { async fn run(self, _: TaskContext) -> Result<(), TaskError> { Ok(()) } }
/// use pq_api::Registry;
/// let registry = Registry::new().register::<A>()?.register::<B>()?;
/// assert_eq!(registry.queues(), ["q1", "q2"]);
/// assert!(Registry::new().register::<A>()?.register::<A>().is_err());
/// # Ok::<(), pq_api::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct Registry {
    tasks: HashMap<&'static str, Registered>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: BTreeSet<&str> = self.tasks.keys().copied().collect();
        f.debug_struct("Registry").field("tasks", &names).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `T`, run by its [`RunTask::run`]. A name registered twice, or an invalid
    /// queue name, is rejected.
    pub fn register<T: RunTask>(self) -> Result<Self> {
        self.register_with::<T>(Typed::<T>(std::marker::PhantomData))
    }

    /// Registers `T`, run by `handler` (a backend's transactional handler, say). A name
    /// registered twice, an invalid queue name, or defaults with an invalid option (a time
    /// limit of nothing, a string that is no time) are rejected.
    pub fn register_with<T: Task>(mut self, handler: impl JobHandler) -> Result<Self> {
        validate_queue_name(T::QUEUE)?;
        let defaults = T::defaults();
        if let Some((what, reason)) = defaults.bad_option {
            return Err(Error::invalid(what, reason));
        }
        validate_span("timeout", defaults.timeout)?;
        if self.tasks.contains_key(T::NAME) {
            return Err(Error::invalid(
                "task name",
                format!("{:?} is registered twice", T::NAME),
            ));
        }
        let entry = Registered {
            name: T::NAME,
            queue: T::QUEUE,
            handler: Arc::new(handler),
            backoff: defaults.backoff,
            timeout: defaults.timeout,
        };
        self.tasks.insert(T::NAME, entry);
        Ok(self)
    }

    /// The queues of the registered tasks, sorted, each once: what a worker claims from.
    pub fn queues(&self) -> Vec<String> {
        let set: BTreeSet<&str> = self.tasks.values().map(|r| r.queue).collect();
        set.into_iter().map(str::to_owned).collect()
    }

    /// The registered task names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let set: BTreeSet<&str> = self.tasks.keys().copied().collect();
        set.into_iter().collect()
    }

    /// Finds the handler for a job's payload.
    pub(crate) fn route(&self, payload: &Value) -> Result<&Registered, Unroutable> {
        let Some(obj) = payload.as_object() else {
            return Err(Unroutable::NotATask(not_a_task()));
        };
        let Some(name) = obj.get(TASK_FIELD).and_then(Value::as_str) else {
            return Err(Unroutable::NotATask(not_a_task()));
        };
        let Some(entry) = self.tasks.get(name) else {
            return Err(Unroutable::Unknown(TaskError::new(format!(
                "no handler for task {name:?} on this worker (it knows {:?})",
                self.names()
            ))));
        };
        Ok(entry)
    }
}

/// Why a job has no handler on a worker.
#[derive(Debug)]
pub(crate) enum Unroutable {
    /// The payload is no task envelope: no worker can run it.
    NotATask(TaskError),
    /// The envelope names a task this worker does not know (another worker may).
    Unknown(TaskError),
}

fn not_a_task() -> TaskError {
    TaskError::new(format!(
        "payload is not a task: expected {{\"{TASK_FIELD}\": name, \"{ARGS_FIELD}\": …}}"
    ))
    .give_up()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Report;

    impl Task for Report {
        const NAME: &'static str = "report";
        fn defaults() -> TaskDefaults {
            TaskDefaults::new()
                .schedule_at("1m")
                .expected_at("2m")
                .retry_in("30s")
        }
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Broken;

    impl Task for Broken {
        const NAME: &'static str = "broken";
        fn defaults() -> TaskDefaults {
            TaskDefaults::new().retry_in("a while")
        }
    }

    #[test]
    fn task_defaults_take_time_strings() -> Result<()> {
        let job = Report.to_job()?;
        assert_eq!(job.run_at, Some(When::In(Duration::from_secs(60))));
        assert_eq!(job.expected_at, Some(When::In(Duration::from_secs(120))));
        assert_eq!(
            Report::defaults().backoff,
            Backoff::Fixed(Duration::from_secs(30))
        );
        match Broken.to_job() {
            Err(Error::InvalidArgument { what, .. }) => assert_eq!(what, "retry_in"),
            other => panic!("a bad retry_in must refuse the job: {other:?}"),
        }
        Ok(())
    }
}

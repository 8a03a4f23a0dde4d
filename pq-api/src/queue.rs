//! Steering queues at run time: pausing them, limiting them, and how long they keep what
//! ended badly. Settings live in the store, so every worker process sees them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::job::{validate_queue_name, JobId, JobState, QueueStats, MAX_DURATION};

/// How long failed and cancelled jobs are kept for inspection before
/// [`QueueStore::prune`](crate::QueueStore::prune) removes them, unless the store or the queue
/// sets another period: a week.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The largest concurrency limit, and the largest number of jobs a rate limit lets start in
/// its period: each is kept as that many places in the store.
pub const MAX_QUEUE_LIMIT: u32 = 10_000;

/// A rate limit: at most `jobs` jobs of the queue start in any window of `per`.
///
/// ```
/// use pq_api::Rate;
/// use std::time::Duration;
/// let rate = Rate::new(100, Duration::from_secs(60)); // 100 a minute
/// assert_eq!(rate.jobs, 100);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rate {
    /// How many jobs may start in a window.
    pub jobs: u32,
    /// How long the window is.
    pub per: Duration,
}

impl Rate {
    /// At most `jobs` starts in any window of `per`.
    pub fn new(jobs: u32, per: Duration) -> Self {
        Rate { jobs, per }
    }
}

/// One setting of a queue, changed by
/// [`QueueStore::configure_queue`](crate::QueueStore::configure_queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueSetting {
    /// Paused (`true`): the queue's jobs are not claimed; running ones finish. Resumed
    /// (`false`): waiting workers are woken at once.
    Paused(bool),
    /// At most this many of the queue's jobs run at once, across every worker (`None`: no
    /// limit). A lowered limit applies to the claims that follow; running jobs are not
    /// stopped.
    Concurrency(Option<u32>),
    /// At most so many of the queue's jobs start in any window ([`Rate`]; `None`: no limit).
    Rate(Option<Rate>),
    /// How long the queue's failed and cancelled jobs are kept (`None`: the store's period,
    /// [`DEFAULT_RETENTION`] unless set).
    Retention(Option<Duration>),
}

impl QueueSetting {
    /// Checks the setting: limits from 1 to [`MAX_QUEUE_LIMIT`], periods above zero and at
    /// most [`MAX_DURATION`].
    ///
    /// ```
    /// use pq_api::QueueSetting;
    /// assert!(QueueSetting::Concurrency(Some(5)).validate().is_ok());
    /// assert!(QueueSetting::Concurrency(Some(0)).validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<()> {
        let limit = |what: &'static str, n: u32| {
            if n == 0 || n > MAX_QUEUE_LIMIT {
                Err(Error::invalid(
                    what,
                    format!("must be 1 to {MAX_QUEUE_LIMIT}, not {n}"),
                ))
            } else {
                Ok(())
            }
        };
        let period = |what: &'static str, d: Duration| {
            if d < Duration::from_micros(1) || d > MAX_DURATION {
                Err(Error::invalid(
                    what,
                    "must be at least a microsecond and at most 100 years",
                ))
            } else {
                Ok(())
            }
        };
        match *self {
            QueueSetting::Paused(_)
            | QueueSetting::Concurrency(None)
            | QueueSetting::Rate(None)
            | QueueSetting::Retention(None) => Ok(()),
            QueueSetting::Concurrency(Some(n)) => limit("concurrency", n),
            QueueSetting::Rate(Some(r)) => {
                limit("rate", r.jobs)?;
                period("rate period", r.per)
            }
            QueueSetting::Retention(Some(d)) => period("retention", d),
        }
    }
}

/// A queue's settings: what [`QueueSetting`]s were made, each left at its default otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct QueueConfig {
    /// Whether the queue is paused.
    pub paused: bool,
    /// Its concurrency limit.
    pub concurrency: Option<u32>,
    /// Its rate limit.
    pub rate: Option<Rate>,
    /// Its retention of failed and cancelled jobs, if it has its own.
    pub retention: Option<Duration>,
}

impl QueueConfig {
    /// The config with `setting` applied.
    ///
    /// ```
    /// use pq_api::{QueueConfig, QueueSetting};
    /// let c = QueueConfig::default().with(QueueSetting::Paused(true));
    /// assert!(c.paused);
    /// ```
    pub fn with(mut self, setting: QueueSetting) -> Self {
        match setting {
            QueueSetting::Paused(p) => self.paused = p,
            QueueSetting::Concurrency(n) => self.concurrency = n,
            QueueSetting::Rate(r) => self.rate = r,
            QueueSetting::Retention(d) => self.retention = d,
        }
        self
    }

    /// Whether every setting is at its default (the store then need not keep it).
    pub fn is_default(&self) -> bool {
        *self == QueueConfig::default()
    }
}

/// A queue as [`QueueStore::queues`](crate::QueueStore::queues) lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct QueueInfo {
    /// Its name.
    pub name: String,
    /// Its settings.
    pub config: QueueConfig,
    /// Its jobs counted by state.
    pub stats: QueueStats,
    /// How long its oldest ready job has been claimable, by the store's clock (`None`: no job
    /// is ready). A queue whose oldest ready job keeps ageing has no worker keeping up.
    pub oldest_ready: Option<Duration>,
}

impl QueueInfo {
    /// A queue named `name`: for stores outside this crate (the struct is `#[non_exhaustive]`).
    pub fn new(name: impl Into<String>, config: QueueConfig, stats: QueueStats) -> Self {
        QueueInfo {
            name: name.into(),
            config,
            stats,
            oldest_ready: None,
        }
    }

    /// The info with the age of its oldest ready job set.
    pub fn with_oldest_ready(mut self, age: Option<Duration>) -> Self {
        self.oldest_ready = age;
        self
    }
}

/// Jobs of one queue that workers finished since their last report: what
/// [`QueueStore::record_throughput`](crate::QueueStore::record_throughput) adds to the store's
/// per-minute record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Tally {
    /// The queue.
    pub queue: String,
    /// Jobs completed.
    pub completed: u64,
    /// Jobs that failed for good (out of attempts, or giving up).
    pub failed: u64,
}

impl Tally {
    /// A tally of `queue`.
    pub fn new(queue: impl Into<String>, completed: u64, failed: u64) -> Self {
        Tally {
            queue: queue.into(),
            completed,
            failed,
        }
    }
}

/// How many jobs of a queue workers finished in one minute, as
/// [`QueueStore::throughput`](crate::QueueStore::throughput) reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Throughput {
    /// The queue.
    pub queue: String,
    /// The minute's start, by the store's clock.
    pub minute: DateTime<Utc>,
    /// Jobs completed in it.
    pub completed: u64,
    /// Jobs that failed for good in it.
    pub failed: u64,
}

impl Throughput {
    /// A minute's record: for stores outside this crate (the struct is `#[non_exhaustive]`).
    pub fn new(
        queue: impl Into<String>,
        minute: DateTime<Utc>,
        completed: u64,
        failed: u64,
    ) -> Self {
        Throughput {
            queue: queue.into(),
            minute,
            completed,
            failed,
        }
    }
}

/// How long the per-minute throughput records are kept before
/// [`QueueStore::prune`](crate::QueueStore::prune) removes them: a day.
pub const THROUGHPUT_KEPT: Duration = Duration::from_secs(24 * 3600);

/// The most jobs one [`QueueStore::list_jobs`](crate::QueueStore::list_jobs) call lists.
pub const MAX_LIST_LIMIT: u32 = 1_000;

/// Which jobs [`QueueStore::list_jobs`](crate::QueueStore::list_jobs) lists: newest first, optionally of
/// one queue and one state, a page at a time.
///
/// ```
/// use pq_api::{JobFilter, JobState};
/// let failed = JobFilter::new().queue("emails").state(JobState::Failed).limit(20);
/// assert_eq!(failed.limit, 20);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobFilter {
    /// Only jobs of this queue.
    pub queue: Option<String>,
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs with a smaller id than this (the last id of the page before).
    pub before: Option<JobId>,
    /// At most this many (1 to [`MAX_LIST_LIMIT`]; default 50).
    pub limit: u32,
}

impl Default for JobFilter {
    fn default() -> Self {
        JobFilter {
            queue: None,
            state: None,
            before: None,
            limit: 50,
        }
    }
}

impl JobFilter {
    /// Every job, newest first, 50 at a time.
    pub fn new() -> Self {
        JobFilter::default()
    }

    /// Only jobs of `queue`.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Only jobs in `state`.
    pub fn state(mut self, state: JobState) -> Self {
        self.state = Some(state);
        self
    }

    /// Only jobs older than `id` (put before it): the next page after a page ending at `id`.
    pub fn before(mut self, id: JobId) -> Self {
        self.before = Some(id);
        self
    }

    /// At most `limit` jobs.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = limit;
        self
    }

    /// Checks the filter: a valid queue name, a limit from 1 to [`MAX_LIST_LIMIT`].
    ///
    /// ```
    /// use pq_api::JobFilter;
    /// assert!(JobFilter::new().limit(0).validate().is_err());
    /// assert!(JobFilter::new().queue("").validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<()> {
        if let Some(q) = &self.queue {
            validate_queue_name(q)?;
        }
        if self.limit == 0 || self.limit > MAX_LIST_LIMIT {
            return Err(Error::invalid(
                "limit",
                format!("must be 1 to {MAX_LIST_LIMIT}, not {}", self.limit),
            ));
        }
        Ok(())
    }

    /// Whether `job` passes the queue, state and `before` filters (`state` being its state
    /// now).
    pub fn admits(&self, job: &crate::Job, state: JobState) -> bool {
        self.queue.as_ref().is_none_or(|q| *q == job.queue)
            && self.state.is_none_or(|s| s == state)
            && self.before.is_none_or(|b| job.id < b)
    }
}

/// What one [`QueueStore::prune`](crate::QueueStore::prune) removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Pruned {
    /// Failed and cancelled jobs past their retention.
    pub jobs: u64,
    /// Records of serial and cursor keys that no job has and that hold no saved state.
    pub keys: u64,
    /// History records past their `keep_until`.
    pub history: u64,
}

impl Pruned {
    /// The counts: for stores outside this crate (the struct is `#[non_exhaustive]`).
    pub fn new(jobs: u64, keys: u64, history: u64) -> Self {
        Pruned {
            jobs,
            keys,
            history,
        }
    }
}

/// Checks a queue name and a setting together, as every store does before a change.
pub fn validate_setting(queue: &str, setting: &QueueSetting) -> Result<()> {
    validate_queue_name(queue)?;
    setting.validate()
}

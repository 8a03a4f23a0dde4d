//! Steering queues at run time: pausing them, limiting them, and how long they keep what
//! ended badly. Settings live in the store, so every worker process sees them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::job::{validate_queue_name, QueueStats, MAX_DURATION};

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
}

impl QueueInfo {
    /// A queue named `name`: for stores outside this crate (the struct is `#[non_exhaustive]`).
    pub fn new(name: impl Into<String>, config: QueueConfig, stats: QueueStats) -> Self {
        QueueInfo {
            name: name.into(),
            config,
            stats,
        }
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

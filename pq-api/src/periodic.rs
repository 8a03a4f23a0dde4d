//! Periodic jobs: a [`Scheduler`] puts a job for each tick of its [`Periodic`] entries (a
//! cron expression in a time zone, or a fixed interval).
//!
//! Run a scheduler in as many processes as you like, on one store: each tick is put once,
//! whichever of them puts it first. Every job a scheduler puts is unique
//! ([`NewJob::unique`]) by its entry's name and its tick's instant, held for a period well
//! past the tick ([`TICK_HOLD`] at least), so the other schedulers' puts of the same tick add
//! nothing, and no scheduler is needed more than another: one that stops (or is killed)
//! leaves the ticks to the rest. The design notes (`docs/design.md`, "Periodic jobs") argue
//! for this over a leader lease.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use pq_api::periodic::{Missed, Periodic, Scheduler};
//! use pq_api::{NewJob, QueueStore};
//!
//! # async fn demo(store: Arc<dyn QueueStore>) -> pq_api::Result<()> {
//! let scheduler = Scheduler::new(store)
//!     // Every minute, on the minute.
//!     .entry(Periodic::every("heartbeat", Duration::from_secs(60), || {
//!         Ok(NewJob::from_json("ops", serde_json::json!({"task": "ping", "args": null})))
//!     })?)?
//!     // At 03:00 Berlin time every day; a run missed while no scheduler ran is made up.
//!     .entry(
//!         Periodic::cron("nightly", "0 0 3 * * *", || {
//!             Ok(NewJob::from_json("reports", serde_json::json!({"task": "nightly", "args": null})))
//!         })?
//!         .time_zone("Europe/Berlin")?
//!         .missed(Missed::RunLast),
//!     )?;
//! let handle = scheduler.handle();
//! tokio::spawn(scheduler.run());
//! // ... later:
//! handle.stop();
//! # Ok(()) }
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::job::{IntoDelay, NewJob, Unique, MAX_DURATION};
use crate::store::QueueStore;

/// How long a tick's job holds its uniqueness key, at least: the schedulers' clocks must
/// agree to within this (and to within ten of the entry's periods, whichever is longer).
pub const TICK_HOLD: Duration = Duration::from_secs(3600);

/// The longest name of a [`Periodic`] entry, in bytes (its ticks' uniqueness keys add the
/// tick to it).
pub const MAX_NAME_LEN: usize = 128;

/// How long a scheduler waits before it tries again to put a tick the store refused.
const RETRY_PUT: Duration = Duration::from_secs(1);

/// The prefix of the uniqueness keys of ticks' jobs: `pq:tick:<entry>@<µs since the epoch>`.
pub const TICK_KEY_PREFIX: &str = "pq:tick:";

/// What a scheduler does, when it starts, about the ticks that passed while no scheduler
/// ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Missed {
    /// Nothing: the first tick put is the next one to come. The default.
    #[default]
    Skip,
    /// Put the last tick that passed, if it was not put yet (within its hold), then go on.
    RunLast,
}

/// When an entry ticks.
#[derive(Clone)]
enum Every {
    /// At every multiple of the interval since the Unix epoch, so every scheduler agrees on
    /// the ticks.
    Interval(Duration),
    /// At the times a cron expression names, in a time zone.
    Cron(Box<cron::Schedule>, chrono_tz::Tz),
}

/// Makes a tick's job.
type MakeJob = Arc<dyn Fn() -> Result<NewJob> + Send + Sync>;

/// One periodic job: a name (unique within a scheduler, and the same in every process that
/// runs it), when it ticks, and the job each tick puts.
#[derive(Clone)]
pub struct Periodic {
    name: String,
    every: Every,
    job: MakeJob,
    missed: Missed,
}

impl fmt::Debug for Periodic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let every = match &self.every {
            Every::Interval(d) => format!("every {d:?}"),
            Every::Cron(s, tz) => format!("cron {s} in {tz}"),
        };
        f.debug_struct("Periodic")
            .field("name", &self.name)
            .field("every", &every)
            .field("missed", &self.missed)
            .finish_non_exhaustive()
    }
}

impl Periodic {
    /// An entry ticking every `interval` (a [`Duration`] or a string such as `"5m"`), on its
    /// multiples since the Unix epoch (so every minute ticks on the minute), putting the job
    /// `job` makes. At least a second, at most 100 years.
    pub fn every(
        name: impl Into<String>,
        interval: impl IntoDelay,
        job: impl Fn() -> Result<NewJob> + Send + Sync + 'static,
    ) -> Result<Self> {
        let interval = interval.into_delay()?;
        if interval < Duration::from_secs(1) || interval > MAX_DURATION {
            return Err(Error::invalid(
                "interval",
                "must be at least a second and at most 100 years",
            ));
        }
        Self::new(name.into(), Every::Interval(interval), Arc::new(job))
    }

    /// An entry ticking at the times of the cron expression `expression`, in UTC unless
    /// [`time_zone`](Periodic::time_zone) says otherwise, putting the job `job` makes. The
    /// expression has six or seven fields, from seconds to an optional year
    /// (`"0 30 9 * * Mon-Fri"`: 09:30:00 on weekdays), as the [`cron`] crate reads them.
    pub fn cron(
        name: impl Into<String>,
        expression: &str,
        job: impl Fn() -> Result<NewJob> + Send + Sync + 'static,
    ) -> Result<Self> {
        let schedule = cron::Schedule::from_str(expression).map_err(|e| {
            Error::invalid("cron", format!("{expression:?} is no cron expression: {e}"))
        })?;
        let every = Every::Cron(Box::new(schedule), chrono_tz::UTC);
        Self::new(name.into(), every, Arc::new(job))
    }

    fn new(name: String, every: Every, job: MakeJob) -> Result<Self> {
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
            return Err(Error::invalid(
                "periodic name",
                format!("must be 1 to {MAX_NAME_LEN} bytes without control characters"),
            ));
        }
        Ok(Periodic {
            name,
            every,
            job,
            missed: Missed::default(),
        })
    }

    /// Reads a cron entry's expression in the time zone named `zone` (an IANA name such as
    /// `"Europe/Berlin"`): its ticks follow that zone's clock, daylight saving included. An
    /// interval entry ticks the same in every zone, and refuses one.
    pub fn time_zone(mut self, zone: &str) -> Result<Self> {
        let tz = chrono_tz::Tz::from_str(zone)
            .map_err(|_| Error::invalid("time zone", format!("{zone:?} is no IANA time zone")))?;
        match &mut self.every {
            Every::Cron(_, zone) => *zone = tz,
            Every::Interval(_) => {
                return Err(Error::invalid(
                    "time zone",
                    "an interval entry ticks the same in every zone",
                ))
            }
        }
        Ok(self)
    }

    /// What a scheduler does about ticks missed while none ran ([`Missed::Skip`] by default).
    pub fn missed(mut self, missed: Missed) -> Self {
        self.missed = missed;
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The first tick after `t`.
    fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.every {
            Every::Interval(d) => {
                let step = i64::try_from(d.as_micros()).ok()?;
                let now = t.timestamp_micros();
                let next = now.div_euclid(step).checked_add(1)?.checked_mul(step)?;
                DateTime::from_timestamp_micros(next)
            }
            Every::Cron(s, tz) => s
                .after(&t.with_timezone(tz))
                .next()
                .map(|d| d.with_timezone(&Utc)),
        }
    }

    /// The last tick at or before `t`.
    fn last_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.every {
            Every::Interval(d) => {
                let step = i64::try_from(d.as_micros()).ok()?;
                let now = t.timestamp_micros();
                DateTime::from_timestamp_micros(now.div_euclid(step).checked_mul(step)?)
            }
            Every::Cron(s, tz) => {
                // The schedule's iterator runs backwards from just after `t`.
                let after = t.checked_add_signed(TimeDelta::microseconds(1))?;
                s.after(&after.with_timezone(tz))
                    .next_back()
                    .map(|d| d.with_timezone(&Utc))
            }
        }
    }

    /// How long the job of `tick` holds its key: ten of the entry's periods, and at least
    /// [`TICK_HOLD`].
    fn hold(&self, tick: DateTime<Utc>) -> Duration {
        let period = self
            .next_after(tick)
            .and_then(|next| (next - tick).to_std().ok())
            .unwrap_or(TICK_HOLD);
        period.saturating_mul(10).clamp(TICK_HOLD, MAX_DURATION)
    }

    /// The job of `tick`, unique by the entry and the tick.
    fn job_of(&self, tick: DateTime<Utc>) -> Result<NewJob> {
        let key = format!("{TICK_KEY_PREFIX}{}@{}", self.name, tick.timestamp_micros());
        Ok((self.job)()?.unique(key, Unique::For(self.hold(tick))))
    }
}

/// Puts the jobs of its [`Periodic`] entries as they tick, until stopped: see the
/// [module](self) docs.
pub struct Scheduler {
    store: Arc<dyn QueueStore>,
    entries: Vec<Periodic>,
    stop: watch::Sender<bool>,
}

impl fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scheduler")
            .field("entries", &self.entries)
            .finish_non_exhaustive()
    }
}

/// Stops a running [`Scheduler`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct SchedulerHandle {
    stop: watch::Sender<bool>,
}

impl SchedulerHandle {
    /// Stops the scheduler: [`Scheduler::run`] returns once any put under way has ended.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

impl Scheduler {
    /// A scheduler with no entries, putting jobs on `store`.
    pub fn new(store: Arc<dyn QueueStore>) -> Self {
        Scheduler {
            store,
            entries: Vec::new(),
            stop: watch::channel(false).0,
        }
    }

    /// Adds `entry`; a name already added is refused.
    pub fn entry(mut self, entry: Periodic) -> Result<Self> {
        if self.entries.iter().any(|e| e.name == entry.name) {
            return Err(Error::invalid(
                "periodic name",
                format!("{:?} is added twice", entry.name),
            ));
        }
        self.entries.push(entry);
        Ok(self)
    }

    /// A handle that stops the scheduler.
    pub fn handle(&self) -> SchedulerHandle {
        SchedulerHandle {
            stop: self.stop.clone(),
        }
    }

    /// Puts each entry's job at each of its ticks until stopped. A tick is put when its time
    /// comes on this process's clock; if the store fails, it is tried again every second
    /// until the entry's next tick is due, which then takes its place (the ticks that passed
    /// meanwhile are not put late: `a_tick_the_store_refused_gives_way_to_the_next`). A job an entry cannot
    /// make is logged and its tick skipped. Returns once stopped, or at once with no entries.
    pub async fn run(self) -> Result<()> {
        let mut stop = self.stop.subscribe();
        let start = Utc::now();
        // Per entry, the next tick to put.
        let mut due: Vec<Option<DateTime<Utc>>> = self
            .entries
            .iter()
            .map(|e| match e.missed {
                Missed::RunLast => e.last_at_or_before(start),
                Missed::Skip => e.next_after(start),
            })
            .collect();
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let now = Utc::now();
            let mut wake = None::<DateTime<Utc>>;
            for (entry, next) in self.entries.iter().zip(due.iter_mut()) {
                let Some(tick) = *next else { continue };
                if tick <= now {
                    // Ticks that passed while this one was put (a put that took long, a
                    // process that slept) are folded into the last of them.
                    let tick = entry.last_at_or_before(now).unwrap_or(tick).max(tick);
                    match self.put(entry, tick).await {
                        Ok(()) => *next = entry.next_after(tick.max(now)),
                        Err(e) if e.is_retryable() => {
                            tracing::warn!(entry = %entry.name, error = %e, "could not put a tick's job; trying again");
                            let again = now + TimeDelta::from_std(RETRY_PUT).unwrap_or_default();
                            wake = Some(wake.map_or(again, |w| w.min(again)));
                            continue;
                        }
                        Err(e) => {
                            tracing::error!(entry = %entry.name, error = %e, "could not put a tick's job; the tick is skipped");
                            *next = entry.next_after(tick.max(now));
                        }
                    }
                }
                if let Some(n) = *next {
                    wake = Some(wake.map_or(n, |w| w.min(n)));
                }
            }
            let Some(wake) = wake else {
                // No entry ticks again: nothing to wait for but the stop.
                let _ = stop.wait_for(|s| *s).await;
                return Ok(());
            };
            let sleep = (wake - Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return Ok(()),
                () = tokio::time::sleep(sleep) => {}
            }
        }
    }

    async fn put(&self, entry: &Periodic, tick: DateTime<Utc>) -> Result<()> {
        let job = entry.job_of(tick)?;
        let id = self.store.put_many(vec![job]).await?;
        tracing::debug!(entry = %entry.name, %tick, job.id = ?id.first(), "tick put");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed expectation is a test's verdict

    use super::*;

    fn plain() -> Result<NewJob> {
        Ok(NewJob::from_json("q", serde_json::Value::Null))
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn intervals_tick_on_their_multiples() {
        let e = Periodic::every("e", "15m", plain).unwrap();
        let t = at("2026-01-01T10:07:00Z");
        assert_eq!(e.next_after(t), Some(at("2026-01-01T10:15:00Z")));
        assert_eq!(e.last_at_or_before(t), Some(at("2026-01-01T10:00:00Z")));
        let on = at("2026-01-01T10:15:00Z");
        assert_eq!(e.last_at_or_before(on), Some(on));
        assert_eq!(e.next_after(on), Some(at("2026-01-01T10:30:00Z")));
        assert!(Periodic::every("e", Duration::from_millis(500), plain).is_err());
    }

    #[test]
    fn cron_ticks_follow_the_time_zone() {
        let e = Periodic::cron("e", "0 0 9 * * *", plain)
            .unwrap()
            .time_zone("Europe/Berlin")
            .unwrap();
        // 09:00 in Berlin is 08:00 UTC in winter, 07:00 UTC in summer.
        assert_eq!(
            e.next_after(at("2026-01-10T12:00:00Z")),
            Some(at("2026-01-11T08:00:00Z"))
        );
        assert_eq!(
            e.next_after(at("2026-07-10T12:00:00Z")),
            Some(at("2026-07-11T07:00:00Z"))
        );
        assert_eq!(
            e.last_at_or_before(at("2026-07-10T07:00:00Z")),
            Some(at("2026-07-10T07:00:00Z"))
        );
        assert_eq!(
            e.last_at_or_before(at("2026-07-10T06:59:59Z")),
            Some(at("2026-07-09T07:00:00Z"))
        );
        assert!(Periodic::cron("e", "every day", plain).is_err());
        assert!(e.clone().time_zone("Mars/Olympus").is_err());
        assert!(Periodic::every("e", "1m", plain)
            .unwrap()
            .time_zone("UTC")
            .is_err());
    }

    #[test]
    fn a_ticks_job_is_unique_by_entry_and_tick_for_a_while() {
        let e = Periodic::every("e", "1m", plain).unwrap();
        let tick = at("2026-01-01T10:00:00Z");
        let job = e.job_of(tick).unwrap();
        let (key, scope) = job.unique.unwrap();
        assert_eq!(key, format!("pq:tick:e@{}", tick.timestamp_micros()));
        assert_eq!(scope, Unique::For(TICK_HOLD));
        let daily = Periodic::every("d", "1d", plain).unwrap();
        let midnight = at("2026-01-01T00:00:00Z");
        let (_, scope) = daily.job_of(midnight).unwrap().unique.unwrap();
        assert_eq!(scope, Unique::For(Duration::from_secs(10 * 86_400)));
    }
}

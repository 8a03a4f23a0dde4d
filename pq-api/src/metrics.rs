//! What pq reports through the [`metrics`](https://docs.rs/metrics) facade, for whatever
//! exporter the application installs (Prometheus, StatsD, OpenTelemetry, …). With no exporter
//! installed every report is a no-op.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `pq_jobs_enqueued_total` | counter | `queue` | jobs given to a store's put (the SQL and memory stores report it) |
//! | `pq_jobs_claimed_total` | counter | `queue` | jobs a worker claimed |
//! | `pq_jobs_completed_total` | counter | `queue` | jobs a worker completed |
//! | `pq_jobs_failed_total` | counter | `queue` | jobs that failed for good in a worker |
//! | `pq_jobs_retried_total` | counter | `queue` | failed attempts that will be retried |
//! | `pq_jobs_snoozed_total` | counter | `queue` | jobs their handlers snoozed |
//! | `pq_jobs_released_total` | counter | `queue` | jobs handed back without counting the attempt |
//! | `pq_jobs_cancelled_total` | counter | `queue` | running jobs stopped by a cancel |
//! | `pq_jobs_lost_total` | counter | `queue` | outcomes dropped because the job's lease was lost |
//! | `pq_claim_seconds` | histogram | | a worker's claim round trips |
//! | `pq_job_run_seconds` | histogram | `queue` | handlers' run times |
//! | `pq_queue_jobs` | gauge | `queue`, `state` | jobs by state ([`record_queues`]) |
//! | `pq_queue_oldest_ready_seconds` | gauge | `queue` | the oldest ready job's wait (0: none) |
//! | `pq_queue_paused` | gauge | `queue` | 1 while the queue is paused |
//!
//! The worker registers its handles once, at its start, per queue it serves, and reports with
//! them: no lookup and no allocation per job. The queue gauges cost a count of the table, so
//! they are reported only when asked ([`Worker::queue_gauges_every`](crate::Worker::queue_gauges_every),
//! or [`record_queues`] from the application); `pq serve` renders the same gauges at its
//! `/metrics`.
//!
//! ```
//! // An application exports what pq reports by installing a recorder at its start, e.g.
//! // metrics_exporter_prometheus::PrometheusBuilder::new().install()?; this one counts.
//! pq_api::metrics::record_enqueued("emails", 3);
//! ```

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter, Histogram};

use crate::job::Done;
use crate::queue::{QueueInfo, Tally};

/// Counts jobs given to a store's put: `n` of `queue`.
pub fn record_enqueued(queue: &str, n: u64) {
    counter!("pq_jobs_enqueued_total", "queue" => queue.to_owned()).increment(n);
}

/// Counts the jobs of a put, given by their queues' names, by queue (a put usually holds one
/// queue's jobs: one report).
pub fn record_put<'a>(queues: impl IntoIterator<Item = &'a str>) {
    let mut run: Option<(&str, u64)> = None;
    for queue in queues {
        match &mut run {
            Some((q, n)) if *q == queue => *n += 1,
            _ => {
                if let Some((q, n)) = run {
                    record_enqueued(q, n);
                }
                run = Some((queue, 1));
            }
        }
    }
    if let Some((q, n)) = run {
        record_enqueued(q, n);
    }
}

/// Reports the queues' gauges: jobs by state, the oldest ready job's wait, paused.
pub fn record_queues(queues: &[QueueInfo]) {
    #[allow(clippy::cast_precision_loss)] // a gauge of counts far below 2^52
    for q in queues {
        for (state, n) in q.stats.by_state() {
            let state = state.as_str();
            gauge!("pq_queue_jobs", "queue" => q.name.clone(), "state" => state).set(n as f64);
        }
        gauge!("pq_queue_oldest_ready_seconds", "queue" => q.name.clone())
            .set(q.oldest_ready.map_or(0.0, |d| d.as_secs_f64()));
        gauge!("pq_queue_paused", "queue" => q.name.clone())
            .set(f64::from(u8::from(q.config.paused)));
    }
}

/// A worker's handles for one of its queues, and what it finished there since its last
/// throughput report.
pub(crate) struct QueueMeter {
    queue: String,
    pub(crate) claimed: Counter,
    completed: Counter,
    failed: Counter,
    pub(crate) retried: Counter,
    pub(crate) snoozed: Counter,
    pub(crate) released: Counter,
    pub(crate) cancelled: Counter,
    pub(crate) lost: Counter,
    pub(crate) run_time: Histogram,
    tally_completed: AtomicU64,
    tally_failed: AtomicU64,
}

impl fmt::Debug for QueueMeter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueMeter")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl QueueMeter {
    fn new(queue: &str) -> Self {
        let c = |name: &'static str| counter!(name, "queue" => queue.to_owned());
        QueueMeter {
            queue: queue.to_owned(),
            claimed: c("pq_jobs_claimed_total"),
            completed: c("pq_jobs_completed_total"),
            failed: c("pq_jobs_failed_total"),
            retried: c("pq_jobs_retried_total"),
            snoozed: c("pq_jobs_snoozed_total"),
            released: c("pq_jobs_released_total"),
            cancelled: c("pq_jobs_cancelled_total"),
            lost: c("pq_jobs_lost_total"),
            run_time: histogram!("pq_job_run_seconds", "queue" => queue.to_owned()),
            tally_completed: AtomicU64::new(0),
            tally_failed: AtomicU64::new(0),
        }
    }

    /// `n` jobs completed.
    pub(crate) fn completed(&self, n: u64) {
        self.completed.increment(n);
        self.tally_completed.fetch_add(n, Ordering::Relaxed);
    }

    /// A job failed for good.
    pub(crate) fn failed(&self) {
        self.failed.increment(1);
        self.tally_failed.fetch_add(1, Ordering::Relaxed);
    }

    /// How long a handler ran.
    pub(crate) fn ran(&self, d: Duration) {
        self.run_time.record(d);
    }
}

/// A worker's handles, one set per queue it serves.
pub(crate) struct Meters {
    queues: Vec<Arc<QueueMeter>>,
    claim_time: Histogram,
}

impl fmt::Debug for Meters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Meters")
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

impl Meters {
    pub(crate) fn new(queues: &[String]) -> Self {
        Meters {
            queues: queues
                .iter()
                .map(|q| Arc::new(QueueMeter::new(q)))
                .collect(),
            claim_time: histogram!("pq_claim_seconds"),
        }
    }

    /// The handles of `queue` (registered now if the worker did not expect it).
    pub(crate) fn of(&self, queue: &str) -> Arc<QueueMeter> {
        self.queues
            .iter()
            .find(|m| m.queue == queue)
            .cloned()
            .unwrap_or_else(|| Arc::new(QueueMeter::new(queue)))
    }

    /// How long a claim took.
    pub(crate) fn claimed_in(&self, d: Duration) {
        self.claim_time.record(d);
    }

    /// Takes what was finished since the last call, per queue that finished anything.
    pub(crate) fn take_tallies(&self) -> Vec<Tally> {
        self.queues
            .iter()
            .filter_map(|m| {
                let c = m.tally_completed.swap(0, Ordering::Relaxed);
                let f = m.tally_failed.swap(0, Ordering::Relaxed);
                (c > 0 || f > 0).then(|| Tally::new(m.queue.clone(), c, f))
            })
            .collect()
    }

    /// Puts back tallies a report could not deliver, for the next.
    pub(crate) fn restore(&self, tallies: &[Tally]) {
        for t in tallies {
            if let Some(m) = self.queues.iter().find(|m| m.queue == t.queue) {
                m.tally_completed.fetch_add(t.completed, Ordering::Relaxed);
                m.tally_failed.fetch_add(t.failed, Ordering::Relaxed);
            }
        }
    }
}

/// Succeeded jobs waiting to be completed, each with its queue's handles.
#[derive(Debug, Default)]
pub(crate) struct Finished {
    pub(crate) done: Vec<Done>,
    meters: Vec<Arc<QueueMeter>>,
}

impl Finished {
    pub(crate) fn push(&mut self, done: Done, meter: Arc<QueueMeter>) {
        self.done.push(done);
        self.meters.push(meter);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.done.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.done.len()
    }

    /// Counts the jobs the store completed (`ids`, of those waiting) and the rest as lost, and
    /// forgets them all.
    pub(crate) fn completed(&mut self, ids: &[crate::JobId]) {
        if ids.len() == self.done.len() {
            for m in &self.meters {
                m.completed(1);
            }
        } else {
            let ids: HashSet<i64> = ids.iter().map(|id| id.0).collect();
            for (d, m) in self.done.iter().zip(&self.meters) {
                if ids.contains(&d.lease.job_id.0) {
                    m.completed(1);
                } else {
                    m.lost.increment(1);
                }
            }
        }
        self.clear();
    }

    pub(crate) fn clear(&mut self) {
        self.done.clear();
        self.meters.clear();
    }
}

//! What the worker and the stores report through the metrics facade, read back in
//! Prometheus' text format, and the throughput the worker adds to the store: on the memory
//! store and on PostgreSQL (each on a queue of its own, since a process has one recorder).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a test's verdict

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use pq_api::{
    QueueStore, QueueStoreExt, Registry, RunTask, StopMode, Task, TaskContext, TaskDefaults,
    TaskError, Worker,
};
use serde::{Deserialize, Serialize};

mod support;

fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| PrometheusBuilder::new().install_recorder().unwrap())
}

/// The value of the metric line `name{labels}`, if rendered.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

macro_rules! job {
    ($name:ident, $queue:literal) => {
        /// Succeeds, but for n = 0, which fails every attempt (two).
        #[derive(Debug, Serialize, Deserialize)]
        struct $name {
            n: u32,
        }
        impl Task for $name {
            const NAME: &'static str = $queue;
            const QUEUE: &'static str = $queue;
            fn defaults() -> TaskDefaults {
                TaskDefaults::new().max_retries(1).retry_in(Duration::ZERO)
            }
        }
        impl RunTask for $name {
            async fn run(self, _cx: TaskContext) -> Result<(), TaskError> {
                if self.n == 0 {
                    return Err(TaskError::new("no"));
                }
                Ok(())
            }
        }
    };
}

job!(InMemory, "metered_memory");
job!(InPostgres, "metered_postgres");
job!(InDiesel, "metered_diesel");

/// Puts jobs 0 to 4 of `T`, drains a worker, and checks what it reported.
async fn check<T: RunTask + Task + Sync + From<u32>>(store: Arc<dyn QueueStore>) {
    let handle = recorder();
    for n in 0..5 {
        store.enqueue(&T::from(n)).await.unwrap();
    }
    let worker = Worker::new(store.clone(), Registry::new().register::<T>().unwrap());
    worker.handle().stop(StopMode::Drain);
    let status = worker.run().await.unwrap();
    assert_eq!((status.processed, status.failed), (4, 1));

    let text = handle.render();
    let q = format!("queue=\"{}\"", T::QUEUE);
    let counter = |name: &str| value(&text, &format!("{name}{{{q}}}"));
    assert_eq!(counter("pq_jobs_enqueued_total"), Some(5.0), "{text}");
    assert_eq!(counter("pq_jobs_claimed_total"), Some(6.0), "{text}");
    assert_eq!(counter("pq_jobs_completed_total"), Some(4.0), "{text}");
    assert_eq!(counter("pq_jobs_retried_total"), Some(1.0), "{text}");
    assert_eq!(counter("pq_jobs_failed_total"), Some(1.0), "{text}");
    assert_eq!(counter("pq_jobs_lost_total"), Some(0.0), "{text}");
    assert_eq!(counter("pq_job_run_seconds_count"), Some(6.0), "{text}");
    assert!(
        value(&text, "pq_claim_seconds_count").is_some_and(|n| n >= 2.0),
        "{text}"
    );

    // The worker's last report, as it stopped, holds what it finished.
    let records = store.throughput(Duration::from_secs(120)).await.unwrap();
    let (completed, failed) = records
        .iter()
        .filter(|r| r.queue == T::QUEUE)
        .fold((0, 0), |(c, f), r| (c + r.completed, f + r.failed));
    assert_eq!((completed, failed), (4, 1), "{records:?}");

    pq_api::metrics::record_queues(&store.queues().await.unwrap());
    let text = handle.render();
    let gauge = format!("pq_queue_jobs{{{q},state=\"failed\"}}");
    assert_eq!(value(&text, &gauge), Some(1.0), "{text}");
}

impl From<u32> for InDiesel {
    fn from(n: u32) -> Self {
        InDiesel { n }
    }
}

impl From<u32> for InMemory {
    fn from(n: u32) -> Self {
        InMemory { n }
    }
}

impl From<u32> for InPostgres {
    fn from(n: u32) -> Self {
        InPostgres { n }
    }
}

#[tokio::test]
async fn the_memory_store_and_its_worker_report_every_outcome() {
    check::<InMemory>(Arc::new(pq_memory::MemoryStore::new())).await;
}

#[tokio::test]
async fn the_sql_stores_and_their_workers_report_every_outcome() {
    // A queue per driver: the process's one recorder adds up what both report.
    let (sqlx, diesel) = (support::fresh_table("jobs"), support::fresh_table("jobs"));
    check::<InPostgres>(support::Driver::Sqlx.open(&sqlx, 4).await).await;
    check::<InDiesel>(support::Driver::Diesel.open(&diesel, 4).await).await;
}

//! Periodic, unique, snoozed and time-limited jobs on one store.
//!
//! Two schedulers (as two processes of a deployment would) run a "heartbeat" entry that
//! ticks every second: each tick is put once. A "report" job is unique for a minute, so the
//! second put of it adds nothing. An "export" handler snoozes until its data is ready, and a
//! "stuck" handler runs past its time limit and is told to stop.
//!
//! ```text
//! cargo run -p pq-examples --example periodic                        # in memory
//! DATABASE_URL=postgres://... cargo run -p pq-examples --example periodic   # PostgreSQL
//! ```

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pq_api::periodic::{Periodic, Scheduler};
use pq_api::{
    QueueStore, Registry, RunTask, StopMode, Task, TaskContext, TaskDefaults, TaskError, Unique,
    Worker,
};
use serde::{Deserialize, Serialize};

const QUEUE: &str = "periodic";

#[derive(Debug, Serialize, Deserialize)]
struct Heartbeat;

impl Task for Heartbeat {
    const NAME: &'static str = "heartbeat";
    const QUEUE: &'static str = QUEUE;
}

impl RunTask for Heartbeat {
    async fn run(self, _cx: TaskContext) -> Result<(), TaskError> {
        println!("  heartbeat");
        Ok(())
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Report {
    customer: u32,
}

impl Task for Report {
    const NAME: &'static str = "report";
    const QUEUE: &'static str = QUEUE;
}

impl RunTask for Report {
    async fn run(self, _cx: TaskContext) -> Result<(), TaskError> {
        println!("  report for customer {}", self.customer);
        Ok(())
    }
}

static EXPORT_TRIES: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, Serialize, Deserialize)]
struct Export;

impl Task for Export {
    const NAME: &'static str = "export";
    const QUEUE: &'static str = QUEUE;
}

impl RunTask for Export {
    async fn run(self, _cx: TaskContext) -> Result<(), TaskError> {
        if EXPORT_TRIES.fetch_add(1, Ordering::Relaxed) < 2 {
            println!("  export: data not ready, snoozing 300 ms");
            return Err(TaskError::snooze("300ms")); // no attempt used, no error recorded
        }
        println!("  export: done");
        Ok(())
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Stuck;

impl Task for Stuck {
    const NAME: &'static str = "stuck";
    const QUEUE: &'static str = QUEUE;
    fn defaults() -> TaskDefaults {
        TaskDefaults::new().timeout("500ms").max_attempts(1)
    }
}

impl RunTask for Stuck {
    async fn run(self, cx: TaskContext) -> Result<(), TaskError> {
        let why = cx.cancelled().await; // a slow call that heeds cancellation
        println!("  stuck: told to stop ({why:?})");
        Err(TaskError::new("gave up"))
    }
}

async fn open_store() -> Result<Arc<dyn QueueStore>, Box<dyn std::error::Error>> {
    match std::env::var("DATABASE_URL") {
        Ok(url) => {
            let pool = sqlx::PgPool::connect(&url).await?;
            let table = pq_api::postgres::QueueTable::new("pq_examples", "periodic_jobs")?;
            let store = pq_sqlx::SqlxStore::with_table(pool, table).await?;
            store.purge(QUEUE).await?;
            println!("store: PostgreSQL (sqlx), table pq_examples.periodic_jobs");
            Ok(Arc::new(store))
        }
        Err(_) => {
            println!("store: in memory (set DATABASE_URL for PostgreSQL)");
            Ok(Arc::new(pq_memory::MemoryStore::new()))
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = open_store().await?;

    // Two schedulers of one entry, as two processes would run it: each tick is put once.
    let heartbeat = || Periodic::every("heartbeat", Duration::from_secs(1), || Heartbeat.to_job());
    let mut schedulers = Vec::new();
    for _ in 0..2 {
        let scheduler = Scheduler::new(store.clone()).entry(heartbeat()?)?;
        schedulers.push((scheduler.handle(), tokio::spawn(scheduler.run())));
    }

    // One report per customer a minute, however often it is asked for.
    let report = || -> pq_api::Result<_> {
        Ok(Report { customer: 7 }
            .to_job()?
            .unique("report:7", Unique::For(Duration::from_secs(60))))
    };
    let first = store.put_many(vec![report()?]).await?[0];
    let again = store.put_many(vec![report()?]).await?[0];
    println!("report put twice: ids {first} and {again} (one job)");

    store
        .put_many(vec![Export.to_job()?, Stuck.to_job()?])
        .await?;

    let registry = Registry::new()
        .register::<Heartbeat>()?
        .register::<Report>()?
        .register::<Export>()?
        .register::<Stuck>()?;
    let worker = Worker::new(store.clone(), registry).abort_grace(Duration::from_millis(200));
    let handle = worker.handle();
    let running = tokio::spawn(worker.run());

    tokio::time::sleep(Duration::from_millis(3500)).await;
    for (scheduler, run) in schedulers {
        scheduler.stop();
        run.await??;
    }
    handle.stop(StopMode::Finish);
    let status = running.await??;
    println!(
        "worker: {} completed, {} snoozed, {} failed (the stuck job, timed out)",
        status.processed, status.snoozed, status.failed
    );
    Ok(())
}

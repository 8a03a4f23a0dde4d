//! A worker running typed tasks: one delayed, one that fails twice before it succeeds.
//!
//! ```text
//! cargo run -p pq-examples --example worker                        # in memory
//! DATABASE_URL=postgres://... cargo run -p pq-examples --example worker   # PostgreSQL
//! ```

use std::sync::Arc;
use std::time::Duration;

use pq_api::{
    QueueStore, QueueStoreExt, Registry, RunTask, StopMode, Task, TaskContext, TaskDefaults,
    TaskError, Worker,
};
use serde::{Deserialize, Serialize};

/// Sends an email (prints it).
#[derive(Debug, Serialize, Deserialize)]
struct SendEmail {
    to: String,
    subject: String,
}

impl Task for SendEmail {
    const NAME: &'static str = "send_email";
    const QUEUE: &'static str = "emails";
}

impl RunTask for SendEmail {
    async fn run(self, cx: TaskContext) -> Result<(), TaskError> {
        println!(
            "  job {}: email to {} ({:?})",
            cx.id(),
            self.to,
            self.subject
        );
        Ok(())
    }
}

/// Charges a card through a payment service that is down for the first two attempts.
#[derive(Debug, Serialize, Deserialize)]
struct ChargeCard {
    order: u32,
    cents: u64,
}

impl Task for ChargeCard {
    const NAME: &'static str = "charge_card";
    const QUEUE: &'static str = "payments";
    fn defaults() -> TaskDefaults {
        // malthe/pq's `max_retries` and `retry_in`.
        TaskDefaults::new()
            .max_retries(3)
            .retry_in(Duration::from_millis(300))
    }
}

impl RunTask for ChargeCard {
    async fn run(self, cx: TaskContext) -> Result<(), TaskError> {
        if cx.attempt() <= 2 {
            println!(
                "  job {}: attempt {} to charge order {}: gateway timeout",
                cx.id(),
                cx.attempt(),
                self.order
            );
            return Err(TaskError::new("payment gateway timed out"));
        }
        println!(
            "  job {}: attempt {} charged order {}: {} cents",
            cx.id(),
            cx.attempt(),
            self.order,
            self.cents
        );
        Ok(())
    }
}

async fn open_store() -> Result<Arc<dyn QueueStore>, Box<dyn std::error::Error>> {
    match std::env::var("DATABASE_URL") {
        Ok(url) => {
            let pool = sqlx::PgPool::connect(&url).await?;
            let table = pq_api::postgres::QueueTable::new("pq_examples", "worker_jobs")?;
            let store = pq_sqlx::SqlxStore::with_table(pool, table).await?;
            for queue in ["emails", "payments"] {
                store.purge(queue).await?;
            }
            println!("store: PostgreSQL (sqlx), table pq_examples.worker_jobs");
            Ok(Arc::new(store))
        }
        Err(_) => {
            println!("store: in memory (set DATABASE_URL to use PostgreSQL)");
            Ok(Arc::new(pq_memory::MemoryStore::new()))
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = open_store().await?;

    let welcome = SendEmail {
        to: "ada@example.com".into(),
        subject: "welcome".into(),
    };
    store.enqueue(&welcome).await?;
    // Per-call options on top of the task's defaults: this one waits a second.
    let reminder = SendEmail {
        to: "bob@example.com".into(),
        subject: "reminder".into(),
    };
    store.put_job(reminder.to_job()?.delay("1s")?).await?;
    store
        .enqueue(&ChargeCard {
            order: 42,
            cents: 1999,
        })
        .await?;
    println!("enqueued 3 jobs (one delayed by 1 s)");

    let registry = Registry::new()
        .register::<SendEmail>()?
        .register::<ChargeCard>()?;
    let worker = Worker::new(store.clone(), registry).concurrency(4);
    let handle = worker.handle();
    let running = tokio::spawn(worker.run());

    // Once the delayed job is due, ask the worker to drain: it stops when nothing is ready.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    handle.stop(StopMode::Drain);
    let status = running.await??;

    println!(
        "worker stopped: {} processed, {} retried, {} failed",
        status.processed, status.retried, status.failed
    );
    for queue in ["emails", "payments"] {
        println!(
            "queue {queue}: {} jobs left",
            store.stats(queue).await?.total()
        );
    }
    Ok(())
}

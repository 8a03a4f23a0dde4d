//! A first run of pq: put, scheduled put, priorities, claim, complete, fail and retry.
//!
//! ```text
//! cargo run -p pq-examples --example quickstart                       # in memory
//! DATABASE_URL=postgres://... cargo run -p pq-examples --example quickstart   # PostgreSQL
//! ```

use std::sync::Arc;
use std::time::Duration;

use pq_api::{Claim, Failure, NewJob, QueueStore, QueueStoreExt};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Email {
    to: String,
    subject: String,
}

fn email(to: &str, subject: &str) -> Email {
    Email {
        to: to.into(),
        subject: subject.into(),
    }
}

async fn open_store() -> Result<Arc<dyn QueueStore>, Box<dyn std::error::Error>> {
    match std::env::var("DATABASE_URL") {
        Ok(url) => {
            let pool = sqlx::PgPool::connect(&url).await?;
            // A table of its own, so the example never touches an app's `public.pq_jobs`.
            let table = pq_api::postgres::QueueTable::new("pq_quickstart", "jobs")?;
            let store = pq_sqlx::SqlxStore::with_table(pool, table).await?;
            store.purge("emails").await?;
            println!("store: PostgreSQL (sqlx), table pq_quickstart.jobs");
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

    // Put jobs: plain, urgent, and one scheduled five minutes ahead.
    store
        .put("emails", &email("ada@example.com", "welcome"))
        .await?;
    store
        .put_job(NewJob::new("emails", &email("bob@example.com", "password reset"))?.priority(10))
        .await?;
    store
        .put_job(NewJob::new("emails", &email("cy@example.com", "reminder"))?.delay("5m")?)
        .await?;
    let stats = store.stats("emails").await?;
    println!(
        "queued: {} ready, {} scheduled",
        stats.ready, stats.scheduled
    );

    // Claim: the higher priority comes first; the scheduled job is not ready yet.
    let claim = Claim::new(["emails"])
        .limit(10)
        .lease(Duration::from_secs(30));
    let jobs = store.claim(&claim).await?;
    for job in &jobs {
        let mail: Email = job.payload()?;
        println!(
            "claimed {} (priority {}): {} <{}>",
            job.id(),
            job.job.priority,
            mail.subject,
            mail.to
        );
    }

    // Complete the first; fail the second, which is retried at once.
    store.complete(&jobs[0].lease).await?;
    let state = store
        .fail(&jobs[1].lease, Failure::new("SMTP timeout"))
        .await?;
    println!(
        "completed {}; failed {} -> {state}",
        jobs[0].id(),
        jobs[1].id()
    );

    // Get it again (blocking up to a second, like malthe/pq's `get(block=True)`).
    if let Some(retry) = store.get(&claim, Duration::from_secs(1)).await? {
        println!(
            "retried {}: attempt {} after {:?}",
            retry.id(),
            retry.job.attempts,
            retry.job.last_error.as_deref().unwrap_or("")
        );
        store.complete(&retry.lease).await?;
    }

    let stats = store.stats("emails").await?;
    println!(
        "left: {} scheduled, {} ready, {} running, {} failed",
        stats.scheduled, stats.ready, stats.running, stats.failed
    );
    Ok(())
}

//! A cursor-key throttle: reindex a document at most once a second, however often it is
//! edited (psycopg2_mq's cursor keys).
//!
//! Every edit puts a reindex job for its document, due in one second, with the cursor key
//! `doc:<id>`. While that job is pending, further edits add nothing (they get its id back), so
//! a burst of edits costs one reindex. Each document's key keeps a state across its jobs: here,
//! how many times it was reindexed and how many edits those runs covered.
//!
//! ```text
//! cargo run -p pq-examples --example throttle                        # in memory
//! DATABASE_URL=postgres://... cargo run -p pq-examples --example throttle   # PostgreSQL
//! ```

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use pq_api::{
    QueueStore, QueueStoreExt, Registry, RunTask, StopMode, Task, TaskContext, TaskError, Worker,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

const QUEUE: &str = "search";

/// Rebuilds a document's search entry.
#[derive(Debug, Serialize, Deserialize)]
struct Reindex {
    doc: u32,
}

impl Task for Reindex {
    const NAME: &'static str = "reindex";
    const QUEUE: &'static str = QUEUE;
}

impl RunTask for Reindex {
    async fn run(self, cx: TaskContext) -> Result<(), TaskError> {
        let state = cx.key_state().cloned().unwrap_or_default();
        let runs = state["runs"].as_u64().unwrap_or(0) + 1;
        println!("  reindexing doc {} (run {runs} for it)", self.doc);
        tokio::time::sleep(Duration::from_millis(50)).await;
        cx.set_key_state(json!({ "runs": runs }))?;
        Ok(())
    }
}

fn key(doc: u32) -> String {
    format!("doc:{doc}")
}

async fn open_store() -> Result<Arc<dyn QueueStore>, Box<dyn std::error::Error>> {
    match std::env::var("DATABASE_URL") {
        Ok(url) => {
            let pool = sqlx::PgPool::connect(&url).await?;
            let table = pq_api::postgres::QueueTable::new("pq_examples", "throttle_jobs")?;
            let store = pq_sqlx::SqlxStore::with_table(pool, table).await?;
            store.purge(QUEUE).await?;
            println!("store: PostgreSQL (sqlx), table pq_examples.throttle_jobs");
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
    let before: BTreeMap<u32, u64> = runs_per_doc(&*store).await?;

    let worker = Worker::new(store.clone(), Registry::new().register::<Reindex>()?);
    let handle = worker.handle();
    let running = tokio::spawn(worker.run());

    // 60 edits to three documents over about 2.4 seconds.
    let mut jobs = HashSet::new();
    for edit in 0..60u32 {
        let doc = [1, 2, 3][fastrand::usize(..3)];
        let job = Reindex { doc }.to_job()?.cursor_key(key(doc)).delay("1s")?;
        jobs.insert(store.put_job(job).await?);
        if edit % 20 == 19 {
            println!(
                "{} edits so far, {} reindex jobs made",
                edit + 1,
                jobs.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }

    // Let the last jobs come due and run, then stop once nothing is left.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    handle.stop(StopMode::Drain);
    let status = running.await??;

    let after = runs_per_doc(&*store).await?;
    println!(
        "60 edits made {} reindex jobs; the worker ran {}",
        jobs.len(),
        status.processed
    );
    for (doc, runs) in &after {
        let new = runs - before.get(doc).copied().unwrap_or(0);
        println!("doc {doc}: reindexed {new} times (key state: {runs} runs in all)");
    }
    println!("jobs left: {}", store.stats(QUEUE).await?.total());
    Ok(())
}

/// Each document's reindex count, from its key's state.
async fn runs_per_doc(
    store: &dyn QueueStore,
) -> Result<BTreeMap<u32, u64>, Box<dyn std::error::Error>> {
    let mut out = BTreeMap::new();
    for doc in [1, 2, 3] {
        if let Some(state) = store.key_state(QUEUE, &key(doc)).await? {
            out.insert(doc, state["runs"].as_u64().unwrap_or(0));
        }
    }
    Ok(out)
}

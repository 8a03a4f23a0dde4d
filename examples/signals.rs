//! A worker process wired to signals, PyPGQueue-style:
//! SIGHUP drains (stop once nothing is ready), SIGINT (Ctrl-C) finishes the running jobs,
//! SIGTERM aborts (running jobs are handed back, claimable at once by another worker).
//!
//! ```text
//! cargo run -p pq-examples --example signals        # then Ctrl-C, or kill -HUP / -TERM <pid>
//! DATABASE_URL=postgres://... cargo run -p pq-examples --example signals
//! ```

use std::sync::Arc;
use std::time::Duration;

use pq_api::{
    QueueStore, QueueStoreExt, Registry, RunTask, StopMode, Task, TaskContext, TaskError, Worker,
    WorkerHandle,
};
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{signal, SignalKind};

/// Takes a while, and stops early when cancelled.
#[derive(Debug, Serialize, Deserialize)]
struct Render {
    frame: u32,
}

impl Task for Render {
    const NAME: &'static str = "render";
    const QUEUE: &'static str = "frames";
}

impl RunTask for Render {
    async fn run(self, cx: TaskContext) -> Result<(), TaskError> {
        tokio::select! {
            why = cx.cancelled() => Err(TaskError::new(format!("frame {} cancelled: {why:?}", self.frame))),
            () = tokio::time::sleep(Duration::from_millis(700)) => {
                println!("rendered frame {}", self.frame);
                Ok(())
            }
        }
    }
}

async fn open_store() -> Result<Arc<dyn QueueStore>, Box<dyn std::error::Error>> {
    match std::env::var("DATABASE_URL") {
        Ok(url) => {
            let pool = sqlx::PgPool::connect(&url).await?;
            let table = pq_api::postgres::QueueTable::new("pq_examples", "signal_jobs")?;
            Ok(Arc::new(pq_sqlx::SqlxStore::with_table(pool, table).await?))
        }
        Err(_) => Ok(Arc::new(pq_memory::MemoryStore::new())),
    }
}

/// Maps each signal to its stop mode; a second signal may escalate (drain → finish → abort).
async fn stop_on_signals(handle: WorkerHandle) -> std::io::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    loop {
        let mode = tokio::select! {
            _ = hup.recv() => StopMode::Drain,
            _ = int.recv() => StopMode::Finish,
            _ = term.recv() => StopMode::Abort,
        };
        println!("signal: stopping ({mode:?}); status {:?}", handle.status());
        handle.stop(mode);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = open_store().await?;
    store.purge("frames").await?; // a fresh demo each run
    for frame in 0..40 {
        store.enqueue(&Render { frame }).await?;
    }
    println!(
        "pid {}: rendering 40 frames, 2 at a time. SIGHUP drains, Ctrl-C finishes, SIGTERM aborts.",
        std::process::id()
    );
    let worker = Worker::new(store.clone(), Registry::new().register::<Render>()?).concurrency(2);
    tokio::spawn(stop_on_signals(worker.handle()));
    let status = worker.run().await?;
    println!("stopped: {status:?}");
    println!(
        "frames left in the queue: {}",
        store.stats("frames").await?.total()
    );
    Ok(())
}

//! pq's metrics in Prometheus' text format: a worker runs jobs (some fail, one for good) with
//! a Prometheus exporter installed, and the example reads its own `/metrics` and prints pq's
//! lines. Any exporter of the `metrics` facade works the same way.
//!
//! ```text
//! cargo run -p pq-examples --example metrics                        # in memory
//! DATABASE_URL=postgres://... cargo run -p pq-examples --example metrics   # PostgreSQL
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use pq_api::{
    QueueStore, QueueStoreExt, Registry, RunTask, StopMode, Task, TaskContext, TaskDefaults,
    TaskError, Worker,
};
use serde::{Deserialize, Serialize};

/// Resizes an image; image 3 is broken and fails every attempt.
#[derive(Debug, Serialize, Deserialize)]
struct Resize {
    image: u32,
}

impl Task for Resize {
    const NAME: &'static str = "resize";
    const QUEUE: &'static str = "images";
    fn defaults() -> TaskDefaults {
        TaskDefaults::new().max_retries(1).retry_in(Duration::ZERO)
    }
}

impl RunTask for Resize {
    async fn run(self, _cx: TaskContext) -> Result<(), TaskError> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if self.image == 3 {
            return Err(TaskError::new("not an image"));
        }
        Ok(())
    }
}

async fn open_store() -> Result<Arc<dyn QueueStore>, Box<dyn std::error::Error>> {
    match std::env::var("DATABASE_URL") {
        Ok(url) => {
            let pool = sqlx::PgPool::connect(&url).await?;
            let table = pq_api::postgres::QueueTable::new("pq_examples", "metrics_jobs")?;
            let store = pq_sqlx::SqlxStore::with_table(pool, table).await?;
            store.purge("images").await?;
            Ok(Arc::new(store))
        }
        Err(_) => Ok(Arc::new(pq_memory::MemoryStore::new())),
    }
}

/// GETs `/metrics` from the exporter at `addr`.
fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The exporter serves every metric of the process at http://127.0.0.1:9898/metrics; a
    // Prometheus server scrapes it there.
    let addr = SocketAddr::from(([127, 0, 0, 1], 9898));
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()?;

    let store = open_store().await?;
    for image in 1..=5 {
        store.enqueue(&Resize { image }).await?;
    }
    let worker = Worker::new(store.clone(), Registry::new().register::<Resize>()?);
    worker.handle().stop(StopMode::Drain);
    let status = worker.run().await?;
    println!(
        "worker: {} completed, {} retried, {} failed for good",
        status.processed, status.retried, status.failed
    );
    // Queue depth and the oldest ready job's wait, as gauges. Each report counts the table:
    // a long-running worker reports them every so often with `Worker::queue_gauges_every`.
    pq_api::metrics::record_queues(&store.queues().await?);

    let text = tokio::task::spawn_blocking(move || scrape(addr)).await??;
    println!("pq's metrics at http://{addr}/metrics:");
    for line in text.lines().filter(|l| l.starts_with("pq_")) {
        println!("  {line}");
    }
    Ok(())
}

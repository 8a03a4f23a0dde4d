//! The worker's hot path through the public API, one short run: the program
//! `scripts/compare.py` builds against two commits and runs interleaved. It keeps to the API
//! every commit it is compared across has, so the same source measures both.
//!
//! One run, in a database of its own (created, then dropped): `--jobs` jobs put with
//! `put_many` in batches of 1,000, then drained by a `Worker` at `--concurrency` with a
//! handler that only counts; `--c1-jobs` more drained at concurrency 1; then `--pickups` jobs
//! put 10 ms apart into the idle worker, each timed from `put` returning to its handler
//! starting. Prints one JSON object.
//!
//! ```text
//! DATABASE_URL=postgres://... cargo run --release -p pq-examples --example hotpath -- --store sqlx
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pq_api::{
    BoxError, Completion, JobHandler, NewJob, QueueStore, Registry, StopMode, Task, TaskContext,
    TaskError, Worker,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Serialize, Deserialize)]
struct Count {
    n: usize,
}

impl Task for Count {
    const NAME: &'static str = "count";
    const QUEUE: &'static str = "hotpath";
}

/// Counts runs, and stamps when each pickup job started.
struct Counting {
    done: AtomicU64,
    started: Mutex<Vec<Option<Instant>>>,
}

/// The handler the worker runs; the program keeps the other reference to read the counts.
struct Shared(Arc<Counting>);

#[async_trait]
impl JobHandler for Shared {
    async fn handle(&self, _cx: TaskContext, args: &Value) -> Result<Completion, TaskError> {
        let c = &self.0;
        if let Some(n) = args["n"].as_u64().and_then(|n| usize::try_from(n).ok()) {
            if let Ok(mut started) = c.started.lock() {
                if let Some(slot) = started.get_mut(n) {
                    *slot = Some(Instant::now());
                }
            }
        }
        c.done.fetch_add(1, Ordering::Relaxed);
        Ok(Completion::Pending)
    }
}

struct Args {
    url: String,
    store: String,
    jobs: usize,
    c1_jobs: usize,
    concurrency: u32,
    pickups: usize,
}

fn args() -> Result<Args, BoxError> {
    let mut a = Args {
        url: std::env::var("DATABASE_URL").map_err(|_| "set DATABASE_URL")?,
        store: "sqlx".into(),
        jobs: 20_000,
        c1_jobs: 3_000,
        concurrency: 8,
        pickups: 200,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--store" => a.store = value()?,
            "--jobs" => a.jobs = value()?.parse()?,
            "--c1-jobs" => a.c1_jobs = value()?.parse()?,
            "--concurrency" => a.concurrency = value()?.parse()?,
            "--pickups" => a.pickups = value()?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(a)
}

/// `url` with its database replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_at = base[scheme_end..].find('/').map(|i| i + scheme_end);
    let root = path_at.map_or(base, |i| &base[..i]);
    match query {
        Some(q) => format!("{root}/{db}?{q}"),
        None => format!("{root}/{db}"),
    }
}

async fn open(store: &str, url: &str) -> Result<Arc<dyn QueueStore>, BoxError> {
    Ok(match store {
        "sqlx" => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(16)
                .connect(url)
                .await?;
            Arc::new(pq_sqlx::SqlxStore::new(pool).await?)
        }
        "diesel" => {
            Arc::new(pq_diesel::DieselStore::new(pq_diesel::DieselStore::pool(url, 16)?).await?)
        }
        other => return Err(format!("unknown store {other}").into()),
    })
}

async fn put_many(
    store: &Arc<dyn QueueStore>,
    range: std::ops::Range<usize>,
) -> Result<f64, BoxError> {
    let jobs: Vec<NewJob> = range
        .map(|n| Count { n }.to_job())
        .collect::<Result<_, _>>()?;
    let n = jobs.len();
    let t = Instant::now();
    let mut jobs = jobs.into_iter();
    loop {
        let batch: Vec<NewJob> = jobs.by_ref().take(1_000).collect();
        if batch.is_empty() {
            break;
        }
        store.put_many(batch).await?;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Drains `n` queued jobs with a worker at `concurrency`; returns jobs/s.
async fn drain(
    store: &Arc<dyn QueueStore>,
    counting: &Arc<Counting>,
    concurrency: u32,
    n: usize,
) -> Result<f64, BoxError> {
    counting.done.store(0, Ordering::Relaxed);
    let registry = Registry::new().register_with::<Count>(Shared(counting.clone()))?;
    let worker = Worker::new(store.clone(), registry).concurrency(concurrency);
    let handle = worker.handle();
    let t = Instant::now();
    let run = tokio::spawn(worker.run());
    while counting.done.load(Ordering::Relaxed) < n as u64 {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let elapsed = t.elapsed();
    handle.stop(StopMode::Finish);
    run.await??;
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// Puts `pickups` jobs 10 ms apart into an idle worker; returns p50 and p99 in ms.
async fn pickup(
    store: &Arc<dyn QueueStore>,
    counting: &Arc<Counting>,
    first: usize,
    pickups: usize,
) -> Result<(f64, f64), BoxError> {
    counting.done.store(0, Ordering::Relaxed);
    if let Ok(mut started) = counting.started.lock() {
        *started = vec![None; first + pickups];
    }
    let registry = Registry::new().register_with::<Count>(Shared(counting.clone()))?;
    let worker = Worker::new(store.clone(), registry).concurrency(8);
    let handle = worker.handle();
    let run = tokio::spawn(worker.run());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut put_at = Vec::with_capacity(pickups);
    for n in first..first + pickups {
        store.put_many(vec![Count { n }.to_job()?]).await?;
        put_at.push(Instant::now());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while counting.done.load(Ordering::Relaxed) < pickups as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    handle.stop(StopMode::Finish);
    run.await??;
    let started = counting.started.lock().map_err(|_| "poisoned")?.clone();
    let mut ms: Vec<f64> = put_at
        .iter()
        .zip(&started[first..])
        .map(|(put, start)| {
            start.map_or(f64::INFINITY, |s| {
                s.saturating_duration_since(*put).as_secs_f64() * 1e3
            })
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let at = |percent: usize| ms[(ms.len() * percent).div_ceil(100).clamp(1, ms.len()) - 1];
    Ok((at(50), at(99)))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let a = args()?;
    let db = format!(
        "pq_hotpath_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
            % 1_000_000_000
    );
    let admin = sqlx::PgPool::connect(&a.url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&admin)
        .await?;
    let result = run(&a, &with_database(&a.url, &db)).await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {db} WITH (FORCE)"
    )))
    .execute(&admin)
    .await?;
    let r = result?;
    println!("{r}");
    Ok(())
}

async fn run(a: &Args, url: &str) -> Result<Value, BoxError> {
    let store = open(&a.store, url).await?;
    let counting = Arc::new(Counting {
        done: AtomicU64::new(0),
        started: Mutex::new(Vec::new()),
    });
    let put_many_jps = put_many(&store, 0..a.jobs).await?;
    let worker = drain(&store, &counting, a.concurrency, a.jobs).await?;
    let c1_from = a.jobs;
    put_many(&store, c1_from..c1_from + a.c1_jobs).await?;
    let c1 = drain(&store, &counting, 1, a.c1_jobs).await?;
    let (p50, p99) = pickup(&store, &counting, c1_from + a.c1_jobs, a.pickups).await?;
    Ok(serde_json::json!({
        "store": a.store,
        "put_many": put_many_jps,
        "worker": worker,
        "worker_c1": c1,
        "pickup_p50_ms": p50,
        "pickup_p99_ms": p99,
    }))
}

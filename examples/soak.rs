//! A soak: steady load for a long time, with failures, cancellations, serial keys, unique
//! jobs and history, while a worker prunes. Every sample prints the rows each table holds,
//! the jobs table's size on disk and this process's resident memory; the last line says
//! whether each stayed flat (its peak over the second half within a margin of its peak over
//! the second quarter, once the retention periods have filled up).
//!
//! `bash scripts/soak.sh` runs it against a throwaway server (`--minutes 60` by default there;
//! `--rate` jobs a second, default 200). Needs `DATABASE_URL`.

use std::sync::Arc;
use std::time::Duration;

use pq_api::{
    NewJob, QueueSetting, QueueStore, Registry, RunTask, StopMode, Task, TaskContext, TaskError,
    Unique, Worker,
};
use pq_sqlx::SqlxStore;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::time::Instant;

const QUEUE: &str = "soak";
/// How long the soak queue keeps failed and cancelled jobs.
const RETENTION: Duration = Duration::from_secs(60);
/// How long completed jobs that ask for it stay in history.
const HISTORY: Duration = Duration::from_secs(30);
/// How long a unique job holds its key.
const UNIQUE_FOR: Duration = Duration::from_secs(10);
const SAMPLE_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize, Deserialize)]
struct Soak {
    n: u64,
    fail: bool,
    linger: bool,
}

impl Task for Soak {
    const NAME: &'static str = "soak";
    const QUEUE: &'static str = QUEUE;
}

impl RunTask for Soak {
    async fn run(self, cx: TaskContext) -> Result<(), TaskError> {
        if self.linger {
            // Waits to be cancelled (the producer does, a second after putting it).
            tokio::select! {
                _ = cx.cancelled() => {}
                () = tokio::time::sleep(Duration::from_secs(10)) => {}
            }
        }
        if self.fail {
            return Err(TaskError::new(format!("job {} fails on purpose", self.n)));
        }
        Ok(())
    }
}

/// The job for the `n`th put: one in ten fails (for good), one in a hundred lingers to be
/// cancelled, three in ten have a serial key shared by three jobs and never used again, one
/// in ten is unique for a while, one in ten is kept in history.
fn job(n: u64) -> pq_api::Result<NewJob> {
    let task = Soak {
        n,
        fail: n % 10 == 3,
        linger: n % 100 == 7,
    };
    let mut job = task.to_job()?.max_attempts(1);
    if n % 10 < 3 {
        job = job.serial_key(format!("k{}", n / 3));
    }
    if n % 10 == 5 {
        job = job.unique(format!("u{n}"), Unique::For(UNIQUE_FOR));
    }
    if n % 10 == 6 {
        job = job.keep_history(HISTORY);
    }
    Ok(job)
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    jobs: i64,
    ended: i64,
    keys: i64,
    history: i64,
    unique: i64,
    table_kib: i64,
    rss_kib: i64,
}

async fn sample(pool: &PgPool, at: Duration) -> Result<Sample, sqlx::Error> {
    let row: (i64, i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM pq_jobs), \
                (SELECT count(*) FROM pq_jobs WHERE state = 'failed'), \
                (SELECT count(*) FROM pq_jobs_keys), \
                (SELECT count(*) FROM pq_jobs_history), \
                (SELECT count(*) FROM pq_jobs_unique), \
                (SELECT sum(pg_total_relation_size(r))::int8 FROM \
                  (SELECT 'pq_jobs'::regclass AS r \
                   UNION SELECT relid FROM pg_partition_tree('pq_jobs')) AS t) / 1024",
    )
    .fetch_one(pool)
    .await?;
    Ok(Sample {
        at,
        jobs: row.0,
        ended: row.1,
        keys: row.2,
        history: row.3,
        unique: row.4,
        table_kib: row.5,
        rss_kib: rss_kib(),
    })
}

/// This process's resident memory, from `/proc/self/status` (0 where there is none).
fn rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let minutes = arg("--minutes", 10);
    let rate = arg("--rate", 200).max(1);
    let url = std::env::var("DATABASE_URL").map_err(|_| "set DATABASE_URL")?;
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .connect(&url)
        .await?;
    let store = Arc::new(SqlxStore::new(pool.clone()).await?);
    store
        .configure_queue(QUEUE, QueueSetting::Retention(Some(RETENTION)))
        .await?;
    let worker = Worker::new(store.clone(), Registry::new().register::<Soak>()?)
        .concurrency(16)
        .prune_every(Duration::from_secs(10));
    let handle = worker.handle();
    let run = tokio::spawn(worker.run());

    let start = Instant::now();
    let end = start + Duration::from_secs(minutes * 60);
    let producer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let per_tick = (rate / 10).max(1);
            let mut n = 0u64;
            while Instant::now() < end {
                tick.tick().await;
                let jobs: pq_api::Result<Vec<NewJob>> = (n..n + per_tick).map(job).collect();
                let ids = store.put_many(jobs?).await?;
                for (i, id) in ids.into_iter().enumerate() {
                    if (n + i as u64) % 100 == 7 {
                        let store = store.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            let _ = store.cancel(id).await;
                        });
                    }
                }
                n += per_tick;
            }
            Ok::<u64, pq_api::Error>(n)
        })
    };

    println!("| min | jobs | failed+cancelled | key records | history | unique | jobs table KiB | RSS KiB |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut samples = Vec::new();
    while Instant::now() < end {
        tokio::time::sleep(SAMPLE_EVERY.min(end - Instant::now())).await;
        let s = sample(&pool, start.elapsed()).await?;
        println!(
            "| {:.1} | {} | {} | {} | {} | {} | {} | {} |",
            s.at.as_secs_f64() / 60.0,
            s.jobs,
            s.ended,
            s.keys,
            s.history,
            s.unique,
            s.table_kib,
            s.rss_kib
        );
        samples.push(s);
    }
    let put = producer.await??;
    handle.stop(StopMode::Finish);
    let status = run.await??;
    println!(
        "\nput {put}, completed {}, failed {}, cancelled {}, lost {}",
        status.processed, status.failed, status.cancelled, status.lost
    );
    verdict(&samples);
    Ok(())
}

/// Compares each measure's peak over the second half with its peak over the second quarter.
fn verdict(samples: &[Sample]) {
    let n = samples.len();
    if n < 4 {
        println!("too short to judge");
        return;
    }
    let peak = |range: &[Sample], f: fn(&Sample) -> i64| range.iter().map(f).max().unwrap_or(0);
    let (quarter, half) = (&samples[n / 4..n / 2], &samples[n / 2..]);
    type Measure = (&'static str, fn(&Sample) -> i64);
    let measures: [Measure; 7] = [
        ("jobs", |s| s.jobs),
        ("failed+cancelled", |s| s.ended),
        ("key records", |s| s.keys),
        ("history", |s| s.history),
        ("unique", |s| s.unique),
        ("jobs table KiB", |s| s.table_kib),
        ("RSS KiB", |s| s.rss_kib),
    ];
    for (name, f) in measures {
        let (before, after) = (peak(quarter, f), peak(half, f));
        let ratio = after as f64 / before.max(1) as f64;
        let flat = if ratio <= 1.25 { "flat" } else { "GROWING" };
        println!("{name}: peak {before} in the second quarter, {after} in the second half ({ratio:.2}×): {flat}");
    }
}

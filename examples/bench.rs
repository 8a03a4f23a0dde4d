//! pq's benchmark: every store against the ceiling PostgreSQL sets for the same statements.
//!
//! ```text
//! cargo run --release -p pq-examples --example bench -- --quick          # memory only, < 1 min
//! DATABASE_URL=postgres://... cargo run --release -p pq-examples --example bench
//! ```
//!
//! Flags: `--jobs N` (end-to-end jobs, default 100000), `--concurrency N` (worker, default 32),
//! `--batch N` (worker claim batch, default: its free capacity), `--store memory|sqlx|diesel`
//! (repeatable; default all three with `DATABASE_URL`, memory without), `--backlog N` (the large
//! backlog, default 1000000), `--keyed N` (jobs behind 1,000 serial keys, default 100000; 0
//! skips), `--rounds N` (rounds of put_many + worker and of their ceilings, default 5),
//! `--vacuum-every N` (claimed jobs between the SQL stores' and the bare loop's vacuums,
//! default the stores' 10000; 0 leaves the tables to autovacuum), `--quick` (small counts),
//! `--json` (the summary as JSON too), `--metrics` (a Prometheus recorder installed, so every
//! metric pq reports is recorded, as in a service that exports them), `--sync-claims` (the SQL
//! stores' claims wait for their WAL flush, as queues that commit every claim synchronously
//! do), `--compare` (the comparison profile below instead of the full run), `--held-snapshot`
//! (the held-snapshot scenario below instead of the full run; `--jobs` sets its total, default
//! 1000000).
//!
//! The held-snapshot scenario is the condition that breaks PostgreSQL queues in production: a
//! transaction on another connection (a long report, a forgotten session) holds its snapshot,
//! so nothing that completed jobs leave behind may be vacuumed away. On each SQL store it puts
//! [`SNAPSHOT_CYCLE`] jobs, has four tasks claim 100 at a time and complete them until the
//! queue is empty, and goes on so until `--jobs` jobs went through; once with no snapshot
//! held, then with a `REPEATABLE READ` transaction holding one the whole run. It reports each
//! cycle's rate and mean claim time, the last cycle against the first and against the run
//! without the snapshot, and the jobs table's size (every partition and index) at the end. It
//! runs on a table split into partitions (`partition`), and on one not split, for at most
//! 200,000 jobs (which only get slower).
//!
//! The comparison profile is the workload other queues are measured with: 20,000 small jobs
//! (`--jobs`), single puts from 1, 4, 8 and 32 tasks, `put_many` in batches of 1,000 from one
//! task, the worker at concurrency 8 and 32 (`--rounds` rounds of the last three, medians
//! reported), and the keyed backlogs.
//!
//! Every figure is checked: each job handled exactly once, the table empty afterwards. Each
//! timed phase starts from vacuumed, analyzed tables, right after a `CHECKPOINT` (so that
//! none begins while it runs). `put_many`, the worker and their ceilings
//! run in rounds, interleaved with each other and across the stores, and report medians: on
//! a small shared host, runs of the same code minutes apart differ by a third. Beside the
//! worker's ratio to its ceiling (the medians'), it reports each round's worker against the
//! bare loop of the same round: their median, lowest and highest. It also splits each loop's
//! wall time per job in two: inside its claim calls (the round trip, the server's work, the
//! decoding of the rows; the worker's store is wrapped in a timer for this) and between them
//! (for the worker: starting the jobs, running the handlers, collecting the completions), so
//! that a gap to the ceiling shows on which side it lies. The jobs
//! handed to `put_many` are built before its clock starts, as the bare insert's arrays are.
//! The backlog figures are medians of five samples each, each taken right after a
//! `CHECKPOINT` too. The program runs on a current-thread tokio runtime: with PostgreSQL on the
//! same two cores, more threads only contend for them. On Linux it also reports the client's
//! CPU per job over the worker's run and the bare loop's (all of it, and the user-mode part),
//! and over `put_many` from one task and the bare insert on one connection.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pq_api::postgres::{InsertArrays, QueueTable, Statements, Vacuuming};
use pq_api::{
    Claim, ClaimedJob, Completion, Done, Failure, FinishedJob, Job, JobHandler, JobId, JobState,
    Lease, NewJob, QueueStats, QueueStore, QueueStoreExt, Registry, StopMode, Task, TaskContext,
    TaskError, Worker,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const QUEUE: &str = "bench";
const PICKUPS: usize = 500;
const PICKUP_GAP: Duration = Duration::from_millis(5);
const PUT_TASKS: usize = 8;
const PUT_MANY_BATCH: usize = 1000;
const SMALL_BACKLOG: usize = 10_000;
/// The comparison profile's job count.
const COMPARE_JOBS: usize = 20_000;
/// The comparison profile's single-put tasks and worker concurrencies.
const COMPARE_PUT_TASKS: [usize; 4] = [1, 4, 8, 32];
const COMPARE_CONCURRENCY: [u32; 2] = [8, 32];
/// The held-snapshot scenario's jobs per cycle, and its claiming tasks and claim size.
const SNAPSHOT_CYCLE: usize = 20_000;
const SNAPSHOT_TASKS: usize = 4;
const SNAPSHOT_CLAIM: u32 = 100;
/// The held-snapshot scenario's jobs on a table not split, at most.
const SNAPSHOT_UNSPLIT_MAX: usize = 200_000;

#[derive(Debug, Clone)]
struct Args {
    jobs: usize,
    single_puts: usize,
    concurrency: u32,
    batch: Option<u32>,
    backlog: usize,
    backlog_sample: usize,
    keyed: usize,
    rounds: usize,
    vacuum_every: u64,
    stores: Vec<String>,
    json: bool,
    metrics: bool,
    sync_claims: bool,
    compare: bool,
    held_snapshot: bool,
    url: Option<String>,
}

fn parse_args() -> Result<Args, BoxError> {
    let url = std::env::var("DATABASE_URL").ok();
    let mut args = Args {
        jobs: 100_000,
        single_puts: 20_000,
        concurrency: 32,
        batch: None,
        backlog: 1_000_000,
        backlog_sample: 10_000,
        keyed: 100_000,
        rounds: 5,
        vacuum_every: Vacuuming::DEFAULT_EVERY,
        stores: Vec::new(),
        json: false,
        metrics: false,
        sync_claims: false,
        compare: false,
        held_snapshot: false,
        url,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--jobs" => args.jobs = value()?.parse()?,
            "--concurrency" => args.concurrency = value()?.parse()?,
            "--batch" => args.batch = Some(value()?.parse()?),
            "--backlog" => args.backlog = value()?.parse()?,
            "--keyed" => args.keyed = value()?.parse()?,
            "--rounds" => args.rounds = value()?.parse::<usize>()?.max(1),
            "--vacuum-every" => args.vacuum_every = value()?.parse()?,
            "--store" => args.stores.push(value()?),
            "--json" => args.json = true,
            "--metrics" => args.metrics = true,
            "--sync-claims" => args.sync_claims = true,
            "--compare" => {
                args.compare = true;
                args.jobs = COMPARE_JOBS;
                args.single_puts = COMPARE_JOBS;
            }
            "--held-snapshot" => {
                args.held_snapshot = true;
                args.jobs = 1_000_000;
            }
            "--quick" => {
                args.jobs = 10_000;
                args.single_puts = 2_000;
                args.backlog = 100_000;
                args.backlog_sample = 2_000;
                args.keyed = 5_000;
            }
            "--help" | "-h" => {
                println!(
                    "{}",
                    include_str!("bench.rs")
                        .lines()
                        .take_while(|l| l.starts_with("//!"))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown flag {other:?} (try --help)").into()),
        }
    }
    if args.stores.is_empty() {
        args.stores.push("memory".into());
        if args.url.is_some() {
            args.stores.extend(["sqlx".into(), "diesel".into()]);
        }
    }
    for s in &args.stores {
        if !matches!(s.as_str(), "memory" | "sqlx" | "diesel") {
            return Err(format!("unknown store {s:?}: memory, sqlx or diesel").into());
        }
        if s != "memory" && args.url.is_none() {
            return Err(format!("store {s} needs DATABASE_URL").into());
        }
    }
    Ok(args)
}

/// One line of the summary.
#[derive(Debug, Serialize)]
struct Figure {
    store: String,
    metric: String,
    value: f64,
    unit: &'static str,
    ceiling: Option<f64>,
    ratio: Option<f64>,
}

struct Report {
    figures: Vec<Figure>,
}

impl Report {
    fn add(&mut self, store: &str, metric: impl Into<String>, value: f64, unit: &'static str) {
        let metric = metric.into();
        eprintln!("\r  {store:<7} {metric:<38} {value:>12.2} {unit}          ");
        self.figures.push(Figure {
            store: store.into(),
            metric,
            value,
            unit,
            ceiling: None,
            ratio: None,
        });
    }

    fn against(&mut self, ceiling: f64) {
        if let Some(f) = self.figures.last_mut() {
            f.ceiling = Some(ceiling);
            f.ratio = Some(f.value / ceiling);
        }
    }
}

/// Prints `label: done/total` every half second until `done` reaches `total`.
fn progress(label: String, done: Arc<AtomicU64>, total: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let d = done.load(Ordering::Relaxed);
            eprint!("\r  {label}: {d}/{total}   ");
            let _ = std::io::stderr().flush();
            if d >= total {
                return;
            }
        }
    })
}

fn rate(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

/// CPU time the calling thread has used so far (Linux: `/proc/thread-self/schedstat`), or
/// `None` where that cannot be read. The runtime is current-thread, so its one thread does
/// all of the program's work: the stores', the worker's and the bare loops'.
fn cpu_used() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// User-mode CPU time the calling thread has used so far (Linux: `/proc/thread-self/stat`,
/// in ticks of 10 ms, scaled by the kernel to match [`cpu_used`]): the part of it spent
/// outside the kernel's sends, receives and wakeups.
fn user_cpu_used() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the command name (which may hold spaces), from field 3: utime is field 14.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let ticks: u64 = rest.split_whitespace().nth(11)?.parse().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Measures the client's CPU time over a phase of `n` jobs, in µs per job: all of it, and
/// the user-mode part.
struct CpuClock(Option<Duration>, Option<Duration>);

/// The client's CPU µs per job over a phase: all of it, and the user-mode part.
#[derive(Clone, Copy, Default)]
struct CpuPerJob {
    all: Option<f64>,
    user: Option<f64>,
}

impl CpuClock {
    fn start() -> Self {
        CpuClock(cpu_used(), user_cpu_used())
    }

    fn per_job(&self, n: usize) -> CpuPerJob {
        let per_job = |now: Option<Duration>, then: Option<Duration>| {
            let used = now?.checked_sub(then?)?;
            Some(used.as_secs_f64() * 1e6 / n as f64)
        };
        CpuPerJob {
            all: per_job(cpu_used(), self.0),
            user: per_job(user_cpu_used(), self.1),
        }
    }
}

/// Where a claim+complete loop's wall time went, in µs per job: inside its claim calls
/// (the statement's round trip, the server's work, and the driver's and the store's decoding
/// of the rows) and between them (everything else: for the worker, starting the jobs,
/// running their handlers and collecting their completions; the completions themselves are
/// sent alongside the next claim). The two add up to the loop's wall time per job.
#[derive(Clone, Copy)]
struct ClaimSplit {
    in_claims: f64,
    between: f64,
}

impl ClaimSplit {
    fn of(claiming: Duration, took: Duration, n: usize) -> Self {
        let per_job = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
        ClaimSplit {
            in_claims: per_job(claiming),
            between: per_job(took.saturating_sub(claiming)),
        }
    }
}

/// A store that times its `claim` calls and passes every call on to the store it wraps:
/// the worker's side of [`ClaimSplit`]. (One more dynamic call and two clock reads per
/// claim, i.e. per 32 jobs.)
#[derive(Debug)]
struct ClaimTimer {
    inner: Arc<dyn QueueStore>,
    nanos: AtomicU64,
}

impl ClaimTimer {
    fn claiming(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }
}

#[async_trait]
impl QueueStore for ClaimTimer {
    async fn put_many(&self, jobs: Vec<NewJob>) -> pq_api::Result<Vec<JobId>> {
        self.inner.put_many(jobs).await
    }
    async fn claim(&self, claim: &Claim) -> pq_api::Result<Vec<ClaimedJob>> {
        let t = Instant::now();
        let claimed = self.inner.claim(claim).await;
        let took = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(took, Ordering::Relaxed);
        claimed
    }
    async fn complete_many(&self, done: &[Done]) -> pq_api::Result<Vec<JobId>> {
        self.inner.complete_many(done).await
    }
    async fn fail(&self, lease: &Lease, failure: Failure) -> pq_api::Result<JobState> {
        self.inner.fail(lease, failure).await
    }
    async fn extend(
        &self,
        lease: &Lease,
        lease_for: Duration,
    ) -> pq_api::Result<chrono::DateTime<chrono::Utc>> {
        self.inner.extend(lease, lease_for).await
    }
    async fn release(&self, lease: &Lease) -> pq_api::Result<()> {
        self.inner.release(lease).await
    }
    async fn snooze(&self, lease: &Lease, delay: Duration) -> pq_api::Result<()> {
        self.inner.snooze(lease, delay).await
    }
    async fn cancel(&self, id: JobId) -> pq_api::Result<()> {
        self.inner.cancel(id).await
    }
    async fn cancel_requested(&self, id: JobId) {
        self.inner.cancel_requested(id).await
    }
    async fn set_progress(&self, lease: &Lease, progress: serde_json::Value) -> pq_api::Result<()> {
        self.inner.set_progress(lease, progress).await
    }
    async fn configure_queue(
        &self,
        queue: &str,
        setting: pq_api::QueueSetting,
    ) -> pq_api::Result<()> {
        self.inner.configure_queue(queue, setting).await
    }
    async fn queues(&self) -> pq_api::Result<Vec<pq_api::QueueInfo>> {
        self.inner.queues().await
    }
    async fn prune(&self) -> pq_api::Result<pq_api::Pruned> {
        self.inner.prune().await
    }
    async fn retry(&self, id: JobId) -> pq_api::Result<()> {
        self.inner.retry(id).await
    }
    async fn record_throughput(&self, tallies: &[pq_api::Tally]) -> pq_api::Result<()> {
        self.inner.record_throughput(tallies).await
    }
    async fn throughput(
        &self,
        since: std::time::Duration,
    ) -> pq_api::Result<Vec<pq_api::Throughput>> {
        self.inner.throughput(since).await
    }
    async fn list_jobs(&self, filter: &pq_api::JobFilter) -> pq_api::Result<Vec<Job>> {
        self.inner.list_jobs(filter).await
    }
    async fn job(&self, id: JobId) -> pq_api::Result<Job> {
        self.inner.job(id).await
    }
    async fn stats(&self, queue: &str) -> pq_api::Result<QueueStats> {
        self.inner.stats(queue).await
    }
    async fn purge(&self, queue: &str) -> pq_api::Result<u64> {
        self.inner.purge(queue).await
    }
    async fn key_state(&self, queue: &str, key: &str) -> pq_api::Result<Option<Value>> {
        self.inner.key_state(queue, key).await
    }
    async fn finished(&self, id: JobId) -> pq_api::Result<FinishedJob> {
        self.inner.finished(id).await
    }
    async fn history(&self, queue: &str, limit: u32) -> pq_api::Result<Vec<FinishedJob>> {
        self.inner.history(queue, limit).await
    }
    async fn cleanup_history(&self) -> pq_api::Result<u64> {
        self.inner.cleanup_history().await
    }
    async fn wait(&self, queues: &[String], timeout: Duration) -> pq_api::Result<bool> {
        self.inner.wait(queues, timeout).await
    }
}

/// The benchmark's no-op task: `{"task": "noop", "args": {"n": ..}}`.
#[derive(Serialize, Deserialize)]
struct Noop {
    n: usize,
}

impl Task for Noop {
    const NAME: &'static str = "noop";
    const QUEUE: &'static str = QUEUE;
}

/// Counts each job's runs, and stamps when each started.
struct Counting {
    runs: Vec<AtomicU8>,
    started: Option<Mutex<Vec<Option<Instant>>>>,
    done: Arc<AtomicU64>,
}

impl Counting {
    /// Runs one job: counts its run, and stamps when it started.
    fn run(&self, args: &Value) -> Result<Completion, TaskError> {
        let n = args["n"].as_u64().and_then(|n| usize::try_from(n).ok());
        let n = n.ok_or_else(|| TaskError::new("no n").give_up())?;
        let slot = self
            .runs
            .get(n)
            .ok_or_else(|| TaskError::new("n out of range"))?;
        slot.fetch_add(1, Ordering::Relaxed);
        if let Some(started) = &self.started {
            if let Ok(mut s) = started.lock() {
                s[n] = Some(Instant::now());
            }
        }
        self.done.fetch_add(1, Ordering::Relaxed);
        Ok(Completion::Pending)
    }

    fn new(n: usize, stamp: bool) -> Arc<Self> {
        Arc::new(Counting {
            runs: (0..n).map(|_| AtomicU8::new(0)).collect(),
            started: stamp.then(|| Mutex::new(vec![None; n])),
            done: Arc::new(AtomicU64::new(0)),
        })
    }

    fn check_once(&self) -> Result<(), BoxError> {
        let bad = self
            .runs
            .iter()
            .filter(|r| r.load(Ordering::Relaxed) != 1)
            .count();
        if bad > 0 {
            return Err(format!("{bad} jobs did not run exactly once").into());
        }
        Ok(())
    }
}

/// The handler the worker runs; the bench keeps the other reference to read the counts.
struct Shared(Arc<Counting>);

#[async_trait]
impl JobHandler for Shared {
    async fn handle(&self, _cx: TaskContext, args: &Value) -> Result<Completion, TaskError> {
        self.0.run(args)
    }
}

fn jobs(range: std::ops::Range<usize>) -> Result<Vec<NewJob>, BoxError> {
    range.map(|n| Ok(Noop { n }.to_job()?)).collect()
}

/// Queues jobs `0..n` with `put_many` in batches of 1,000 from `tasks` concurrent tasks
/// (batch `b` from task `b % tasks`).
async fn put_many(
    store: &Arc<dyn QueueStore>,
    n: usize,
    tasks: usize,
    done: &Arc<AtomicU64>,
) -> Result<(), BoxError> {
    let batches = n.div_ceil(PUT_MANY_BATCH);
    let mut running = Vec::with_capacity(tasks);
    for k in 0..tasks {
        let (store, done) = (store.clone(), done.clone());
        running.push(tokio::spawn(async move {
            for b in (k..batches).step_by(tasks) {
                let start = b * PUT_MANY_BATCH;
                let end = (start + PUT_MANY_BATCH).min(n);
                store.put_many(jobs(start..end)?).await?;
                done.fetch_add((end - start) as u64, Ordering::Relaxed);
            }
            Ok::<_, BoxError>(())
        }));
    }
    for t in running {
        t.await??;
    }
    Ok(())
}

/// Vacuums the table and refreshes the planner's statistics, as autovacuum does after a bulk
/// load or a burst of deletes, so that each phase starts from a settled table. (With
/// statistics taken while the table was empty, PostgreSQL may plan the claim as a bitmap scan
/// and sort of the whole backlog; dead rows left by earlier phases slow every index scan until
/// vacuumed.) Every other table of its schema is vacuumed too: a table another
/// store has just emptied would otherwise be vacuumed by autovacuum while this phase runs (seen:
/// one store's million deleted rows vacuumed through the next store's backlog samples).
/// Then it has PostgreSQL write a [`checkpoint`], so that every timed phase starts right
/// after one.
async fn settle(table: Option<&QueueTable>, url: Option<&str>) -> Result<(), BoxError> {
    if let (Some(table), Some(url)) = (table, url) {
        let mut conn = PgConnection::connect(url).await?;
        let mut tables: Vec<String> = sqlx::query_scalar(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables \
             WHERE schemaname = $1 ORDER BY tablename",
        )
        .bind(table.schema())
        .fetch_all(&mut conn)
        .await?;
        if tables.is_empty() {
            tables.push(table.qualified());
        }
        sqlx::query(AssertSqlSafe(format!(
            "VACUUM ANALYZE {}",
            tables.join(", ")
        )))
        .execute(&mut conn)
        .await?;
        checkpoint(Some(url)).await?;
    }
    Ok(())
}

/// Has PostgreSQL write a checkpoint, so that one does not begin during the next timed
/// phase or sample: the first change to each page after a checkpoint begins writes the whole
/// page to the WAL, so a phase a checkpoint began in wrote more than one it missed, and the
/// store and its ceiling would be measured unalike. Seen in a run of the SQL stores' rounds
/// without it: a checkpoint began every 31–36 s, by WAL volume, in whichever phase was
/// running (a half of a round takes ~10 s); with it, none began during a timed phase.
/// After this, both backlogs' pages are older than the last checkpoint, as a backlog's pages
/// are once it has waited through one. Needs the `pg_checkpoint` role (or superuser); without
/// it, says so once and goes on.
async fn checkpoint(url: Option<&str>) -> Result<(), BoxError> {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if let Some(url) = url {
        let mut conn = PgConnection::connect(url).await?;
        if let Err(e) = sqlx::query("CHECKPOINT").execute(&mut conn).await {
            if !WARNED.swap(true, Ordering::Relaxed) {
                eprintln!("\n  (no CHECKPOINT before timed phases: {e})");
            }
        }
    }
    Ok(())
}

async fn expect_empty(store: &dyn QueueStore) -> Result<(), BoxError> {
    let left = store.stats(QUEUE).await?.total();
    if left != 0 {
        return Err(format!("{left} jobs left in the queue").into());
    }
    Ok(())
}

fn worker(
    store: Arc<dyn QueueStore>,
    handler: Arc<Counting>,
    args: &Args,
) -> Result<Worker, BoxError> {
    let registry = Registry::new().register_with::<Noop>(Shared(handler))?;
    let mut w = Worker::new(store, registry).concurrency(args.concurrency);
    if let Some(b) = args.batch {
        w = w.batch_size(b);
    }
    Ok(w)
}

/// Puts `args.single_puts` jobs one `put` at a time from `tasks` tasks; returns jobs/s.
async fn enqueue(
    store: &Arc<dyn QueueStore>,
    name: &str,
    args: &Args,
    tasks: usize,
) -> Result<f64, BoxError> {
    store.purge(QUEUE).await?;
    let n = args.single_puts;
    let done = Arc::new(AtomicU64::new(0));
    let p = progress(format!("{name} put x{tasks}"), done.clone(), n as u64);
    let t = Instant::now();
    let mut running = Vec::new();
    for k in 0..tasks {
        let (store, done) = (store.clone(), done.clone());
        running.push(tokio::spawn(async move {
            for n in (k..n).step_by(tasks) {
                store.put_job(Noop { n }.to_job()?).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, BoxError>(())
        }));
    }
    for t in running {
        t.await??;
    }
    let jps = rate(n, t.elapsed());
    p.abort();
    if store.stats(QUEUE).await?.ready != n as u64 {
        return Err("single puts did not all land".into());
    }
    store.purge(QUEUE).await?;
    Ok(jps)
}

/// The comparison profile on one store: single puts from each of [`COMPARE_PUT_TASKS`]
/// tasks, then rounds of `put_many` from one task, each followed by the worker at one of
/// [`COMPARE_CONCURRENCY`] (medians over the rounds), then the keyed backlogs.
async fn compare(
    store: &Arc<dyn QueueStore>,
    table: Option<&QueueTable>,
    name: &str,
    args: &Args,
    r: &mut Report,
) -> Result<(), BoxError> {
    for tasks in COMPARE_PUT_TASKS {
        settle(table, args.url.as_deref()).await?;
        let jps = enqueue(store, name, args, tasks).await?;
        let plural = if tasks == 1 { "" } else { "s" };
        r.add(name, format!("put, {tasks} task{plural}"), jps, "jobs/s");
    }
    let mut batches = Vec::new();
    let mut worked: Vec<Vec<f64>> = COMPARE_CONCURRENCY.iter().map(|_| Vec::new()).collect();
    for round in 0..args.rounds {
        for (c, &concurrency) in COMPARE_CONCURRENCY.iter().enumerate() {
            store.purge(QUEUE).await?;
            settle(table, args.url.as_deref()).await?;
            batches.push(fill(store, name, args, 1).await?.0);
            settle(table, args.url.as_deref()).await?;
            let at = Args {
                concurrency,
                ..args.clone()
            };
            let label = format!("{name} worker x{concurrency}");
            let work = work_off(store, label, args.jobs, &at).await?;
            eprintln!(
                "\r  {name:<7} round {}: worker at {concurrency}: {:.0}/s   ",
                round + 1,
                work.rate
            );
            worked[c].push(work.rate);
        }
    }
    r.add(name, "put_many x1000", median(batches), "jobs/s");
    let mut unkeyed = None;
    for (&concurrency, samples) in COMPARE_CONCURRENCY.iter().zip(worked) {
        let jps = median(samples);
        if concurrency == args.concurrency {
            unkeyed = Some(jps);
        }
        r.add(
            name,
            format!("worker, concurrency {concurrency}"),
            jps,
            "jobs/s",
        );
    }
    if args.keyed > 0 {
        let (interleaved, clustered) = keyed(store, table, name, args, r).await?;
        // Each keyed layout beside the unkeyed worker at the keyed phases' concurrency.
        if let Some(unkeyed) = unkeyed.filter(|&u| u > 0.0) {
            r.add(
                name,
                "round-robin / unkeyed worker",
                interleaved / unkeyed,
                "ratio",
            );
            r.add(
                name,
                "key after key / unkeyed worker",
                clustered / unkeyed,
                "ratio",
            );
        }
    }
    Ok(())
}

/// Queues `args.jobs` jobs with `put_many` in batches of 1,000 from `tasks` tasks (batch `b`
/// from task `b % tasks`); returns jobs/s and the client's CPU µs per job. The jobs are built
/// before the clock starts, as the bare insert's arrays are: the figures are `put_many`'s,
/// not the caller's serializing.
async fn fill(
    store: &Arc<dyn QueueStore>,
    name: &str,
    args: &Args,
    tasks: usize,
) -> Result<(f64, CpuPerJob), BoxError> {
    let n = args.jobs;
    let mut shares: Vec<Vec<Vec<NewJob>>> = (0..tasks).map(|_| Vec::new()).collect();
    for (b, start) in (0..n).step_by(PUT_MANY_BATCH).enumerate() {
        shares[b % tasks].push(jobs(start..(start + PUT_MANY_BATCH).min(n))?);
    }
    let done = Arc::new(AtomicU64::new(0));
    let p = progress(format!("{name} put_many x{tasks}"), done.clone(), n as u64);
    let cpu = CpuClock::start();
    let t = Instant::now();
    let mut running = Vec::with_capacity(tasks);
    for share in shares {
        let (store, done) = (store.clone(), done.clone());
        running.push(tokio::spawn(async move {
            for batch in share {
                let len = batch.len() as u64;
                store.put_many(batch).await?;
                done.fetch_add(len, Ordering::Relaxed);
            }
            Ok::<_, BoxError>(())
        }));
    }
    for r in running {
        r.await??;
    }
    let jps = rate(n, t.elapsed());
    let cpu = cpu.per_job(n);
    p.abort();
    if store.stats(QUEUE).await?.ready != n as u64 {
        return Err("put_many did not land every job".into());
    }
    Ok((jps, cpu))
}

/// The median of `samples` (the upper one of an even count).
fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN)
}

/// One store's samples of `put_many` and the worker (`store`) and of their ceilings, the
/// bare insert and the bare claim+complete loop (`bare`), a figure per round.
#[derive(Default)]
struct Samples {
    store: Series,
    bare: Series,
}

/// One half's figures over the rounds: jobs/s from one task (connection) and from 8, jobs/s
/// end-to-end, the client's CPU µs per job (from one task; end-to-end, all and user-mode),
/// and the end-to-end wall time per job in and between claim calls ([`ClaimSplit`]).
#[derive(Default)]
struct Series {
    one: Vec<f64>,
    eight: Vec<f64>,
    one_cpu: Vec<f64>,
    work: Vec<f64>,
    work_cpu: Vec<f64>,
    work_user: Vec<f64>,
    in_claims: Vec<f64>,
    between: Vec<f64>,
}

impl Series {
    fn record(&mut self, one: (f64, CpuPerJob), eight: f64, work: Worked) {
        self.one.push(one.0);
        self.one_cpu.extend(one.1.all);
        self.eight.push(eight);
        self.work.push(work.rate);
        self.work_cpu.extend(work.cpu.all);
        self.work_user.extend(work.cpu.user);
        self.in_claims.push(work.split.in_claims);
        self.between.push(work.split.between);
    }
}

/// A claim+complete loop's run: jobs/s, the client's CPU per job, and where its wall time
/// went.
struct Worked {
    rate: f64,
    cpu: CpuPerJob,
    split: ClaimSplit,
}

/// One round of `put_many` and the worker beside their ceilings: fills the table through the
/// store (from one task, then again from 8) and works it off with the worker, and (SQL
/// stores) fills it with the bare insert (one connection, then 8) and works it off with the
/// bare claim+complete loop. The two halves alternate in order from round to round, and
/// `main` runs each round on every store before the next, so that a drift of the host
/// favours neither half and no store.
async fn throughput_round(
    store: &Arc<dyn QueueStore>,
    table: Option<&QueueTable>,
    name: &str,
    args: &Args,
    round: usize,
    s: &mut Samples,
) -> Result<(), BoxError> {
    let bare = table.zip(args.url.as_deref());
    for half in [round % 2, 1 - round % 2] {
        store.purge(QUEUE).await?;
        settle(table, args.url.as_deref()).await?;
        match (half, bare) {
            (0, _) => {
                let one = fill(store, name, args, 1).await?;
                store.purge(QUEUE).await?;
                settle(table, args.url.as_deref()).await?;
                let (eight, _) = fill(store, name, args, PUT_TASKS).await?;
                settle(table, args.url.as_deref()).await?;
                let label = format!("{name} end-to-end");
                let work = work_off(store, label, args.jobs, args).await?;
                eprintln!(
                    "\r  {name:<7} round {}: put_many {:.0}/s, x{PUT_TASKS} {eight:.0}/s, worker {:.0}/s   ",
                    round + 1,
                    one.0,
                    work.rate,
                );
                s.store.record(one, eight, work);
            }
            (_, Some((table, url))) => {
                let one = bare_insert(store, table, url, args, 1).await?;
                store.purge(QUEUE).await?;
                settle(Some(table), Some(url)).await?;
                let (eight, _) = bare_insert(store, table, url, args, PUT_TASKS).await?;
                settle(Some(table), Some(url)).await?;
                let work = ceiling(store, table, url, args).await?;
                eprintln!(
                    "\r  {name:<7} round {}: bare insert {:.0}/s, x{PUT_TASKS} {eight:.0}/s, bare claim+complete {:.0}/s   ",
                    round + 1,
                    one.0,
                    work.rate,
                );
                s.bare.record(one, eight, work);
            }
            _ => {}
        }
    }
    store.purge(QUEUE).await?;
    Ok(())
}

/// Reports a store's throughput figures, each the median of its rounds.
fn report_throughput(name: &str, s: Samples, r: &mut Report) {
    let Samples { store, bare } = s;
    // Each round's worker beside the bare loop of the same round: the host drifts by more
    // than the figures differ, and a pair minutes apart shows how far.
    let paired: Vec<f64> = store
        .work
        .iter()
        .zip(&bare.work)
        .map(|(w, b)| w / b)
        .collect();
    let figures = [
        ("enqueue: put_many x1000", store.one, &bare.one),
        ("enqueue: put_many x1000, 8 tasks", store.eight, &bare.eight),
        ("end-to-end: worker", store.work, &bare.work),
    ];
    for (metric, samples, ceilings) in figures {
        r.add(name, metric, median(samples), "jobs/s");
        if !ceilings.is_empty() {
            r.against(median(ceilings.clone()));
        }
    }
    if !paired.is_empty() {
        let lowest = paired.iter().copied().fold(f64::INFINITY, f64::min);
        let highest = paired.iter().copied().fold(0.0, f64::max);
        r.add(
            name,
            "end-to-end / ceiling, round by round",
            median(paired),
            "ratio",
        );
        r.add(name, "end-to-end / ceiling, lowest round", lowest, "ratio");
        r.add(
            name,
            "end-to-end / ceiling, highest round",
            highest,
            "ratio",
        );
    }
    let ceilings = [
        ("ceiling: bare insert x1000", bare.one),
        ("ceiling: bare insert x1000, 8 conns", bare.eight),
        ("ceiling: bare claim+complete, 2 conns", bare.work),
    ];
    for (metric, samples) in ceilings {
        if !samples.is_empty() {
            r.add(name, metric, median(samples), "jobs/s");
        }
    }
    let wall = [
        (
            "end-to-end: in claim calls",
            store.in_claims,
            bare.in_claims,
        ),
        (
            "end-to-end: between claim calls",
            store.between,
            bare.between,
        ),
    ];
    for (metric, samples, ceilings) in wall {
        r.add(name, metric, median(samples), "µs/job");
        if !ceilings.is_empty() {
            r.against(median(ceilings));
        }
    }
    let cpu = [
        ("client CPU: put_many x1000", store.one_cpu, bare.one_cpu),
        ("client CPU: worker", store.work_cpu, bare.work_cpu),
        (
            "client CPU, user mode: worker",
            store.work_user,
            bare.work_user,
        ),
    ];
    for (metric, samples, ceilings) in cpu {
        if !samples.is_empty() {
            r.add(name, metric, median(samples), "µs/job");
            if !ceilings.is_empty() {
                r.against(median(ceilings));
            }
        }
    }
}

/// Runs a worker until the `n` queued jobs are drained, checks each ran exactly once and the
/// table is empty; returns jobs/s, the client's CPU µs per job and where the time went.
async fn work_off(
    store: &Arc<dyn QueueStore>,
    label: String,
    n: usize,
    args: &Args,
) -> Result<Worked, BoxError> {
    let counting = Counting::new(n, false);
    let p = progress(label, counting.done.clone(), n as u64);
    let timer = Arc::new(ClaimTimer {
        inner: store.clone(),
        nanos: AtomicU64::new(0),
    });
    let w = worker(timer.clone(), counting.clone(), args)?;
    let cpu = CpuClock::start();
    let t = Instant::now();
    let status = w.run_until_drained().await?;
    let took = t.elapsed();
    let cpu = cpu.per_job(n);
    let split = ClaimSplit::of(timer.claiming(), took, n);
    p.abort();
    counting.check_once()?;
    if status.processed != n as u64 {
        return Err(format!("worker processed {} of {n}", status.processed).into());
    }
    expect_empty(&**store).await?;
    Ok(Worked {
        rate: rate(n, took),
        cpu,
        split,
    })
}

async fn pickup(
    store: &Arc<dyn QueueStore>,
    name: &str,
    args: &Args,
    r: &mut Report,
) -> Result<(), BoxError> {
    let counting = Counting::new(PICKUPS, true);
    let w = worker(store.clone(), counting.clone(), args)?;
    let handle = w.handle();
    let running = tokio::spawn(w.run());
    // Let the worker go idle (and its store's listener connect).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut returned = Vec::with_capacity(PICKUPS);
    let p = progress(
        format!("{name} pickup"),
        counting.done.clone(),
        PICKUPS as u64,
    );
    for n in 0..PICKUPS {
        store.put_job(Noop { n }.to_job()?).await?;
        returned.push(Instant::now());
        tokio::time::sleep(PICKUP_GAP).await;
    }
    while counting.done.load(Ordering::Relaxed) < PICKUPS as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    handle.stop(StopMode::Finish);
    running.await??;
    p.abort();
    counting.check_once()?;
    expect_empty(&**store).await?;
    let started = counting
        .started
        .as_ref()
        .ok_or("stamps")?
        .lock()
        .map_err(|_| "poisoned")?
        .clone();
    let mut lat: Vec<Duration> = started
        .iter()
        .zip(&returned)
        .map(|(s, put)| s.map_or(Duration::MAX, |s| s.saturating_duration_since(*put)))
        .collect();
    lat.sort_unstable();
    let pct = |p: usize| lat[(lat.len() * p / 100).min(lat.len() - 1)].as_secs_f64() * 1000.0;
    r.add(name, "pickup latency p50", pct(50), "ms");
    r.add(name, "pickup latency p99", pct(99), "ms");
    Ok(())
}

/// Claim + complete in a bare store loop (batch = concurrency), `sample` jobs.
async fn claim_complete(
    store: &dyn QueueStore,
    sample: usize,
    batch: u32,
) -> Result<f64, BoxError> {
    let claim = Claim::new([QUEUE]).limit(batch);
    let t = Instant::now();
    let mut done = 0;
    while done < sample {
        let jobs = store.claim(&claim).await?;
        if jobs.is_empty() {
            return Err("backlog ran out".into());
        }
        let finished: Vec<Done> = jobs.iter().map(|j| j.lease.into()).collect();
        done += store.complete_many(&finished).await?.len();
    }
    Ok(rate(done, t.elapsed()))
}

/// Samples of claim+complete taken on each backlog, the median reported: one lasts a
/// fraction of a second, in which this host's speed has been seen to swing by a fifth.
const BACKLOG_SAMPLES: usize = 5;

/// Claim+complete throughput with [`SMALL_BACKLOG`] jobs queued (refilled before each
/// sample) and with `args.backlog` queued (filled once; the samples together take a sixth
/// of it at most), each the median of [`BACKLOG_SAMPLES`], each sample right after a
/// [`checkpoint`].
async fn backlog(
    store: &Arc<dyn QueueStore>,
    table: Option<&QueueTable>,
    name: &str,
    args: &Args,
    r: &mut Report,
) -> Result<(), BoxError> {
    let done = Arc::new(AtomicU64::new(0));
    let mut small = Vec::with_capacity(BACKLOG_SAMPLES);
    for _ in 0..BACKLOG_SAMPLES {
        store.purge(QUEUE).await?;
        put_many(store, SMALL_BACKLOG, 1, &done).await?;
        settle(table, args.url.as_deref()).await?;
        let sample = args.backlog_sample.min(SMALL_BACKLOG / 2);
        small.push(claim_complete(&**store, sample, args.concurrency).await?);
    }
    let small = median(small);
    store.purge(QUEUE).await?;
    let p = progress(
        format!("{name} backlog fill"),
        done.clone(),
        args.backlog as u64,
    );
    done.store(0, Ordering::Relaxed);
    put_many(store, args.backlog, 1, &done).await?;
    p.abort();
    settle(table, args.url.as_deref()).await?;
    let mut large = Vec::with_capacity(BACKLOG_SAMPLES);
    for _ in 0..BACKLOG_SAMPLES {
        checkpoint(table.and(args.url.as_deref())).await?;
        let sample = args
            .backlog_sample
            .min(args.backlog / (2 * BACKLOG_SAMPLES));
        large.push(claim_complete(&**store, sample, args.concurrency).await?);
    }
    let large = median(large);
    store.purge(QUEUE).await?;
    r.add(name, "claim+complete, 10k queued", small, "jobs/s");
    r.add(name, "claim+complete, large backlog", large, "jobs/s");
    r.add(
        name,
        "backlog scaling (large / 10k)",
        large / small,
        "ratio",
    );
    Ok(())
}

/// Keys behind which the keyed phase queues its jobs.
const KEYS: usize = 1_000;

/// The worker over `args.keyed` jobs behind [`KEYS`] serial keys, queued key after key
/// (`clustered`) or round-robin (`interleaved`); each job still runs exactly once. Both
/// layouts run in each of `args.rounds` rounds, one after the other; each figure is the
/// median of its rounds, returned as (interleaved, clustered).
async fn keyed(
    store: &Arc<dyn QueueStore>,
    table: Option<&QueueTable>,
    name: &str,
    args: &Args,
    r: &mut Report,
) -> Result<(f64, f64), BoxError> {
    let n = args.keyed;
    let per_key = n.div_ceil(KEYS);
    let mut interleaved = Vec::with_capacity(args.rounds);
    let mut clustered = Vec::with_capacity(args.rounds);
    for round in 0..args.rounds {
        for (layout, key_of) in [
            (
                "interleaved",
                Box::new(|i: usize| i % KEYS) as Box<dyn Fn(usize) -> usize>,
            ),
            ("clustered", Box::new(move |i: usize| i / per_key)),
        ] {
            store.purge(QUEUE).await?;
            let mut start = 0;
            while start < n {
                let end = (start + PUT_MANY_BATCH).min(n);
                let batch = (start..end)
                    .map(|i| {
                        Ok(Noop { n: i }
                            .to_job()?
                            .serial_key(format!("k{}", key_of(i))))
                    })
                    .collect::<Result<Vec<_>, BoxError>>()?;
                store.put_many(batch).await?;
                start = end;
            }
            settle(table, args.url.as_deref()).await?;
            let label = format!("{name} keyed end-to-end ({layout}, round {})", round + 1);
            let jps = work_off(store, label, n, args).await?.rate;
            match layout {
                "interleaved" => interleaved.push(jps),
                _ => clustered.push(jps),
            }
        }
    }
    let (interleaved, clustered) = (median(interleaved), median(clustered));
    r.add(
        name,
        "end-to-end: behind 1k keys, interleaved",
        interleaved,
        "jobs/s",
    );
    r.add(
        name,
        "end-to-end: behind 1k keys, clustered",
        clustered,
        "jobs/s",
    );
    Ok((interleaved, clustered))
}

/// The ceiling of `put_many`: the shared insert statement on `conns` plain connections
/// (batch `b` on connection `b % conns`), in batches of 1,000, the rows' arrays built before
/// the clock starts; queues `args.jobs` jobs and returns jobs/s and the client's CPU µs per
/// job.
async fn bare_insert(
    store: &Arc<dyn QueueStore>,
    table: &QueueTable,
    url: &str,
    args: &Args,
    conns: usize,
) -> Result<(f64, CpuPerJob), BoxError> {
    let sql = Arc::new(Statements::new(table));
    let mut shares: Vec<Vec<InsertArrays>> = (0..conns).map(|_| Vec::new()).collect();
    let mut start = 0;
    while start < args.jobs {
        let end = (start + PUT_MANY_BATCH).min(args.jobs);
        let share = (start / PUT_MANY_BATCH) % conns;
        shares[share].push(InsertArrays::new(&jobs(start..end)?)?);
        start = end;
    }
    // Each connection first inserts nothing, as the store's pooled connections have already
    // loaded the table's catalog entries and prepared the statement.
    let nothing = InsertArrays::new(&[])?;
    let mut connected = Vec::with_capacity(conns);
    for share in shares {
        let mut conn = PgConnection::connect(url).await?;
        insert_rows(&mut conn, &sql, &nothing).await?;
        connected.push((conn, share));
    }
    let cpu = CpuClock::start();
    let t = Instant::now();
    let mut running = Vec::with_capacity(conns);
    for (mut conn, share) in connected {
        let sql = sql.clone();
        running.push(tokio::spawn(async move {
            for a in &share {
                insert_rows(&mut conn, &sql, a).await?;
            }
            Ok::<_, BoxError>(())
        }));
    }
    for r in running {
        r.await??;
    }
    let jps = rate(args.jobs, t.elapsed());
    let cpu = cpu.per_job(args.jobs);
    if store.stats(QUEUE).await?.ready != args.jobs as u64 {
        return Err("the bare insert did not land every job".into());
    }
    Ok((jps, cpu))
}

async fn insert_rows(
    conn: &mut PgConnection,
    sql: &Statements,
    a: &InsertArrays,
) -> Result<(), BoxError> {
    sqlx::query(AssertSqlSafe(&**sql.insert(a)))
        .bind(&a.queue)
        .bind(&a.payload)
        .bind(&a.priority)
        .bind(&a.run_at)
        .bind(&a.run_in)
        .bind(&a.expected_at)
        .bind(&a.expected_in)
        .bind(&a.max_attempts)
        .bind(&a.key)
        .bind(&a.cursor)
        .bind(&a.keep_for)
        .bind(&a.timeout)
        .bind(&a.unique_key)
        .bind(&a.unique_scope)
        .execute(conn)
        .await?;
    Ok(())
}

/// The ceiling of the worker: the shared claim and complete statements in a bare loop on
/// plain connections, batch = concurrency, over the `args.jobs` queued jobs; returns jobs/s,
/// the client's CPU µs per job and where the time went (each claim timed as the worker's
/// are, from its start to its rows). The claim is the store's own text, asynchronous commit
/// included ([`Statements::claim`]), and the loop vacuums the table as a store does, with
/// the store's statement on a third connection, paced the same ([`Vacuuming`]).
async fn ceiling(
    store: &Arc<dyn QueueStore>,
    table: &QueueTable,
    url: &str,
    args: &Args,
) -> Result<Worked, BoxError> {
    let sql = Statements::new(table);
    // Two connections, as the worker uses: one claims the next batch while the other
    // completes the previous one.
    let mut claimer = PgConnection::connect(url).await?;
    let mut completer = PgConnection::connect(url).await?;
    let queues = vec![QUEUE.to_string()];
    let claim_sql = sql.claim(&queues, args.concurrency, pq_api::DEFAULT_LEASE);
    let cpu = CpuClock::start();
    let t = Instant::now();
    let mut done = 0;
    let mut claiming = Duration::ZERO;
    let mut finished: (Vec<i64>, Vec<i64>) = (Vec::new(), Vec::new());
    let vacuuming = Arc::new(Vacuuming::new(args.vacuum_every));
    let vacuumer = Arc::new(tokio::sync::Mutex::new(PgConnection::connect(url).await?));
    loop {
        let claim = async {
            let t = Instant::now();
            let rows = sqlx::query(AssertSqlSafe(&*claim_sql))
                .fetch_all(&mut claimer)
                .await;
            (rows, t.elapsed())
        };
        let complete = async {
            if finished.0.is_empty() {
                return Ok(Vec::new());
            }
            // No results and no key states to record: two arrays of nulls.
            let nothing: Vec<Option<String>> = vec![None; finished.0.len()];
            sqlx::query_scalar::<_, i64>(AssertSqlSafe(&*sql.complete))
                .bind(&finished.0)
                .bind(&finished.1)
                .bind(&nothing)
                .bind(&nothing)
                .fetch_all(&mut completer)
                .await
        };
        let ((rows, took), completed) = tokio::join!(claim, complete);
        let (rows, completed) = (rows?, completed?);
        claiming += took;
        done += completed.len();
        finished.0.clear();
        finished.1.clear();
        if rows.is_empty() {
            break;
        }
        let vacuum = || {
            let (vacuumer, text) = (vacuumer.clone(), sql.vacuum.clone());
            async move {
                let ran = sqlx::raw_sql(AssertSqlSafe(text))
                    .execute(&mut *vacuumer.lock().await)
                    .await;
                ran.map(drop).map_err(|e| {
                    eprintln!("\n  the bare loop's vacuum failed: {e}");
                    pq_sqlx::map_err(e)
                })
            }
        };
        let may = || {
            let (vacuumer, text) = (vacuumer.clone(), sql.may_vacuum.clone());
            async move {
                sqlx::query_scalar::<_, bool>(AssertSqlSafe(text))
                    .fetch_one(&mut *vacuumer.lock().await)
                    .await
                    .map_err(pq_sqlx::map_err)
            }
        };
        vacuuming.after_claim(rows.len(), vacuum, may);
        for row in &rows {
            finished.0.push(row.try_get::<i64, _>("id")?);
            finished.1.push(row.try_get::<i64, _>("lease_token")?);
        }
    }
    let took = t.elapsed();
    let cpu = cpu.per_job(done);
    if done != args.jobs {
        return Err(format!("ceiling loop completed {done} of {}", args.jobs).into());
    }
    expect_empty(&**store).await?;
    Ok(Worked {
        rate: rate(done, took),
        cpu,
        split: ClaimSplit::of(claiming, took, done),
    })
}

/// One run of the held-snapshot scenario: `args.jobs` jobs in cycles of [`SNAPSHOT_CYCLE`],
/// with a snapshot held on another connection if `hold`. Returns each cycle's jobs/s and mean
/// claim time (ms), and the table's size at the end (bytes).
async fn snapshot_run(
    store: &Arc<dyn QueueStore>,
    table: &QueueTable,
    url: &str,
    name: &str,
    args: &Args,
    hold: bool,
) -> Result<(Vec<(f64, f64)>, i64), BoxError> {
    store.purge(QUEUE).await?;
    settle(Some(table), Some(url)).await?;
    let mut holder = PgConnection::connect(url).await?;
    if hold {
        // A report on other tables: the snapshot keeps every row version the runs leave.
        sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut holder)
            .await?;
        sqlx::query("SELECT count(*) FROM pg_class")
            .execute(&mut holder)
            .await?;
    }
    let cycles = args.jobs.div_ceil(SNAPSHOT_CYCLE).max(1);
    let mut out = Vec::with_capacity(cycles);
    for cycle in 0..cycles {
        let from = cycle * SNAPSHOT_CYCLE;
        let batch = jobs(from..from + SNAPSHOT_CYCLE)?;
        for chunk in batch.chunks(PUT_MANY_BATCH) {
            store.put_many(chunk.to_vec()).await?;
        }
        let claims = Arc::new(AtomicU64::new(0));
        let claiming = Arc::new(AtomicU64::new(0));
        let t = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..SNAPSHOT_TASKS {
            let (store, claims, claiming) = (store.clone(), claims.clone(), claiming.clone());
            tasks.push(tokio::spawn(async move {
                let claim = Claim::new([QUEUE]).limit(SNAPSHOT_CLAIM);
                let mut done = 0usize;
                loop {
                    let c = Instant::now();
                    let jobs = store.claim(&claim).await?;
                    let took = u64::try_from(c.elapsed().as_micros()).unwrap_or(u64::MAX);
                    claiming.fetch_add(took, Ordering::Relaxed);
                    claims.fetch_add(1, Ordering::Relaxed);
                    if jobs.is_empty() {
                        return Ok::<_, BoxError>(done);
                    }
                    let finished: Vec<Done> = jobs.iter().map(|j| j.lease.into()).collect();
                    done += store.complete_many(&finished).await?.len();
                }
            }));
        }
        let mut done = 0;
        for task in tasks {
            done += task.await??;
        }
        let took = t.elapsed();
        if done != SNAPSHOT_CYCLE {
            return Err(format!("cycle {cycle}: {done} of {SNAPSHOT_CYCLE} jobs completed").into());
        }
        let claim_ms = claiming.load(Ordering::Relaxed) as f64
            / claims.load(Ordering::Relaxed).max(1) as f64
            / 1000.0;
        eprint!(
            "\r  {name:<7} {} cycle {cycle:>3}/{cycles}: {:>8.0} jobs/s, claim {claim_ms:.1} ms   ",
            if hold {
                "held snapshot"
            } else {
                "no snapshot  "
            },
            rate(done, took)
        );
        out.push((rate(done, took), claim_ms));
    }
    expect_empty(&**store).await?;
    let size: i64 = sqlx::query_scalar(
        "SELECT sum(pg_total_relation_size(r))::int8 FROM \
         (SELECT $1::regclass AS r UNION SELECT relid FROM pg_partition_tree($1::regclass)) AS t",
    )
    .bind(table.qualified())
    .fetch_one(&mut holder)
    .await?;
    if hold {
        sqlx::query("ROLLBACK").execute(&mut holder).await?;
    }
    Ok((out, size))
}

/// The held-snapshot scenario on one store (see the crate docs): both runs, their cycles
/// printed, and the figures that compare them.
async fn held_snapshot(
    store: &Arc<dyn QueueStore>,
    table: &QueueTable,
    name: &str,
    args: &Args,
    r: &mut Report,
) -> Result<(), BoxError> {
    let url = args.url.as_deref().unwrap_or_default();
    let (free, free_size) = snapshot_run(store, table, url, name, args, false).await?;
    let (held, held_size) = snapshot_run(store, table, url, name, args, true).await?;
    eprintln!();
    println!("\n{name}: cycles of {SNAPSHOT_CYCLE} jobs, jobs/s (mean claim ms)\n");
    println!("| cycle | no snapshot | snapshot held |");
    println!("|---:|---:|---:|");
    for (i, (f, h)) in free.iter().zip(&held).enumerate() {
        println!(
            "| {i} | {:.0} ({:.1}) | {:.0} ({:.1}) |",
            f.0, f.1, h.0, h.1
        );
    }
    // The first and last cycles' figures are the mean of up to three cycles each: one cycle
    // lasts about a second, in which this host's speed swings.
    let mean = |c: &[(f64, f64)]| c.iter().map(|x| x.0).sum::<f64>() / c.len().max(1) as f64;
    let ends = |c: &[(f64, f64)]| {
        let k = (c.len() / 2).clamp(1, 3);
        (
            mean(&c[..k.min(c.len())]),
            mean(&c[c.len().saturating_sub(k)..]),
        )
    };
    let (free_first, free_last) = ends(&free);
    let (held_first, held_last) = ends(&held);
    r.add(name, "held snapshot: first cycles", held_first, "jobs/s");
    r.add(name, "held snapshot: last cycles", held_last, "jobs/s");
    r.add(
        name,
        "held snapshot: last / first",
        held_last / held_first,
        "ratio",
    );
    r.add(name, "no snapshot: last cycles", free_last, "jobs/s");
    r.add(
        name,
        "no snapshot: last / first",
        free_last / free_first,
        "ratio",
    );
    r.add(
        name,
        "held snapshot last / no snapshot last",
        held_last / free_last,
        "ratio",
    );
    let mb = |b: i64| b as f64 / 1_048_576.0;
    r.add(name, "table size after, no snapshot", mb(free_size), "MB");
    r.add(name, "table size after, snapshot held", mb(held_size), "MB");
    Ok(())
}

/// A SQL store on a table of its own for the held-snapshot scenario: split into partitions
/// (`partition`) if `split`, else as a store makes it.
async fn open_snapshot_table(
    kind: &str,
    args: &Args,
    split: bool,
) -> Result<(Arc<dyn QueueStore>, QueueTable), BoxError> {
    let url = args.url.as_deref().unwrap_or_default();
    let schema = format!("pq_bench_{kind}_{}", if split { "split" } else { "plain" });
    let mut admin = PgConnection::connect(url).await?;
    sqlx::query(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(&mut admin)
    .await?;
    let table = QueueTable::new(&schema, "jobs")?;
    let store: Arc<dyn QueueStore> = match kind {
        "sqlx" => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(8)
                .connect(url)
                .await?;
            let store = pq_sqlx::SqlxStore::with_table(pool, table.clone()).await?;
            if split {
                store.partition().await?;
            }
            Arc::new(store)
        }
        _ => {
            let pool = pq_diesel::DieselStore::pool(url, 8)?;
            let store = pq_diesel::DieselStore::with_table(pool, table.clone()).await?;
            if split {
                store.partition().await?;
            }
            Arc::new(store)
        }
    };
    Ok((store, table))
}

async fn open(
    kind: &str,
    args: &Args,
) -> Result<(Arc<dyn QueueStore>, Option<QueueTable>), BoxError> {
    let url = args.url.as_deref().unwrap_or_default();
    let size = args.concurrency.max(8);
    match kind {
        "sqlx" => {
            let table = QueueTable::new("pq_bench", "sqlx_jobs")?;
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(size)
                .test_before_acquire(false)
                .connect(url)
                .await?;
            let store = pq_sqlx::SqlxStore::with_table(pool, table.clone())
                .await?
                .vacuum_every(args.vacuum_every)
                .synchronous_claims(args.sync_claims);
            Ok((Arc::new(store), Some(table)))
        }
        "diesel" => {
            let table = QueueTable::new("pq_bench", "diesel_jobs")?;
            let store = pq_diesel::DieselStore::with_table(
                pq_diesel::DieselStore::pool(url, usize::try_from(size)?)?,
                table.clone(),
            )
            .await?
            .vacuum_every(args.vacuum_every)
            .synchronous_claims(args.sync_claims);
            Ok((Arc::new(store), Some(table)))
        }
        _ => Ok((Arc::new(pq_memory::MemoryStore::new()), None)),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let args = parse_args()?;
    let recorder = if args.metrics {
        Some(metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?)
    } else {
        None
    };
    eprintln!(
        "pq bench: {} jobs end-to-end, worker concurrency {}, batch {}, stores {:?}",
        args.jobs,
        args.concurrency,
        args.batch
            .map_or("= free capacity".to_string(), |b| b.to_string()),
        args.stores
    );
    let mut r = Report {
        figures: Vec::new(),
    };
    let mut stores = Vec::new();
    if args.held_snapshot {
        for kind in args.stores.iter().filter(|k| *k != "memory") {
            for split in [false, true] {
                let (store, table) = open_snapshot_table(kind, &args, split).await?;
                let name = format!("{kind}{}", if split { ", split" } else { "" });
                // The table not split only slows down as the jobs go through: a fifth of the
                // run shows it, where the whole would take most of an hour.
                let jobs = if split {
                    args.jobs
                } else {
                    args.jobs.min(SNAPSHOT_UNSPLIT_MAX)
                };
                let at = Args {
                    jobs,
                    ..args.clone()
                };
                held_snapshot(&store, &table, &name, &at, &mut r).await?;
            }
        }
    }
    for kind in args
        .stores
        .clone()
        .into_iter()
        .filter(|_| !args.held_snapshot)
    {
        let (store, table) = open(&kind, &args).await?;
        store.purge(QUEUE).await?;
        settle(table.as_ref(), args.url.as_deref()).await?;
        pickup(&store, &kind, &args, &mut r).await?;
        if args.compare {
            compare(&store, table.as_ref(), &kind, &args, &mut r).await?;
            continue;
        }
        let jps = enqueue(&store, &kind, &args, PUT_TASKS).await?;
        r.add(&kind, "enqueue: put, 8 tasks", jps, "jobs/s");
        stores.push((kind, store, table, Samples::default()));
    }
    // Round by round over the stores: the stores are compared with each other too, and a run
    // takes minutes, over which this host's speed drifts.
    for round in 0..args.rounds {
        for (kind, store, table, samples) in &mut stores {
            throughput_round(store, table.as_ref(), kind, &args, round, samples).await?;
        }
    }
    for (kind, store, table, samples) in stores {
        report_throughput(&kind, samples, &mut r);
        backlog(&store, table.as_ref(), &kind, &args, &mut r).await?;
        if args.keyed > 0 {
            keyed(&store, table.as_ref(), &kind, &args, &mut r).await?;
        }
    }
    // One store's figures together, in the order the stores were given.
    let order = |name: &str| args.stores.iter().position(|s| s == name);
    r.figures.sort_by_key(|f| order(&f.store));

    println!("\n| store | metric | value | unit | ceiling | ratio |");
    println!("|---|---|---:|---|---:|---:|");
    for f in &r.figures {
        let digits = match f.unit {
            "jobs/s" => 0,
            _ => 2,
        };
        let opt = |v: Option<f64>, d: usize| v.map_or(String::new(), |v| format!("{v:.d$}"));
        println!(
            "| {} | {} | {:.digits$} | {} | {} | {} |",
            f.store,
            f.metric,
            f.value,
            f.unit,
            opt(f.ceiling, digits),
            opt(f.ratio, 2)
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r.figures)?);
    }
    if let Some(recorder) = recorder {
        let text = recorder.render();
        let series = text.lines().filter(|l| l.starts_with("pq_")).count();
        println!("\nmetrics: a Prometheus recorder was installed; it holds {series} pq series");
    }
    Ok(())
}

//! pq's fault suite: jobs run through worker processes while PostgreSQL and the workers are
//! hurt, one fault per scenario, and every job is accounted for.
//!
//! ```text
//! bash scripts/faults.sh            # every scenario, both stores (~25 min)
//! bash scripts/faults.sh --quick    # a short subset (what CI runs, ~3 min)
//! ```
//!
//! It starts its own PostgreSQL container (the image of `scripts/build-pg-image.sh`, or
//! `PQ_TEST_PG_IMAGE`) on a private Docker network, its port published on 127.0.0.1. For each
//! store and scenario it makes a fresh schema, starts three worker processes (this program
//! with `worker`), each running one worker over two queues side by side: `tx`, whose handler
//! records the job's effect inside the transaction that removes the job (`SqlxTask`,
//! `DieselTask`), and `plain`, whose handler records it on a connection of its own before
//! the worker completes the job. A producer puts jobs at a steady rate throughout. Then the
//! fault, then the drain, then the count, per job put (and acknowledged):
//!
//! - **lost**: no effect, and the job is not in the table;
//! - **dup**: effects recorded beyond the first; **dup explained**: those recorded by an
//!   attempt the worker could not see succeed (its worker was SIGKILLed, or the handler's
//!   effect write reported an error: committed, its acknowledgement lost), so that running
//!   the job again was right;
//! - **left**: still in the table (failed, or never run) once the workers have drained it;
//! - **recovery**: after each fault ends, the longest any worker then alive took to record its
//!   first effect (the worst over the faults of the scenario);
//! - **panics**: `panicked at` in any worker process's standard error.
//!
//! The bar: nothing lost; no duplicate in `tx` mode, and in `plain` mode only explained ones
//! (plain mode is at least once: an attempt that did its work but could not report it runs
//! again; any other rerun misses the bar and is printed with its effects); nothing left but
//! the poison rows, each failed with a reason; recovery within 10 s; no panic. The program
//! exits non-zero if any row misses it.
//!
//! Flags: `--quick`, `--store sqlx|diesel` and `--scenario NAME` (each repeatable; default all),
//! `--rate N` (jobs put a second, default 400).

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use pq_api::postgres::QueueTable;
use pq_api::{
    QueueStore, Registry, RunTask, StopMode, Task, TaskContext, TaskError, Worker, WorkerHandle,
};
use pq_diesel::{DieselStore, DieselTask};
use pq_sqlx::{SqlxStore, SqlxTask};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};
use tokio::signal::unix::{signal, SignalKind};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The workers' lease: longer than any fault lasts, so only a dead worker's jobs run twice.
const LEASE: Duration = Duration::from_secs(30);
/// Worker processes per scenario.
const WORKERS: usize = 3;
/// The recovery bar.
const RECOVERY_BAR: Duration = Duration::from_secs(10);
/// What a worker process prints when a plain handler's effect write fails: job, attempt.
const WRITE_FAILED: &str = "pq-faults: effect write failed:";

// ----- the worker process -----

/// A job whose effect is recorded in the handler's transaction.
#[derive(Debug, Serialize, Deserialize)]
struct TxEffect {}

impl Task for TxEffect {
    const NAME: &'static str = "tx_effect";
    const QUEUE: &'static str = "tx";
}

/// A job whose effect is recorded before the worker completes it.
#[derive(Debug, Serialize, Deserialize)]
struct PlainEffect {}

impl Task for PlainEffect {
    const NAME: &'static str = "plain_effect";
    const QUEUE: &'static str = "plain";
}

/// What a worker process's handlers need: where effects go and who records them.
struct Effects {
    pool: PgPool,
    table: String,
    worker: i32,
}

static EFFECTS: OnceLock<Effects> = OnceLock::new();

fn effects() -> Result<&'static Effects, TaskError> {
    EFFECTS
        .get()
        .ok_or_else(|| TaskError::new("effects not set up"))
}

fn effect_sql(cx: &TaskContext, mode: &str) -> Result<String, TaskError> {
    let e = effects()?;
    Ok(format!(
        "INSERT INTO {} (job, mode, worker, attempt) VALUES ({}, '{mode}', {}, {})",
        e.table,
        cx.id().0,
        e.worker,
        cx.attempt()
    ))
}

/// A few milliseconds of work, so that faults land mid-job.
async fn work() {
    tokio::time::sleep(Duration::from_millis(fastrand::u64(1..8))).await;
}

impl RunTask for PlainEffect {
    async fn run(self, cx: TaskContext) -> Result<(), TaskError> {
        work().await;
        let sql = effect_sql(&cx, "plain")?;
        if let Err(e) = sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&effects()?.pool)
            .await
        {
            // The write may have been committed with its acknowledgement lost: the worker
            // sees a failed attempt and runs the job again. The orchestrator reads this line
            // to tell such a rerun from one nothing explains.
            eprintln!("{WRITE_FAILED} {} {}: {e}", cx.id().0, cx.attempt());
            return Err(e.into());
        }
        Ok(())
    }
}

impl SqlxTask for TxEffect {
    async fn run(self, cx: TaskContext, tx: &mut sqlx::PgConnection) -> Result<(), TaskError> {
        work().await;
        sqlx::raw_sql(AssertSqlSafe(effect_sql(&cx, "tx")?))
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

impl DieselTask for TxEffect {
    async fn run(
        self,
        cx: TaskContext,
        conn: &mut diesel_async::AsyncPgConnection,
    ) -> Result<(), TaskError> {
        use diesel_async::RunQueryDsl;
        work().await;
        diesel::sql_query(effect_sql(&cx, "tx")?)
            .execute(conn)
            .await?;
        Ok(())
    }
}

async fn worker_process(url: &str, schema: &str, store: &str, index: i32) -> Result<(), BoxError> {
    let table = QueueTable::new(schema, "jobs")?;
    let pool = PgPoolOptions::new().max_connections(12).connect_lazy(url)?;
    let effects = Effects {
        pool: pool.clone(),
        table: format!("\"{schema}\".effects"),
        worker: index,
    };
    if EFFECTS.set(effects).is_err() {
        return Err("effects set up twice".into());
    }
    let (store, registry): (Arc<dyn QueueStore>, Registry) = if store == "diesel" {
        let s = DieselStore::without_migrating(DieselStore::pool(url, 12)?, table);
        let registry = Registry::new()
            .register_with::<TxEffect>(s.transactional::<TxEffect>())?
            .register::<PlainEffect>()?;
        (Arc::new(s), registry)
    } else {
        let s = SqlxStore::without_migrating(pool, table);
        let registry = Registry::new()
            .register_with::<TxEffect>(s.transactional::<TxEffect>())?
            .register::<PlainEffect>()?;
        (Arc::new(s), registry)
    };
    let worker = Worker::new(store, registry).concurrency(8).lease(LEASE);
    let handle = worker.handle();
    tokio::spawn(stop_on_signals(handle));
    let status = worker.run().await?;
    println!("worker {index} stopped: {status:?}");
    Ok(())
}

/// SIGHUP drains, SIGINT finishes, SIGTERM aborts (as `examples/signals.rs`).
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
        handle.stop(mode);
    }
}

// ----- the database container -----

fn docker(args: &[&str]) -> Result<String, BoxError> {
    let out = Command::new("docker").args(args).output()?;
    if !out.status.success() {
        return Err(format!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// PostgreSQL in a container on a private network, removed on drop.
struct Database {
    name: String,
    network: String,
    url: String,
}

impl Database {
    fn start() -> Result<Self, BoxError> {
        let image = std::env::var("PQ_TEST_PG_IMAGE").unwrap_or_else(|_| "pq-postgres:15".into());
        let name = format!("pq-faults-{}", std::process::id());
        let network = name.clone();
        // A fixed host port, so that it is published again after the network comes back.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        docker(&["network", "create", &network])?;
        let db = Database {
            url: format!("postgres://postgres:postgres@127.0.0.1:{port}/postgres"),
            name,
            network,
        };
        let publish = format!("127.0.0.1:{port}:5432");
        docker(&[
            "run",
            "-d",
            "--name",
            &db.name,
            "--network",
            &db.network,
            "-p",
            &publish,
            "-e",
            "POSTGRES_PASSWORD=postgres",
            &image,
            "postgres",
            "-c",
            "max_connections=400",
        ])?;
        Ok(db)
    }

    /// Restarts the server as an operator would: a fast shutdown (SIGINT to the postmaster:
    /// sessions are ended, open transactions rolled back, everything committed kept), then
    /// the container is started again. (`docker restart` sends SIGTERM, a smart shutdown that
    /// waits for every pooled session to leave, then kills the server: a crash.)
    fn restart(&self) -> Result<(), BoxError> {
        docker(&[
            "exec",
            &self.name,
            "sh",
            "-c",
            "kill -INT $(head -1 /var/lib/postgresql/data/postmaster.pid)",
        ])?;
        docker(&["wait", &self.name])?;
        docker(&["start", &self.name]).map(drop)
    }

    fn cut(&self) -> Result<(), BoxError> {
        docker(&["network", "disconnect", &self.network, &self.name]).map(drop)
    }

    fn reconnect(&self) -> Result<(), BoxError> {
        docker(&["network", "connect", &self.network, &self.name]).map(drop)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", "-v", &self.name]);
        let _ = docker(&["network", "rm", &self.network]);
    }
}

/// A pool that waits out a database that is not up yet (or restarting).
async fn admin_pool(url: &str) -> Result<PgPool, BoxError> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
        {
            Ok(pool) => return Ok(pool),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

// ----- a scenario -----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Kill,
    Restart,
    Pause,
    Cut,
    Terminate,
    Signals,
    Poison,
}

impl Scenario {
    const ALL: [Scenario; 7] = [
        Scenario::Kill,
        Scenario::Restart,
        Scenario::Pause,
        Scenario::Cut,
        Scenario::Terminate,
        Scenario::Signals,
        Scenario::Poison,
    ];
    const QUICK: [Scenario; 4] = [
        Scenario::Kill,
        Scenario::Pause,
        Scenario::Terminate,
        Scenario::Poison,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Kill => "kill",
            Scenario::Restart => "restart",
            Scenario::Pause => "pause",
            Scenario::Cut => "cut",
            Scenario::Terminate => "terminate",
            Scenario::Signals => "signals",
            Scenario::Poison => "poison",
        }
    }
}

/// The worker processes of a scenario, by index, and their standard error files.
struct Workers {
    url: String,
    schema: String,
    store: &'static str,
    procs: Vec<(i32, Child)>,
    next: i32,
    logs: Vec<std::path::PathBuf>,
    /// The workers sent SIGKILL.
    killed: Vec<i32>,
}

impl Workers {
    fn spawn(&mut self) -> Result<i32, BoxError> {
        let index = self.next;
        self.next += 1;
        let log = std::env::temp_dir().join(format!(
            "pq-faults-{}-{}-{index}.err",
            std::process::id(),
            self.schema
        ));
        let child = Command::new(std::env::current_exe()?)
            .args([
                "worker",
                &self.url,
                &self.schema,
                self.store,
                &index.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        self.logs.push(log);
        self.procs.push((index, child));
        Ok(index)
    }

    fn alive(&self) -> Vec<i32> {
        self.procs.iter().map(|(i, _)| *i).collect()
    }

    /// Sends `sig` to the worker at `slot` and takes it out of the running set.
    fn signal(&mut self, slot: usize, sig: &str) -> Result<(i32, Child), BoxError> {
        let (index, child) = self.procs.remove(slot % self.procs.len());
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .status()?;
        if !status.success() {
            return Err(format!("kill -{sig} failed").into());
        }
        if sig == "KILL" {
            self.killed.push(index);
        }
        Ok((index, child))
    }

    /// The (job, attempt) pairs whose plain effect write failed, as the workers logged them.
    fn failed_writes(&self) -> std::collections::HashSet<(i64, i32)> {
        let mut failed = std::collections::HashSet::new();
        for text in self
            .logs
            .iter()
            .filter_map(|l| std::fs::read_to_string(l).ok())
        {
            for line in text.lines() {
                let Some(rest) = line.strip_prefix(WRITE_FAILED) else {
                    continue;
                };
                let mut words = rest.split_whitespace();
                let job = words.next().and_then(|w| w.parse().ok());
                let attempt = words
                    .next()
                    .and_then(|w| w.trim_end_matches(':').parse().ok());
                if let (Some(job), Some(attempt)) = (job, attempt) {
                    failed.insert((job, attempt));
                }
            }
        }
        failed
    }

    fn panics(&self) -> usize {
        self.logs
            .iter()
            .filter_map(|l| std::fs::read_to_string(l).ok())
            .map(|text| text.matches("panicked at").count())
            .sum()
    }
}

/// Waits up to `limit` for `child` to exit; how long it took, or `None`.
async fn exited_within(child: &mut Child, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// The ids of the jobs put and acknowledged, each with its mode.
type Acked = Arc<Mutex<Vec<(i64, &'static str)>>>;

/// Puts jobs at `rate` a second, half to each queue, until told to stop; keeps the ids put.
async fn produce(store: SqlxStore, rate: u32, stop: Arc<AtomicBool>, acked: Acked) {
    let batch = 10u32;
    let every = Duration::from_secs_f64(f64::from(batch) / f64::from(rate.max(1)));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let modes: Vec<&'static str> = (0..batch)
            .map(|i| if i % 2 == 0 { "tx" } else { "plain" })
            .collect();
        let jobs: Vec<_> = modes
            .iter()
            .filter_map(|m| {
                if *m == "tx" {
                    TxEffect {}.to_job().ok()
                } else {
                    PlainEffect {}.to_job().ok()
                }
            })
            .collect();
        let put = tokio::time::timeout(Duration::from_secs(5), store.put_many(jobs)).await;
        if let Ok(Ok(ids)) = put {
            if let Ok(mut acked) = acked.lock() {
                acked.extend(ids.iter().map(|id| id.0).zip(modes));
            }
        }
    }
}

/// One row of the table.
struct Row {
    store: &'static str,
    scenario: &'static str,
    mode: &'static str,
    jobs: usize,
    lost: usize,
    dup: usize,
    /// Of `dup`, the effects recorded by an attempt the worker could not see succeed.
    explained: usize,
    left: usize,
    poison_failed: usize,
    recovery: Option<Duration>,
    panics: usize,
    note: String,
}

impl Row {
    fn meets_bar(&self) -> bool {
        let dup_ok = self.dup == 0 || (self.mode == "plain" && self.dup == self.explained);
        self.lost == 0
            && dup_ok
            && self.left == 0
            && self.panics == 0
            && self.recovery.is_none_or(|r| r <= RECOVERY_BAR)
            && !self.note.contains("MISSED")
    }
}

/// The poison rows of every kind, put by plain SQL; returns their ids.
async fn put_poison(admin: &PgPool, t: &str, table: &QueueTable) -> Result<Vec<i64>, BoxError> {
    sqlx::raw_sql(AssertSqlSafe(format!(
        "ALTER TABLE {t} DROP CONSTRAINT \"{}_finite_times\"",
        table.table()
    )))
    .execute(admin)
    .await?;
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let mut ids = Vec::new();
    for queue in ["tx", "plain"] {
        let task = if queue == "tx" {
            "tx_effect"
        } else {
            "plain_effect"
        };
        let rows = [
            format!("'{{\"task\":\"{task}\",\"args\":{{}},\"x\":1e400}}', NULL"),
            format!("'{{\"task\":\"{task}\",\"args\":{{}},\"deep\":{deep}}}', NULL"),
            format!("'{{\"task\":\"{task}\",\"args\":{{}}}}', '-infinity'"),
            "'42', NULL".to_string(),
        ];
        for values in rows {
            let id: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
                "INSERT INTO {t} (queue, payload, expected_at) VALUES ('{queue}', {values}) RETURNING id"
            )))
            .fetch_one(admin)
            .await?;
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Injects the scenario's fault; returns when each fault ended (wall clock) and notes.
async fn inject(
    scenario: Scenario,
    quick: bool,
    db: &Database,
    workers: &mut Workers,
    admin_url: &str,
) -> Result<(Vec<DateTime<Utc>>, String), BoxError> {
    let mut ends = Vec::new();
    let mut note = String::new();
    let rounds = if quick { 1 } else { 2 };
    let hold = if quick {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(10)
    };
    match scenario {
        Scenario::Kill => {
            let kills = if quick { 6 } else { 24 };
            for k in 0..kills {
                let (_, mut child) = workers.signal(fastrand::usize(..), "KILL")?;
                let _ = child.wait();
                workers.spawn()?;
                tokio::time::sleep(Duration::from_millis(if k % 3 == 0 { 1500 } else { 500 }))
                    .await;
            }
            ends.push(Utc::now());
            note = format!("{kills} SIGKILLs");
        }
        Scenario::Restart => {
            for _ in 0..rounds {
                db.restart()?;
                ends.push(Utc::now());
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            note = format!("{rounds} restarts");
        }
        Scenario::Pause => {
            for _ in 0..rounds {
                docker(&["pause", &db.name])?;
                tokio::time::sleep(hold).await;
                docker(&["unpause", &db.name])?;
                ends.push(Utc::now());
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            note = format!("{rounds} pauses of {}s", hold.as_secs());
        }
        Scenario::Cut => {
            for _ in 0..rounds {
                db.cut()?;
                tokio::time::sleep(hold).await;
                db.reconnect()?;
                ends.push(Utc::now());
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            note = format!("{rounds} cuts of {}s", hold.as_secs());
        }
        Scenario::Terminate => {
            let admin = admin_pool(admin_url).await?;
            let span = if quick {
                Duration::from_secs(12)
            } else {
                Duration::from_secs(60)
            };
            let start = Instant::now();
            let mut killed = 0i64;
            while start.elapsed() < span {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(pg_terminate_backend(pid))::int8 FROM pg_stat_activity \
                     WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
                )
                .fetch_one(&admin)
                .await
                .unwrap_or(0);
                killed += n;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            ends.push(Utc::now());
            note = format!("{killed} backends terminated over {}s", span.as_secs());
        }
        Scenario::Signals => {
            let mut exits = Vec::new();
            for sig in ["TERM", "INT", "HUP"] {
                let (_, mut child) = workers.signal(0, sig)?;
                workers.spawn()?;
                // A draining worker stops once nothing is ready: under load, not before the
                // producer stops; give it the rest of the run.
                let limit = if sig == "HUP" {
                    Duration::from_secs(5)
                } else {
                    RECOVERY_BAR
                };
                let took = exited_within(&mut child, limit).await;
                match took {
                    Some(t) => exits.push(format!("SIG{sig} exit {:.1}s", t.as_secs_f64())),
                    None if sig == "HUP" => exits.push("SIGHUP still draining under load".into()),
                    None => exits.push(format!("SIG{sig} no exit within 10s: MISSED")),
                }
            }
            ends.push(Utc::now());
            note = exits.join(", ");
        }
        Scenario::Poison => {
            ends.push(Utc::now());
        }
    }
    Ok((ends, note))
}

#[allow(clippy::too_many_lines)]
async fn run_scenario(
    db: &Database,
    store_name: &'static str,
    scenario: Scenario,
    quick: bool,
    rate: u32,
) -> Result<Vec<Row>, BoxError> {
    let schema = format!("faults_{store_name}_{}", scenario.name());
    let table = QueueTable::new(&schema, "jobs")?;
    let t = table.qualified();
    let admin = admin_pool(&db.url).await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(&admin)
    .await?;
    let producer_pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&db.url)
        .await?;
    let producer_store = SqlxStore::with_table(producer_pool, table.clone()).await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE \"{schema}\".effects (job int8 NOT NULL, mode text NOT NULL, \
         worker int4 NOT NULL, attempt int4 NOT NULL, \
         at timestamptz NOT NULL DEFAULT clock_timestamp())"
    )))
    .execute(&admin)
    .await?;
    let poison = if scenario == Scenario::Poison {
        put_poison(&admin, &t, &table).await?
    } else {
        Vec::new()
    };

    let mut workers = Workers {
        url: db.url.clone(),
        schema: schema.clone(),
        store: store_name,
        procs: Vec::new(),
        next: 0,
        logs: Vec::new(),
        killed: Vec::new(),
    };
    for _ in 0..WORKERS {
        workers.spawn()?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let producing = tokio::spawn(produce(producer_store, rate, stop.clone(), acked.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;

    let (ends, mut note) = inject(scenario, quick, db, &mut workers, &db.url).await?;
    tokio::time::sleep(Duration::from_secs(if quick { 5 } else { 12 })).await;
    stop.store(true, Ordering::Relaxed);
    let _ = producing.await;

    // Drain: every job run, or left failed.
    let admin = admin_pool(&db.url).await?;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let pending: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {t} WHERE state <> 'failed' AND attempts < max_attempts"
        )))
        .fetch_one(&admin)
        .await
        .unwrap_or(i64::MAX);
        if pending == 0 {
            break;
        }
        if Instant::now() > deadline {
            note.push_str(&format!("; {pending} jobs not drained in 180s: MISSED"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let alive_at_end = workers.alive();
    while !workers.procs.is_empty() {
        let (index, mut child) = workers.signal(0, "INT")?;
        if exited_within(&mut child, Duration::from_secs(20))
            .await
            .is_none()
        {
            note.push_str(&format!(
                "; worker {index} did not finish on SIGINT: MISSED"
            ));
        }
    }

    // The count.
    let acked: Vec<(i64, &'static str)> = acked.lock().map(|a| a.clone()).unwrap_or_default();
    let effects: Vec<(i64, String, i32, DateTime<Utc>)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT job, mode, worker, at FROM \"{schema}\".effects"
    )))
    .fetch_all(&admin)
    .await?;
    let reruns = Reruns::find(&admin, &schema, &workers, &ends).await?;
    let remaining: Vec<(i64, String, String)> =
        sqlx::query_as(AssertSqlSafe(format!("SELECT id, queue, state FROM {t}")))
            .fetch_all(&admin)
            .await?;
    let mut effect_count: HashMap<i64, usize> = HashMap::new();
    for (job, _, _, _) in &effects {
        *effect_count.entry(*job).or_default() += 1;
    }
    let remaining_ids: HashMap<i64, (String, String)> = remaining
        .into_iter()
        .map(|(id, q, s)| (id, (q, s)))
        .collect();
    let mut rows = Vec::new();
    let recovery = recovery_after(&effects, &ends, &alive_at_end);
    for mode in ["tx", "plain"] {
        let mut row = Row {
            store: store_name,
            scenario: scenario.name(),
            mode,
            jobs: 0,
            lost: 0,
            dup: 0,
            explained: 0,
            left: 0,
            poison_failed: 0,
            recovery,
            panics: 0,
            note: note.clone(),
        };
        for (id, job_mode) in &acked {
            if *job_mode != mode {
                continue;
            }
            row.jobs += 1;
            let n = effect_count.get(id).copied().unwrap_or(0);
            row.dup += n.saturating_sub(1);
            row.explained += reruns.explained.get(id).copied().unwrap_or(0);
            if remaining_ids.contains_key(id) {
                row.left += 1;
            } else if n == 0 {
                row.lost += 1;
            }
        }
        for id in &poison {
            if let Some((queue, state)) = remaining_ids.get(id) {
                if queue == mode && state == "failed" {
                    row.poison_failed += 1;
                }
            }
        }
        if scenario == Scenario::Poison && row.poison_failed != 4 {
            row.note = format!("{} of 4 poison rows failed: MISSED", row.poison_failed);
        }
        rows.push(row);
    }
    let panics = workers.panics();
    for row in &mut rows {
        row.panics = panics;
    }
    for log in &workers.logs {
        let _ = std::fs::remove_file(log);
    }
    Ok(rows)
}

/// Jobs whose effect was recorded more than once, and why.
struct Reruns {
    /// Per job, its effects recorded by an attempt whose worker was SIGKILLed or whose
    /// effect write reported an error (committed, its acknowledgement lost): reruns the
    /// worker could not have avoided, as it could not see those attempts succeed.
    explained: HashMap<i64, usize>,
}

impl Reruns {
    async fn find(
        admin: &PgPool,
        schema: &str,
        workers: &Workers,
        ends: &[DateTime<Utc>],
    ) -> Result<Self, BoxError> {
        let rows: Vec<(i64, String, i32, i32, DateTime<Utc>)> =
            sqlx::query_as(AssertSqlSafe(format!(
                "SELECT job, mode, worker, attempt, at FROM \"{schema}\".effects \
                 WHERE job IN (SELECT job FROM \"{schema}\".effects GROUP BY job HAVING count(*) > 1) \
                 ORDER BY job, at"
            )))
            .fetch_all(admin)
            .await?;
        let failed = workers.failed_writes();
        let mut explained = HashMap::new();
        for job in rows.chunk_by(|a, b| a.0 == b.0) {
            // Every effect but the last was followed by another run of the job.
            let (earlier, _) = job.split_at(job.len() - 1);
            let mut n = 0;
            for (id, _, worker, attempt, _) in earlier {
                if workers.killed.contains(worker) || failed.contains(&(*id, *attempt)) {
                    n += 1;
                }
            }
            if n < earlier.len() {
                eprintln!(
                    "faults: job {} ran {} times, {} of the reruns unexplained: \
                     (mode, worker, attempt, at) {:?}; faults ended at {:?}; killed {:?}",
                    job[0].0,
                    job.len(),
                    earlier.len() - n,
                    job.iter()
                        .map(|e| (e.1.as_str(), e.2, e.3, e.4.to_rfc3339()))
                        .collect::<Vec<_>>(),
                    ends.iter().map(DateTime::to_rfc3339).collect::<Vec<_>>(),
                    workers.killed,
                );
            }
            explained.insert(job[0].0, n);
        }
        Ok(Reruns { explained })
    }
}

/// For each fault end, the longest any worker alive at the end took to record an effect
/// after it; the worst over the fault ends.
fn recovery_after(
    effects: &[(i64, String, i32, DateTime<Utc>)],
    ends: &[DateTime<Utc>],
    alive: &[i32],
) -> Option<Duration> {
    let mut worst: Option<Duration> = None;
    for end in ends {
        for worker in alive {
            let first = effects
                .iter()
                .filter(|e| e.2 == *worker && e.3 >= *end)
                .map(|e| e.3)
                .min();
            // A worker started after the fault ended has nothing to recover from.
            let Some(first) = first else { continue };
            let took = (first - *end).to_std().unwrap_or_default();
            worst = Some(worst.map_or(took, |w| w.max(took)));
        }
    }
    worst
}

fn print_table(rows: &[Row]) {
    println!();
    println!("| store | scenario | mode | jobs | lost | dup | dup explained | left | poison failed | recovery | panics | bar | fault |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.store,
            r.scenario,
            r.mode,
            r.jobs,
            r.lost,
            r.dup,
            r.explained,
            r.left,
            r.poison_failed,
            r.recovery
                .map_or("-".into(), |d| format!("{:.1}s", d.as_secs_f64())),
            r.panics,
            if r.meets_bar() { "met" } else { "MISSED" },
            r.note
        );
    }
}

async fn orchestrate(args: &[String]) -> Result<bool, BoxError> {
    let quick = args.iter().any(|a| a == "--quick");
    let pick = |flag: &str| -> Vec<String> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].clone())
            .collect()
    };
    let rate = pick("--rate")
        .first()
        .and_then(|r| r.parse().ok())
        .unwrap_or(400);
    let mut stores: Vec<&'static str> = Vec::new();
    for s in pick("--store") {
        stores.push(if s == "diesel" { "diesel" } else { "sqlx" });
    }
    if stores.is_empty() {
        stores = vec!["sqlx", "diesel"];
    }
    let wanted = pick("--scenario");
    let scenarios: Vec<Scenario> = if quick {
        &Scenario::QUICK[..]
    } else {
        &Scenario::ALL[..]
    }
    .iter()
    .copied()
    .filter(|s| wanted.is_empty() || wanted.iter().any(|w| w == s.name()))
    .collect();

    let db = Database::start()?;
    admin_pool(&db.url).await?;
    let mut rows = Vec::new();
    for store in &stores {
        for scenario in &scenarios {
            eprintln!("faults: {store} / {}", scenario.name());
            let got = run_scenario(&db, store, *scenario, quick, rate).await?;
            rows.extend(got);
        }
    }
    print_table(&rows);
    let all_met = rows.iter().all(Row::meets_bar);
    println!();
    println!(
        "faults: {} rows, {}",
        rows.len(),
        if all_met {
            "every row meets the bar"
        } else {
            "a row MISSED the bar"
        }
    );
    Ok(all_met)
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if args.first().map(String::as_str) == Some("worker") {
        let [_, url, schema, store, index] = &args[..] else {
            return Err("usage: faults worker URL SCHEMA STORE INDEX".into());
        };
        let index: i32 = index.parse()?;
        return rt.block_on(worker_process(url, schema, store, index));
    }
    if rt.block_on(orchestrate(&args))? {
        Ok(())
    } else {
        Err("the fault suite missed its bar".into())
    }
}

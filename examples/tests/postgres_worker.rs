//! The worker on PostgreSQL: transactional handlers on both stores, and a worker process
//! killed mid-job.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a test's verdict

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use diesel_async::{AsyncPgConnection, RunQueryDsl};
use pq_api::postgres::QueueTable;
use pq_api::{
    JobState, QueueStore, QueueStoreExt, Registry, RunTask, StopMode, Task, TaskContext,
    TaskDefaults, TaskError, Worker,
};
use pq_conformance::postgres::{database_url, fresh_schema};
use pq_diesel::{DieselStore, DieselTask};
use pq_sqlx::{SqlxStore, SqlxTask};
use serde::{Deserialize, Serialize};
use sqlx::{AssertSqlSafe, PgPool};
use tokio::time::Instant;

mod support;

/// Marks an order shipped; fails after writing when asked to; with `linger`, waits to be
/// cancelled before succeeding.
#[derive(Debug, Serialize, Deserialize)]
struct Ship {
    orders: String,
    order: i32,
    fail: bool,
    linger: bool,
}

impl Task for Ship {
    const NAME: &'static str = "ship";
    const QUEUE: &'static str = "ship";
    fn defaults() -> TaskDefaults {
        TaskDefaults::new().max_attempts(1)
    }
}

impl Ship {
    fn update(&self) -> String {
        format!(
            "UPDATE {} SET shipped = true WHERE id = {}",
            self.orders, self.order
        )
    }

    async fn finish(self, cx: TaskContext) -> Result<(), TaskError> {
        if self.fail {
            return Err(TaskError::new("carrier refused the parcel"));
        }
        if self.linger {
            cx.cancelled().await;
        }
        Ok(())
    }
}

impl SqlxTask for Ship {
    async fn run(self, cx: TaskContext, tx: &mut sqlx::PgConnection) -> Result<(), TaskError> {
        sqlx::query(AssertSqlSafe(self.update()))
            .execute(&mut *tx)
            .await?;
        self.finish(cx).await
    }
}

impl DieselTask for Ship {
    async fn run(self, cx: TaskContext, conn: &mut AsyncPgConnection) -> Result<(), TaskError> {
        diesel::sql_query(self.update()).execute(conn).await?;
        self.finish(cx).await
    }
}

async fn pool() -> PgPool {
    PgPool::connect(&database_url().await).await.unwrap()
}

/// Ships orders 1 (succeeds), 2 (fails after writing) and 3 (loses its lease after writing)
/// through a worker on `store` with `registry`, then checks what committed.
async fn transactional_handlers_commit_only_with_the_jobs_removal(
    store: Arc<dyn QueueStore>,
    registry: Registry,
    pool: PgPool,
    schema: &str,
) {
    let orders = format!("\"{schema}\".orders");
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE {orders} (id int PRIMARY KEY, shipped bool NOT NULL DEFAULT false);
         INSERT INTO {orders} (id) VALUES (1), (2), (3)"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let ship = |order, fail, linger| Ship {
        orders: orders.clone(),
        order,
        fail,
        linger,
    };
    let ok = store.enqueue(&ship(1, false, false)).await.unwrap();
    let failing = store.enqueue(&ship(2, true, false)).await.unwrap();
    let lingering = store.enqueue(&ship(3, false, true)).await.unwrap();

    let worker = Worker::new(store.clone(), registry)
        .lease(Duration::from_secs(5))
        .heartbeat(Duration::from_millis(50));
    let handle = worker.handle();
    let run = tokio::spawn(worker.run());
    // Orders 1 and 2 settle; order 3 lingers, then its job is taken away.
    let deadline = Instant::now() + Duration::from_secs(30);
    while handle.status().processed + handle.status().failed < 2 {
        assert!(Instant::now() < deadline, "jobs 1 and 2 settle");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(store.job(lingering).await.unwrap().state, JobState::Running);
    let failed = store.job(failing).await.unwrap();
    assert_eq!(failed.state, JobState::Failed);
    assert_eq!(
        failed.last_error.as_deref(),
        Some("carrier refused the parcel")
    );
    store.purge("ship").await.unwrap();
    handle.stop(StopMode::Finish);
    let status = run.await.unwrap().unwrap();
    assert_eq!((status.processed, status.failed, status.lost), (1, 1, 1));

    let shipped: Vec<(i32, bool)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT id, shipped FROM {orders} ORDER BY id"
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(shipped, vec![(1, true), (2, false), (3, false)]);
    assert!(store.job(ok).await.is_err(), "job 1 removed with its write");
}

#[tokio::test]
async fn sqlx_transactional_handlers_commit_only_with_the_jobs_removal() {
    let schema = fresh_schema();
    let pool = pool().await;
    let store = SqlxStore::with_table(pool.clone(), QueueTable::new(&schema, "jobs").unwrap())
        .await
        .unwrap();
    let registry = Registry::new()
        .register_with::<Ship>(store.transactional::<Ship>())
        .unwrap();
    transactional_handlers_commit_only_with_the_jobs_removal(
        Arc::new(store),
        registry,
        pool,
        &schema,
    )
    .await;
}

#[tokio::test]
async fn diesel_transactional_handlers_commit_only_with_the_jobs_removal() {
    let schema = fresh_schema();
    let url = database_url().await;
    let table = QueueTable::new(&schema, "jobs").unwrap();
    let store = DieselStore::with_table(DieselStore::pool(&url, 4).unwrap(), table)
        .await
        .unwrap();
    let registry = Registry::new()
        .register_with::<Ship>(store.transactional::<Ship>())
        .unwrap();
    transactional_handlers_commit_only_with_the_jobs_removal(
        Arc::new(store),
        registry,
        pool().await,
        &schema,
    )
    .await;
}

/// Counts attempts; the first one hangs (the process running it gets killed).
#[derive(Debug, Serialize, Deserialize)]
struct Hang;

impl Task for Hang {
    const NAME: &'static str = "hang";
    const QUEUE: &'static str = "hang";
}

impl RunTask for Hang {
    async fn run(self, cx: TaskContext) -> Result<(), TaskError> {
        if cx.attempt() == 1 {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

const CHILD_SCHEMA: &str = "PQ_TEST_CHILD_SCHEMA";
const CHILD_DRIVER: &str = "PQ_TEST_CHILD_DRIVER";
const CHILD_LEASE: Duration = Duration::from_secs(1);

/// The store a child process works on: the driver and the schema its parent named.
async fn child_store() -> Arc<dyn QueueStore> {
    let schema = std::env::var(CHILD_SCHEMA).expect("started by the parent test");
    let driver = std::env::var(CHILD_DRIVER).expect("started by the parent test");
    let table = QueueTable::new(&schema, "jobs").unwrap();
    support::Driver::named(&driver).open(&table, 4).await
}

/// Starts this test binary's ignored test `name` as a child process on `driver` and `schema`.
async fn spawn_child(name: &str, driver: support::Driver, schema: &str, out: Stdio) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--ignored", "--quiet", "--nocapture"])
        .env("PQ_TEST_DATABASE_URL", database_url().await)
        .env(CHILD_SCHEMA, schema)
        .env(CHILD_DRIVER, driver.name())
        .stdout(out)
        .spawn()
        .unwrap()
}

/// Not a test on its own: the worker process that
/// `a_worker_process_killed_mid_job_loses_nothing` starts and kills.
#[tokio::test]
#[ignore = "run as a child process by a_worker_process_killed_mid_job_loses_nothing"]
async fn child_worker_process() {
    let registry = Registry::new().register::<Hang>().unwrap();
    Worker::new(child_store().await, registry)
        .lease(CHILD_LEASE)
        .run()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_worker_process_killed_mid_job_loses_nothing() {
    for driver in support::DRIVERS {
        a_worker_process_killed_mid_job_loses_nothing_on(driver).await;
    }
}

async fn a_worker_process_killed_mid_job_loses_nothing_on(driver: support::Driver) {
    let schema = fresh_schema();
    let store = driver
        .open(&QueueTable::new(&schema, "jobs").unwrap(), 4)
        .await;
    let id = store.enqueue(&Hang).await.unwrap();
    let mut child = spawn_child("child_worker_process", driver, &schema, Stdio::null()).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.job(id).await.unwrap().state != JobState::Running {
        assert!(Instant::now() < deadline, "the child claims the job");
        assert!(child.try_wait().unwrap().is_none(), "the child is alive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the child heartbeat at least once, then kill it without warning.
    tokio::time::sleep(CHILD_LEASE).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let job = store.job(id).await.unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Running, 1));

    let worker = Worker::new(store.clone(), Registry::new().register::<Hang>().unwrap());
    let handle = worker.handle();
    let run = tokio::spawn(worker.run());
    while handle.status().processed < 1 {
        assert!(Instant::now() < deadline, "the job runs again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.stop(StopMode::Finish);
    let status = run.await.unwrap().unwrap();
    assert_eq!((status.processed, status.failed, status.lost), (1, 0, 0));
    assert_eq!(store.stats("hang").await.unwrap().total(), 0);
}

/// Reports on standard output when it starts and when it is told to stop; waits for that.
#[derive(Debug, Serialize, Deserialize)]
struct Steer;

impl Task for Steer {
    const NAME: &'static str = "steer";
    const QUEUE: &'static str = "steer";
}

impl RunTask for Steer {
    async fn run(self, cx: TaskContext) -> Result<(), TaskError> {
        println!("started {}", cx.id());
        let why = cx.cancelled().await;
        println!("stopped {} {why:?}", cx.id());
        Ok(())
    }
}

/// Not a test on its own: the worker process that
/// `a_pause_and_a_cancel_reach_a_worker_process_within_a_second` steers.
#[tokio::test]
#[ignore = "run as a child process by a_pause_and_a_cancel_reach_a_worker_process_within_a_second"]
async fn child_steered_worker_process() {
    let registry = Registry::new().register::<Steer>().unwrap();
    // A heartbeat far off, and a long idle wait: only notifications can be this quick.
    Worker::new(child_store().await, registry)
        .lease(Duration::from_secs(120))
        .idle_wait(Duration::from_secs(60))
        .run()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_pause_and_a_cancel_reach_a_worker_process_within_a_second() {
    for driver in support::DRIVERS {
        a_pause_and_a_cancel_reach_a_worker_process_within_a_second_on(driver).await;
    }
}

async fn a_pause_and_a_cancel_reach_a_worker_process_within_a_second_on(driver: support::Driver) {
    use std::io::BufRead;
    let schema = fresh_schema();
    let store = driver
        .open(&QueueTable::new(&schema, "jobs").unwrap(), 4)
        .await;
    let name = "child_steered_worker_process";
    let mut child = spawn_child(name, driver, &schema, Stdio::piped()).await;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let next_line = |within: Duration| {
        let rx = &rx;
        loop {
            match rx.recv_timeout(within) {
                Ok(line) if line.starts_with("started") || line.starts_with("stopped") => {
                    return Some(line)
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    };

    // A cancel reaches the handler running in the other process.
    let first = store.enqueue(&Steer).await.unwrap();
    let line = next_line(Duration::from_secs(60));
    assert_eq!(line.as_deref(), Some(format!("started {first}").as_str()));
    let asked = Instant::now();
    store.cancel(first).await.unwrap();
    let line = next_line(Duration::from_secs(10));
    let took = asked.elapsed();
    assert_eq!(
        line.as_deref(),
        Some(format!("stopped {first} Requested").as_str())
    );
    assert!(took < Duration::from_secs(1), "the cancel took {took:?}");
    assert_eq!(store.job(first).await.unwrap().state, JobState::Cancelled);

    // A paused queue's job is left alone; resuming starts it at once.
    store.pause("steer").await.unwrap();
    let second = store.enqueue(&Steer).await.unwrap();
    assert_eq!(next_line(Duration::from_millis(1500)), None, "paused");
    assert_eq!(store.job(second).await.unwrap().state, JobState::Ready);
    let asked = Instant::now();
    store.resume("steer").await.unwrap();
    let line = next_line(Duration::from_secs(10));
    let took = asked.elapsed();
    assert_eq!(line.as_deref(), Some(format!("started {second}").as_str()));
    assert!(took < Duration::from_secs(1), "the resume took {took:?}");

    child.kill().unwrap();
    child.wait().unwrap();
}

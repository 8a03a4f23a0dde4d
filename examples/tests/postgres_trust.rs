//! Trust at the edges, on both SQL stores: rows written by plain SQL that pq cannot decode,
//! connections that break under a handler, a heartbeat meeting the handler's own
//! transaction, a pool of one connection, and tables whose names clash.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a test's verdict

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use diesel_async::{AsyncPgConnection, RunQueryDsl};
use pq_api::postgres::QueueTable;
use pq_api::{
    Claim, Error, JobId, JobState, QueueStore, QueueStoreExt, Registry, RunTask, StopMode, Task,
    TaskContext, TaskDefaults, TaskError, Worker, WorkerStatus,
};
use pq_conformance::postgres::{database_url, fresh_schema};
use pq_diesel::{DieselStore, DieselTask};
use pq_sqlx::{SqlxStore, SqlxTask};
use serde::{Deserialize, Serialize};
use sqlx::{AssertSqlSafe, PgPool};
use tokio::time::Instant;

mod support;

async fn pool(size: u32) -> PgPool {
    support::pool(size).await
}

/// A store of each driver, each on a fresh schema, with `size` connections in its pool.
async fn stores(size: u32) -> Vec<(Arc<dyn QueueStore>, QueueTable)> {
    let stores = support::stores(size).await;
    stores.into_iter().map(|(_, s, t)| (s, t)).collect()
}

/// A store of each driver on a fresh schema, each with a registry running `T` inside the job's
/// transaction.
async fn transactional_stores<T: SqlxTask + DieselTask>(
) -> [(Arc<dyn QueueStore>, QueueTable, Registry); 2] {
    let sqlx_table = QueueTable::new(&fresh_schema(), "jobs").unwrap();
    let sqlx_store = SqlxStore::with_table(pool(4).await, sqlx_table.clone())
        .await
        .unwrap();
    let diesel_table = QueueTable::new(&fresh_schema(), "jobs").unwrap();
    let diesel_pool = DieselStore::pool(&database_url().await, 4).unwrap();
    let diesel_store = DieselStore::with_table(diesel_pool, diesel_table.clone())
        .await
        .unwrap();
    let sqlx_registry = Registry::new()
        .register_with::<T>(sqlx_store.transactional::<T>())
        .unwrap();
    let diesel_registry = Registry::new()
        .register_with::<T>(diesel_store.transactional::<T>())
        .unwrap();
    [
        (Arc::new(sqlx_store), sqlx_table, sqlx_registry),
        (Arc::new(diesel_store), diesel_table, diesel_registry),
    ]
}

async fn exec(pool: &PgPool, sql: String) {
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(pool)
        .await
        .unwrap();
}

async fn insert_returning_id(pool: &PgPool, sql: String) -> JobId {
    JobId(
        sqlx::query_scalar(AssertSqlSafe(sql))
            .fetch_one(pool)
            .await
            .unwrap(),
    )
}

#[derive(Debug, Serialize, Deserialize)]
struct Probe {}

impl Task for Probe {
    const NAME: &'static str = "probe";
    const QUEUE: &'static str = "probe";
}

impl RunTask for Probe {
    async fn run(self, _cx: TaskContext) -> Result<(), TaskError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_row_that_cannot_be_decoded_fails_alone_and_its_batch_runs() {
    let admin = pool(2).await;
    for (store, table) in stores(4).await {
        let t = table.qualified();
        // A table from before the finite-times check, holding what that check now refuses.
        exec(
            &admin,
            format!(
                "ALTER TABLE {t} DROP CONSTRAINT \"{}_finite_times\"",
                table.table()
            ),
        )
        .await;
        let good = store
            .put_many((0..4).map(|_| Probe {}.to_job().unwrap()).collect())
            .await
            .unwrap();
        let insert = |columns: &str, values: &str| {
            format!(
                "INSERT INTO {t} (queue, payload{columns}) VALUES ('probe', {values}) RETURNING id"
            )
        };
        let huge = insert_returning_id(
            &admin,
            insert("", r#"'{"task":"probe","args":{},"x":1e400}'"#),
        )
        .await;
        let deep = format!("'{}1{}'", "[".repeat(200), "]".repeat(200));
        let nested = insert_returning_id(
            &admin,
            insert("", &format!(r#"jsonb_build_object('task', 'probe', 'args', '{{}}'::jsonb, 'deep', {deep}::jsonb)"#)),
        )
        .await;
        let endless = insert_returning_id(
            &admin,
            insert(
                ", expected_at",
                r#"'{"task":"probe","args":{}}', '-infinity'"#,
            ),
        )
        .await;
        let ancient = insert_returning_id(
            &admin,
            insert(
                ", created_at",
                r#"'{"task":"probe","args":{}}', '-infinity'"#,
            ),
        )
        .await;

        let registry = Registry::new().register::<Probe>().unwrap();
        let status = tokio::time::timeout(
            Duration::from_secs(60),
            Worker::new(store.clone(), registry).run_until_drained(),
        )
        .await
        .expect("the worker drains")
        .unwrap();
        assert_eq!((status.processed, status.lost), (4, 0), "{status:?}");
        for id in good {
            assert!(matches!(store.job(id).await, Err(Error::NotFound(_))));
        }
        for id in [huge, nested, endless, ancient] {
            let (state, attempts, error): (String, i32, Option<String>) =
                sqlx::query_as(AssertSqlSafe(format!(
                    "SELECT state, attempts, last_error FROM {t} WHERE id = $1"
                )))
                .bind(id.0)
                .fetch_one(&admin)
                .await
                .unwrap();
            assert_eq!((state.as_str(), attempts), ("failed", 1), "job {id}");
            let error = error.unwrap_or_default();
            assert!(error.contains("cannot decode"), "job {id}: {error:?}");
        }
        for id in [endless, ancient] {
            let err = store.job(id).await.unwrap_err();
            assert!(matches!(err, Error::BadValue(_)), "{err:?}");
        }
        let err = store.job(huge).await.unwrap_err();
        assert!(matches!(err, Error::Codec(_)), "{err:?}");
        assert!(store
            .claim(&Claim::new(["probe"]).limit(10))
            .await
            .unwrap()
            .is_empty());
    }
}

/// A job left from before the finite-times check (migration 3 added it `NOT VALID`) holding a
/// time the check refuses is failed alone by the next migration, and the check validated: the
/// jobs beside it run, where once every claim reaching it failed and stalled its queues.
#[tokio::test]
async fn a_job_from_before_the_finite_times_check_fails_alone_and_its_queue_runs() {
    let admin = pool(2).await;
    for driver in support::DRIVERS {
        let table = support::fresh_table("jobs");
        let store = driver.open(&table, 4).await;
        let (t, name) = (table.qualified(), table.table());
        let migrations = format!("\"{}\".\"{name}_migrations\"", table.schema());
        let history = format!("\"{}\".\"{name}_history\"", table.schema());
        let check = "isfinite(run_at) AND isfinite(created_at) \
                     AND (expected_at IS NULL OR isfinite(expected_at))";
        // The table as a store from before this fix left it: the checks not valid, a job and
        // a history record from before them that they refuse.
        exec(
            &admin,
            format!(
                "ALTER TABLE {t} DROP CONSTRAINT \"{name}_finite_times\";
                 ALTER TABLE {history} DROP CONSTRAINT \"{name}_history_finite_times\";
                 INSERT INTO {t} (queue, payload, expected_at)
                   VALUES ('probe', '{{\"task\":\"probe\",\"args\":{{}}}}', '-infinity');
                 INSERT INTO {history} (id, queue, payload, cursor, priority, attempts,
                   created_at, finished_at, keep_until)
                   VALUES (1000000, 'probe', '{{}}', false, 0, 1, now(), now(), 'infinity');
                 ALTER TABLE {t} ADD CONSTRAINT \"{name}_finite_times\" CHECK ({check}) NOT VALID;
                 ALTER TABLE {history} ADD CONSTRAINT \"{name}_history_finite_times\"
                   CHECK (isfinite(created_at) AND isfinite(finished_at) AND isfinite(keep_until))
                   NOT VALID;
                 DELETE FROM {migrations} WHERE version = 10"
            ),
        )
        .await;
        let old = insert_returning_id(
            &admin,
            format!("SELECT id FROM {t} WHERE expected_at = '-infinity'"),
        )
        .await;
        let good = store
            .put_many((0..20).map(|_| Probe {}.to_job().unwrap()).collect())
            .await
            .unwrap();
        drop(store);

        let store = driver.open(&table, 4).await;
        let registry = Registry::new().register::<Probe>().unwrap();
        let status = tokio::time::timeout(
            Duration::from_secs(30),
            Worker::new(store.clone(), registry).run_until_drained(),
        )
        .await
        .unwrap_or_else(|_| panic!("{driver:?}: the worker drains"))
        .unwrap();
        assert_eq!((status.processed, status.lost), (20, 0), "{driver:?}");
        for id in good {
            assert!(matches!(store.job(id).await, Err(Error::NotFound(_))));
        }
        let job = store.job(old).await.unwrap();
        assert_eq!((job.state, job.expected_at), (JobState::Failed, None));
        let error = job.last_error.unwrap_or_default();
        assert!(
            error.contains("expected_at -infinity"),
            "{driver:?}: {error}"
        );
        let kept = store.finished(JobId(1_000_000)).await.unwrap();
        assert!(kept.keep_until > chrono::Utc::now() + chrono::TimeDelta::days(36_000));
        let valid: Vec<bool> = sqlx::query_scalar(
            "SELECT convalidated FROM pg_constraint
             WHERE conrelid IN ($1::regclass, $2::regclass) AND conname LIKE '%finite_times'",
        )
        .bind(&t)
        .bind(&history)
        .fetch_all(&admin)
        .await
        .unwrap();
        assert_eq!(valid, [true, true], "{driver:?}: both checks validated");
    }
}

#[tokio::test]
async fn the_table_refuses_infinite_times_and_wait_survives_one_left_from_before() {
    let admin = pool(2).await;
    for (store, table) in stores(4).await {
        let t = table.qualified();
        for (column, value) in [
            ("run_at", "infinity"),
            ("expected_at", "-infinity"),
            ("created_at", "infinity"),
        ] {
            let err = sqlx::raw_sql(AssertSqlSafe(format!(
                "INSERT INTO {t} (queue, payload, {column}) VALUES ('q', '{{}}', '{value}')"
            )))
            .execute(&admin)
            .await
            .unwrap_err();
            let code = err.as_database_error().and_then(|e| e.code());
            assert_eq!(code.as_deref(), Some("23514"), "{column} {value}: {err}");
        }
        exec(
            &admin,
            format!(
                "ALTER TABLE {t} DROP CONSTRAINT \"{}_finite_times\";
                 INSERT INTO {t} (queue, payload, run_at) VALUES ('q', '{{}}', 'infinity')",
                table.table()
            ),
        )
        .await;
        let woke = store
            .wait(&["q".to_string()], Duration::from_millis(200))
            .await
            .unwrap();
        assert!(!woke, "a job due at infinity never comes due");
        assert!(store.claim(&Claim::new(["q"])).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn a_store_runs_on_a_pool_of_one_connection() {
    for (store, _table) in stores(1).await {
        let nothing = store
            .get(&Claim::new(["probe"]), Duration::from_millis(200))
            .await
            .unwrap();
        assert!(nothing.is_none());
        let ids = store
            .put_many((0..20).map(|_| Probe {}.to_job().unwrap()).collect())
            .await
            .unwrap();
        assert_eq!(ids.len(), 20);
        let registry = Registry::new().register::<Probe>().unwrap();
        let status = tokio::time::timeout(
            Duration::from_secs(60),
            Worker::new(store.clone(), registry).run_until_drained(),
        )
        .await
        .expect("the worker drains")
        .unwrap();
        assert_eq!((status.processed, status.failed), (20, 0));
        assert_eq!(store.stats("probe").await.unwrap().total(), 0);
    }
}

#[tokio::test]
async fn a_table_named_like_another_stores_own_tables_is_a_schema_error() {
    let schema = fresh_schema();
    let first = QueueTable::new(&schema, "jobs").unwrap();
    SqlxStore::with_table(pool(2).await, first).await.unwrap();
    for name in ["jobs_keys", "jobs_history"] {
        let clash = QueueTable::new(&schema, name).unwrap();
        let err = SqlxStore::with_table(pool(2).await, clash.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Schema(m) if m.contains(name) && m.contains("clashes")),
            "{err:?}"
        );
        let diesel_pool = DieselStore::pool(&database_url().await, 2).unwrap();
        let err = DieselStore::with_table(diesel_pool, clash)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Schema(m) if m.contains(name) && m.contains("clashes")),
            "{err:?}"
        );
    }
}

/// Locks its own job's row inside the handler's transaction, then works on for several
/// heartbeats: each heartbeat then waits on that lock until the transaction commits.
#[derive(Debug, Serialize, Deserialize)]
struct HoldOwnRow {
    table: String,
}

impl Task for HoldOwnRow {
    const NAME: &'static str = "hold_own_row";
    const QUEUE: &'static str = "hold";
    fn defaults() -> TaskDefaults {
        TaskDefaults::new().max_attempts(1)
    }
}

const BEAT: Duration = Duration::from_millis(50);

impl HoldOwnRow {
    fn lock(&self, id: JobId) -> String {
        format!(
            "SELECT 1 FROM {} WHERE id = {} FOR UPDATE",
            self.table, id.0
        )
    }
}

impl SqlxTask for HoldOwnRow {
    async fn run(self, cx: TaskContext, tx: &mut sqlx::PgConnection) -> Result<(), TaskError> {
        sqlx::raw_sql(AssertSqlSafe(self.lock(cx.id())))
            .execute(&mut *tx)
            .await?;
        tokio::time::sleep(BEAT * 5).await;
        Ok(())
    }
}

impl DieselTask for HoldOwnRow {
    async fn run(self, cx: TaskContext, conn: &mut AsyncPgConnection) -> Result<(), TaskError> {
        diesel::sql_query(self.lock(cx.id())).execute(conn).await?;
        tokio::time::sleep(BEAT * 5).await;
        Ok(())
    }
}

async fn drain(worker: Worker) -> WorkerStatus {
    tokio::time::timeout(Duration::from_secs(60), worker.run_until_drained())
        .await
        .expect("the worker drains: nothing waits on itself")
        .unwrap()
}

#[tokio::test]
async fn a_heartbeat_waiting_on_the_handlers_own_transaction_never_stalls_it() {
    let runs = transactional_stores::<HoldOwnRow>().await;
    for (store, table, registry) in runs {
        let task = HoldOwnRow {
            table: table.qualified(),
        };
        let id = store.enqueue(&task).await.unwrap();
        let worker = Worker::new(store.clone(), registry)
            .lease(Duration::from_secs(30))
            .heartbeat(BEAT);
        let status = drain(worker).await;
        assert_eq!(
            (status.processed, status.failed, status.lost),
            (1, 0, 0),
            "{status:?}"
        );
        assert!(matches!(store.job(id).await, Err(Error::NotFound(_))));
    }
}

static BREAKS: AtomicU32 = AtomicU32::new(0);

/// The first run of each breaks its own connection mid-transaction; later runs record the
/// order as shipped.
#[derive(Debug, Serialize, Deserialize)]
struct BreakOnce {
    tag: u32,
    orders: String,
}

impl Task for BreakOnce {
    const NAME: &'static str = "break_once";
    const QUEUE: &'static str = "break";
    fn defaults() -> TaskDefaults {
        TaskDefaults::new().max_attempts(1)
    }
}

impl BreakOnce {
    fn statement(&self) -> String {
        if BREAKS.fetch_or(1 << self.tag, Ordering::SeqCst) & (1 << self.tag) == 0 {
            "SELECT pg_terminate_backend(pg_backend_pid())".to_string()
        } else {
            format!("INSERT INTO {} (tag) VALUES ({})", self.orders, self.tag)
        }
    }
}

impl SqlxTask for BreakOnce {
    async fn run(self, _cx: TaskContext, tx: &mut sqlx::PgConnection) -> Result<(), TaskError> {
        sqlx::raw_sql(AssertSqlSafe(self.statement()))
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

impl DieselTask for BreakOnce {
    async fn run(self, _cx: TaskContext, conn: &mut AsyncPgConnection) -> Result<(), TaskError> {
        diesel::sql_query(self.statement()).execute(conn).await?;
        Ok(())
    }
}

#[tokio::test]
async fn a_connection_lost_under_a_transactional_handler_costs_no_attempt() {
    let admin = pool(2).await;
    let runs = transactional_stores::<BreakOnce>().await;
    for (tag, (store, table, registry)) in (0u32..).zip(runs) {
        let orders = format!("\"{}\".orders", table.schema());
        exec(&admin, format!("CREATE TABLE {orders} (tag int NOT NULL)")).await;
        let id = store
            .enqueue(&BreakOnce {
                tag,
                orders: orders.clone(),
            })
            .await
            .unwrap();
        let worker = Worker::new(store.clone(), registry);
        let handle = worker.handle();
        let run = tokio::spawn(worker.run());
        let deadline = Instant::now() + Duration::from_secs(60);
        while handle.status().processed + handle.status().failed == 0 {
            assert!(Instant::now() < deadline, "the job settles");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        handle.stop(StopMode::Finish);
        let status = run.await.unwrap().unwrap();
        assert_eq!(
            (status.processed, status.failed, status.released),
            (1, 0, 1),
            "{status:?}"
        );
        assert!(matches!(store.job(id).await, Err(Error::NotFound(_))));
        let shipped: Vec<i32> =
            sqlx::query_scalar(AssertSqlSafe(format!("SELECT tag FROM {orders}")))
                .fetch_all(&admin)
                .await
                .unwrap();
        assert_eq!(shipped, vec![i32::try_from(tag).unwrap()]);
    }
}

/// Reports the idle bound of its transaction, then sits idle past it.
#[derive(Debug, Serialize, Deserialize)]
struct SitIdle {}

impl Task for SitIdle {
    const NAME: &'static str = "sit_idle";
    const QUEUE: &'static str = "idle";
}

static IDLE_BOUND: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

impl SqlxTask for SitIdle {
    async fn run(self, _cx: TaskContext, tx: &mut sqlx::PgConnection) -> Result<(), TaskError> {
        let bound: String = sqlx::query_scalar("SHOW idle_in_transaction_session_timeout")
            .fetch_one(&mut *tx)
            .await?;
        IDLE_BOUND.lock().unwrap().push(bound);
        tokio::time::sleep(Duration::from_millis(600)).await;
        sqlx::query("SELECT 1").execute(&mut *tx).await?;
        Ok(())
    }
}

#[tokio::test]
async fn the_server_ends_a_handlers_transaction_left_idle_past_its_bound() {
    let table = QueueTable::new(&fresh_schema(), "jobs").unwrap();
    let store = SqlxStore::with_table(pool(4).await, table).await.unwrap();
    let handler = store
        .transactional::<SitIdle>()
        .idle_timeout(Duration::from_millis(200));
    let registry = Registry::new().register_with::<SitIdle>(handler).unwrap();
    let id = store.enqueue(&SitIdle {}).await.unwrap();
    let status = drain(Worker::new(Arc::new(store.clone()), registry)).await;
    assert_eq!(
        (status.processed, status.failed, status.released),
        (0, 0, 1),
        "{status:?}"
    );
    assert_eq!(*IDLE_BOUND.lock().unwrap(), vec!["200ms".to_string()]);
    let job = store.job(id).await.unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Scheduled, 0));
}

#[test]
fn store_failures_are_told_apart_from_the_handlers_own() {
    let unavailable = TaskError::from(Error::Unavailable("connection reset".into()));
    assert!(unavailable.is_store_failure());
    // A handler's own I/O (a service it calls) is its own failure.
    let io = TaskError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
    assert!(!io.is_store_failure());
    assert!(!TaskError::from(Error::invalid("limit", "zero")).is_store_failure());
    assert!(!TaskError::new("the carrier refused").is_store_failure());
}

/// Locks its own job's row, then never finishes.
#[derive(Debug, Serialize, Deserialize)]
struct Stuck {
    table: String,
}

impl Task for Stuck {
    const NAME: &'static str = "stuck";
    const QUEUE: &'static str = "stuck";
}

impl Stuck {
    fn lock(&self, id: JobId) -> String {
        format!(
            "SELECT 1 FROM {} WHERE id = {} FOR UPDATE",
            self.table, id.0
        )
    }
}

impl SqlxTask for Stuck {
    async fn run(self, cx: TaskContext, tx: &mut sqlx::PgConnection) -> Result<(), TaskError> {
        sqlx::raw_sql(AssertSqlSafe(self.lock(cx.id())))
            .execute(&mut *tx)
            .await?;
        std::future::pending::<()>().await;
        Ok(())
    }
}

impl DieselTask for Stuck {
    async fn run(self, cx: TaskContext, conn: &mut AsyncPgConnection) -> Result<(), TaskError> {
        diesel::sql_query(self.lock(cx.id())).execute(conn).await?;
        std::future::pending::<()>().await;
        Ok(())
    }
}

#[tokio::test]
async fn an_aborted_transactional_handler_ends_its_transaction_on_the_server() {
    let admin = pool(2).await;
    let runs = transactional_stores::<Stuck>().await;
    for (store, table, registry) in runs {
        let t = table.qualified();
        let id = store.enqueue(&Stuck { table: t.clone() }).await.unwrap();
        let worker = Worker::new(store.clone(), registry);
        let handle = worker.handle();
        let run = tokio::spawn(worker.run());
        let locked = format!("SELECT 1 FROM {t} WHERE id = {} FOR UPDATE NOWAIT", id.0);
        let deadline = Instant::now() + Duration::from_secs(30);
        // The handler's transaction holds the row once the lock attempt fails.
        while sqlx::raw_sql(AssertSqlSafe(locked.clone()))
            .execute(&admin)
            .await
            .is_ok()
        {
            assert!(Instant::now() < deadline, "the handler takes its row");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        handle.stop(StopMode::Abort);
        let status = run.await.unwrap().unwrap();
        assert_eq!(status.released, 1, "{status:?}");
        // Well within the 30 s idle bound: the dropped transaction itself was ended.
        let deadline = Instant::now() + Duration::from_secs(10);
        while sqlx::raw_sql(AssertSqlSafe(locked.clone()))
            .execute(&admin)
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "the handler's transaction ends");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let job = store.job(id).await.unwrap();
        assert_eq!((job.state, job.attempts), (JobState::Ready, 0));
    }
}

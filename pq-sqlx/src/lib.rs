//! # pq-sqlx: pq's `QueueStore` on sqlx
//!
//! [`SqlxStore`] keeps the jobs in one PostgreSQL table (schema and table configurable through
//! [`QueueTable`]) and runs the statements of [`pq_api::postgres`], byte for byte the same as
//! `pq-diesel`. Claims use `FOR UPDATE SKIP LOCKED` in one round trip; `wait` is woken by
//! LISTEN/NOTIFY through a [`PgListener`].
//!
//! The reason to queue in PostgreSQL is transactions: [`put_many_in`](SqlxStore::put_many_in),
//! [`claim_in`](SqlxStore::claim_in) and [`complete_many_in`](SqlxStore::complete_many_in) run
//! on your own connection or transaction. (A query text you build at run time goes to sqlx in
//! [`sqlx::AssertSqlSafe`], once you have made sure it is safe.)
//!
//! ```no_run
//! use pq_api::{Claim, NewJob, QueueStore};
//! use pq_sqlx::SqlxStore;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://localhost/app").await?;
//! let store = SqlxStore::new(pool.clone()).await?; // creates or upgrades the table
//!
//! // Enqueue in the same transaction as the business write: both or neither.
//! let mut tx = pool.begin().await?;
//! sqlx::query("INSERT INTO orders (id) VALUES (42)").execute(&mut *tx).await?;
//! store.put_many_in(&mut tx, vec![NewJob::new("emails", &serde_json::json!({"order": 42}))?]).await?;
//! tx.commit().await?;
//!
//! // Claim, work and remove a job in one transaction with the handler's writes.
//! let mut tx = pool.begin().await?;
//! if let Some(job) = store.claim_in(&mut tx, &Claim::new(["emails"])).await?.pop() {
//!     sqlx::query("UPDATE orders SET mailed = true WHERE id = 42").execute(&mut *tx).await?;
//!     store.complete_many_in(&mut tx, &[job.lease.into()]).await?;
//! }
//! tx.commit().await?; // roll back instead and the job is claimable again at once
//! # Ok(()) }
//! ```
//!
//! For the worker, a [`SqlxTask`] runs inside a transaction that also removes its job:
//! register it with [`SqlxStore::transactional`].

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use pq_api::postgres::listen::Wakeups;
use pq_api::postgres::{
    self as sql, micros, DoneArrays, FinishedRow, InsertArrays, JobRow, MigrationStatements,
    Statements, Upkeep,
};
use pq_api::task::decode_args;
use pq_api::{
    Claim, ClaimedJob, Completion, Done, Error, Failure, FinishedJob, Job, JobHandler, JobId,
    JobState, Lease, NewJob, QueueStats, QueueStore, Result, Task, TaskContext, TaskError,
};
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgListener, PgRow, PgTypeInfo, PgValueFormat, PgValueRef};
use sqlx::{AssertSqlSafe, Executor, PgConnection, PgPool, Postgres, Row};
use tokio::sync::oneshot;

mod warm;
use pq_api::postgres::conn::Lane;
use warm::{Warm, WarmConn};

pub use pq_api::postgres::QueueTable;

/// How often `wait` looks at the table while the listener connection is down.
pub const FALLBACK_POLL: Duration = Duration::from_secs(5);

/// The sqlx store. Cloning gives another handle on the same store.
///
/// Its own statements (everything but the `_in` variants) run on connections from your pool.
/// While it is busy the store keeps up to two of them checked out between statements, most
/// recently used first, rather than handing each back after every statement (sqlx's pool
/// pings a connection on every return and hands out the oldest idle one first, which slowed a
/// busy worker markedly: see `docs/design.md`, "Kept connections"). A kept connection goes back to the pool after
/// 100 ms unused or 30 s kept, so an idle store holds none, and it never keeps the last
/// connection a pool could lend. Once something calls `wait`, the notification listener holds
/// a connection of its own, opened with the pool's options, outside the pool. The store runs
/// on a pool of one connection; for a busy worker, size the pool for two connections more
/// than the rest of your application needs at its busiest.
#[derive(Debug, Clone)]
pub struct SqlxStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    table: QueueTable,
    sql: Statements,
    wakeups: Arc<Wakeups>,
    /// Connections kept between the store's own statements.
    warm: Arc<Warm>,
    /// When the store vacuums its table and checks its statistics (see
    /// [`SqlxStore::vacuum_every`], [`SqlxStore::analyze_when_stale`]).
    upkeep: Upkeep,
    /// Dropping this stops the listener task.
    stop_listener: Mutex<Option<oneshot::Sender<()>>>,
}

/// Maps a sqlx error into the contract's error, keeping it as the source.
pub fn map_err(e: sqlx::Error) -> Error {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned());
            Error::from_sqlstate(code.as_deref(), Box::new(sqlx::Error::Database(db)))
        }
        e @ sqlx::Error::ColumnDecode { .. } => Error::BadValue(e.to_string()),
        e @ (sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed) => Error::Unavailable(Box::new(e)),
        e => Error::Backend(Box::new(e)),
    }
}

/// Runs `text` on a connection of `pool` as a simple query (no parameters, no transaction).
fn simple_query(
    pool: &PgPool,
    text: &Arc<str>,
) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
    let (pool, text) = (pool.clone(), text.clone());
    async move {
        let mut c = pool.acquire().await.map_err(map_err)?;
        let ran = sqlx::raw_sql(AssertSqlSafe(text)).execute(&mut *c).await;
        ran.map(drop).map_err(map_err)
    }
}

/// Runs `text`, a query of one boolean, on a connection of `pool`.
fn ask(
    pool: &PgPool,
    text: &Arc<str>,
) -> impl std::future::Future<Output = Result<bool>> + Send + 'static {
    let (pool, text) = (pool.clone(), text.clone());
    async move {
        sqlx::query_scalar::<_, bool>(AssertSqlSafe(text))
            .fetch_one(&pool)
            .await
            .map_err(map_err)
    }
}

/// A `timestamptz` decoded without panicking: sqlx's own decoding of `'infinity'` overflows
/// chrono and panics, where this returns an error for the one value.
struct Time(DateTime<Utc>);

impl sqlx::Type<Postgres> for Time {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as sqlx::Type<Postgres>>::type_info()
    }
    fn compatible(ty: &PgTypeInfo) -> bool {
        <DateTime<Utc> as sqlx::Type<Postgres>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, Postgres> for Time {
    fn decode(value: PgValueRef<'r>) -> std::result::Result<Self, BoxDynError> {
        if value.format() == PgValueFormat::Text {
            // Text is parsed, never added up: 'infinity' is an error here already.
            return <DateTime<Utc> as sqlx::Decode<Postgres>>::decode(value).map(Time);
        }
        let micros = <i64 as sqlx::Decode<Postgres>>::decode(value)?;
        sql::pg_time(micros)
            .map(Time)
            .ok_or_else(|| "a timestamp out of range (infinite?) for a job's time".into())
    }
}

fn time(row: &PgRow, i: usize) -> Result<DateTime<Utc>> {
    row.try_get::<Time, _>(i).map(|t| t.0).map_err(map_err)
}

fn opt_time(row: &PgRow, i: usize) -> Result<Option<DateTime<Utc>>> {
    let t: Option<Time> = row.try_get(i).map_err(map_err)?;
    Ok(t.map(|t| t.0))
}

fn q(text: &Arc<str>) -> AssertSqlSafe<Arc<str>> {
    AssertSqlSafe(text.clone())
}

fn job_row(row: &PgRow) -> Result<JobRow<'_>> {
    let get = |e: sqlx::Error| map_err(e);
    Ok(JobRow {
        id: row.try_get(0).map_err(get)?,
        queue: row.try_get(1).map_err(get)?,
        payload: Cow::Borrowed(row.try_get(2).map_err(get)?),
        priority: row.try_get(3).map_err(get)?,
        expected_at: opt_time(row, 4)?,
        run_at: time(row, 5)?,
        state: Cow::Borrowed(row.try_get(6).map_err(get)?),
        attempts: row.try_get(7).map_err(get)?,
        max_attempts: row.try_get(8).map_err(get)?,
        last_error: row.try_get(9).map_err(get)?,
        created_at: time(row, 10)?,
        lease_token: row.try_get(11).map_err(get)?,
        key: row.try_get(12).map_err(get)?,
        cursor: row.try_get(13).map_err(get)?,
        keep_for: row.try_get(14).map_err(get)?,
        key_state: row.try_get(15).map_err(get)?,
    })
}

fn finished_row(row: &PgRow) -> Result<FinishedRow> {
    let get = |e: sqlx::Error| map_err(e);
    Ok(FinishedRow {
        id: row.try_get(0).map_err(get)?,
        queue: row.try_get(1).map_err(get)?,
        payload: row.try_get(2).map_err(get)?,
        key: row.try_get(3).map_err(get)?,
        cursor: row.try_get(4).map_err(get)?,
        priority: row.try_get(5).map_err(get)?,
        attempts: row.try_get(6).map_err(get)?,
        result: row.try_get(7).map_err(get)?,
        created_at: time(row, 8)?,
        finished_at: time(row, 9)?,
        keep_until: time(row, 10)?,
    })
}

impl SqlxStore {
    /// A store on `public.pq_jobs`, creating or upgrading the table first.
    pub async fn new(pool: PgPool) -> Result<Self> {
        Self::with_table(pool, QueueTable::default()).await
    }

    /// A store on the given table, creating or upgrading it first.
    pub async fn with_table(pool: PgPool, table: QueueTable) -> Result<Self> {
        let store = Self::without_migrating(pool, table);
        store.migrate().await?;
        Ok(store)
    }

    /// A store on the given table, trusting that its schema is in place (for apps that apply
    /// [`pq_api::postgres::schema_ddl`] with their own migration tool).
    pub fn without_migrating(pool: PgPool, table: QueueTable) -> Self {
        SqlxStore {
            inner: Arc::new(Inner {
                sql: Statements::new(&table),
                warm: Warm::new(pool.clone()),
                upkeep: Upkeep::default(),
                pool,
                table,
                wakeups: Arc::new(Wakeups::default()),
                stop_listener: Mutex::new(None),
            }),
        }
    }

    /// Vacuums the jobs table, on a connection of the pool, after every `claimed_jobs` jobs
    /// this store claims (default
    /// [`Vacuuming::DEFAULT_EVERY`](sql::Vacuuming::DEFAULT_EVERY); 0 never does), if the
    /// store's role owns the table (asked before the first vacuum): see
    /// [`Vacuuming`](sql::Vacuuming) for why and how often.
    ///
    /// ```no_run
    /// # async fn demo(pool: sqlx::PgPool) -> pq_api::Result<()> {
    /// // Leave the table to autovacuum (tuned for it, say) instead.
    /// let store = pq_sqlx::SqlxStore::new(pool).await?.vacuum_every(0);
    /// # Ok(()) }
    /// ```
    pub fn vacuum_every(self, claimed_jobs: u64) -> Self {
        self.inner.upkeep.vacuuming.set_every(claimed_jobs);
        self
    }

    /// Checks the jobs table's planner statistics about once a second while the store claims
    /// jobs, and `ANALYZE`s the table, on a connection of the pool, when they lag far behind
    /// it (default on): see [`Analyzing`](sql::Analyzing) for why.
    ///
    /// ```no_run
    /// # async fn demo(pool: sqlx::PgPool) -> pq_api::Result<()> {
    /// // Leave the statistics to autovacuum.
    /// let store = pq_sqlx::SqlxStore::new(pool).await?.analyze_when_stale(false);
    /// # Ok(()) }
    /// ```
    pub fn analyze_when_stale(self, on: bool) -> Self {
        self.inner.upkeep.analyzing.set_on(on);
        self
    }

    /// After a claim of `claimed` jobs: starts the store's vacuum or statistics check if due.
    fn upkeep_after_claim(&self, claimed: usize) {
        let pool = &self.inner.pool;
        let run = |text: &Arc<str>| simple_query(pool, text);
        let ask = |text: &Arc<str>| ask(pool, text);
        self.inner
            .upkeep
            .after_claim(claimed, &self.inner.sql, run, ask);
    }

    /// The pool the store runs on.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The table the store keeps its jobs in.
    pub fn table(&self) -> &QueueTable {
        &self.inner.table
    }

    /// Applies the missing schema migrations, in one transaction under an advisory lock, so
    /// concurrent callers are safe. Tracked in `"<schema>"."<table>_migrations"`.
    pub async fn migrate(&self) -> Result<()> {
        let m = MigrationStatements::new(&self.inner.table);
        let mut tx = self.inner.pool.begin().await.map_err(map_err)?;
        sqlx::query(AssertSqlSafe(m.lock))
            .bind(self.inner.table.lock_key())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        sqlx::raw_sql(AssertSqlSafe(m.prepare))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let applied: Vec<i32> = sqlx::query_scalar(AssertSqlSafe(m.applied))
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?;
        for step in sql::migrations(&self.inner.table) {
            if applied.contains(&step.version) {
                continue;
            }
            sqlx::raw_sql(AssertSqlSafe(step.sql))
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            sqlx::query(AssertSqlSafe(m.record.clone()))
                .bind(step.version)
                .bind(step.description)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }

    /// [`QueueStore::put_many`] on your connection or transaction: roll it back and the jobs
    /// never existed; commit it and they are visible and wake workers.
    pub async fn put_many_in(
        &self,
        conn: &mut PgConnection,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<JobId>> {
        self.put_on(conn, jobs).await
    }

    /// [`QueueStore::claim`] on your connection or transaction. Inside a transaction the claim
    /// is undone with it: the jobs are claimable again at once, their attempt not counted.
    /// It commits as your transaction (or, outside one, your session) is set to: unlike the
    /// store's own claim, which commits without waiting for the WAL flush
    /// ([`Statements::claim`]), it leaves `synchronous_commit` alone.
    pub async fn claim_in(
        &self,
        conn: &mut PgConnection,
        claim: &Claim,
    ) -> Result<Vec<ClaimedJob>> {
        self.claim_on(conn, claim, Statements::claim_in_transaction)
            .await
    }

    /// [`QueueStore::complete_many`] on your connection or transaction: the jobs are removed
    /// when it commits, together with the handler's writes.
    pub async fn complete_many_in(
        &self,
        conn: &mut PgConnection,
        done: &[Done],
    ) -> Result<Vec<JobId>> {
        self.complete_on(conn, done).await
    }

    /// A worker handler for `T` that runs it inside a transaction which also completes its
    /// job: the handler's writes and the job's removal commit together, or neither does.
    ///
    /// ```no_run
    /// # use pq_api::{Registry, Task, TaskContext, TaskError};
    /// # use pq_sqlx::{SqlxStore, SqlxTask};
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Ship { order: i64 }
    /// impl Task for Ship { const NAME: &'static str = "ship"; }
    /// impl SqlxTask for Ship {
    ///     async fn run(self, _cx: TaskContext, tx: &mut sqlx::PgConnection) -> Result<(), TaskError> {
    ///         sqlx::query("UPDATE orders SET shipped = true WHERE id = $1")
    ///             .bind(self.order)
    ///             .execute(tx)
    ///             .await?;
    ///         Ok(())
    ///     }
    /// }
    /// # fn demo(store: SqlxStore) -> pq_api::Result<Registry> {
    /// let registry = Registry::new().register_with::<Ship>(store.transactional::<Ship>())?;
    /// # Ok(registry) }
    /// ```
    pub fn transactional<T: SqlxTask>(&self) -> Transactional<T> {
        Transactional {
            store: self.clone(),
            idle_timeout: sql::HANDLER_IDLE_TIMEOUT,
            task: std::marker::PhantomData,
        }
    }

    async fn put_on<'e, E: Executor<'e, Database = Postgres>>(
        &self,
        e: E,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<JobId>> {
        let a = InsertArrays::new(&jobs)?;
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let insert = sqlx::query_as(q(self.inner.sql.insert(&a)))
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
            .fetch_all(e);
        let rows: Vec<(i64, bool, Option<String>, Option<String>)> =
            sql::freeing(insert, jobs).await.map_err(map_err)?;
        a.ids(rows)
    }

    /// Claims on `e` with the claim text `text` gives (see [`Statements::claim`]: the store's
    /// own claims commit asynchronously, claims in a caller's transaction as it is set).
    async fn claim_on(
        &self,
        conn: &mut PgConnection,
        claim: &Claim,
        text: fn(&Statements, usize, u32) -> Arc<str>,
    ) -> Result<Vec<ClaimedJob>> {
        claim.validate()?;
        let queues = claim.distinct_queues();
        let sql = text(&self.inner.sql, queues.len(), claim.limit);
        let token = Lease::new_token();
        let mut rows = sqlx::query(AssertSqlSafe(sql))
            .bind(queues)
            .bind(micros(claim.lease))
            .bind(token)
            .fetch(&mut *conn);
        // Each row becomes a job as it is read: no vector of rows in between.
        let mut jobs = Vec::with_capacity(usize::try_from(claim.limit.min(256)).unwrap_or(0));
        let mut bad = Vec::new();
        while let Some(row) = rows.try_next().await.map_err(map_err)? {
            match job_row(&row).and_then(JobRow::into_claimed) {
                Ok(job) => jobs.push(job),
                Err(error) => {
                    let id: i64 = row.try_get(0).map_err(map_err)?;
                    let job_id = JobId(id);
                    let lease = Lease { job_id, token };
                    bad.push(sql::Undecodable { lease, error });
                }
            }
        }
        drop(rows);
        for row in bad {
            if let Err(e) = self.fail_on(conn, &row.lease, row.failure()).await {
                row.not_failed(&e);
            }
        }
        self.upkeep_after_claim(jobs.len());
        Ok(jobs)
    }

    /// Records a failed attempt on `conn`: [`QueueStore::fail`].
    async fn fail_on(
        &self,
        conn: &mut PgConnection,
        lease: &Lease,
        failure: Failure,
    ) -> Result<JobState> {
        failure.validate()?;
        let (at, within) = sql::retry_params(&failure);
        let state: Option<String> = sqlx::query_scalar(q(&self.inner.sql.fail))
            .bind(lease.job_id.0)
            .bind(lease.token)
            .bind(at)
            .bind(within)
            .bind(failure.error)
            .bind(!failure.give_up)
            .fetch_optional(conn)
            .await
            .map_err(map_err)?;
        sql::parse_state(&state.ok_or(Error::LeaseLost(lease.job_id))?)
    }

    async fn complete_on<'e, E: Executor<'e, Database = Postgres>>(
        &self,
        e: E,
        done: &[Done],
    ) -> Result<Vec<JobId>> {
        if done.is_empty() {
            return Ok(Vec::new());
        }
        let a = DoneArrays::new(done)?;
        let completed: Vec<i64> = sqlx::query_scalar(q(&self.inner.sql.complete))
            .bind(a.id)
            .bind(a.token)
            .bind(a.result)
            .bind(a.key_state)
            .fetch_all(e)
            .await
            .map_err(map_err)?;
        Ok(sql::completed_in_order(done, completed))
    }

    /// A connection for one of the store's own statements: one it kept, or one from the pool.
    async fn conn(&self) -> Result<WarmConn> {
        self.inner.warm.get(Lane::Rest).await
    }

    /// Keeps `c` for the next statement, its statement having succeeded. (Dropped instead,
    /// after an error or a cancelled statement, it goes back to the pool, which checks it.)
    fn keep(&self, c: WarmConn) {
        self.inner.warm.keep(c);
    }

    /// Starts the listener task on first use.
    fn ensure_listener(&self) {
        if !self.inner.wakeups.claim_start() {
            return;
        }
        let (stop_tx, stop_rx) = oneshot::channel();
        if let Ok(mut slot) = self.inner.stop_listener.lock() {
            *slot = Some(stop_tx);
        }
        let pool = self.inner.pool.clone();
        let wakeups = self.inner.wakeups.clone();
        let channel = self.inner.table.channel();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop_rx => {}
                () = listen_forever(pool, wakeups, channel) => {}
            }
        });
    }
}

async fn listen_forever(pool: PgPool, wakeups: Arc<Wakeups>, channel: String) {
    // The listener holds its connection for as long as the store waits: one of its own,
    // opened with the pool's options, rather than one of the pool's, which on a small pool
    // would leave the store's statements none.
    let own = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with((*pool.connect_options()).clone());
    let mut reconnecting = false;
    loop {
        match PgListener::connect_with(&own).await {
            Ok(mut listener) => {
                if let Err(e) = listener.listen(&channel).await {
                    tracing::warn!(error = %e, "pq: LISTEN failed");
                } else {
                    wakeups.set_connected(true);
                    if reconnecting {
                        wakeups.notify_all();
                    }
                    loop {
                        match listener.try_recv().await {
                            Ok(Some(n)) => wakeups.notify(n.payload()),
                            // The connection dropped and was re-established: anything sent in
                            // between is lost, so wake everyone to look.
                            Ok(None) => wakeups.notify_all(),
                            Err(e) => {
                                tracing::warn!(error = %e, "pq: listener connection lost");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "pq: cannot connect the listener"),
        }
        wakeups.set_connected(false);
        wakeups.notify_all();
        reconnecting = true;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn one_state(state: Option<String>, id: JobId) -> Result<JobState> {
    sql::parse_state(&state.ok_or(Error::NotFound(id))?)
}

#[async_trait]
impl QueueStore for SqlxStore {
    async fn put_many(&self, jobs: Vec<NewJob>) -> Result<Vec<JobId>> {
        let mut c = self.conn().await?;
        let ids = self.put_on(&mut *c, jobs).await?;
        self.keep(c);
        Ok(ids)
    }

    async fn claim(&self, claim: &Claim) -> Result<Vec<ClaimedJob>> {
        let mut c = self.inner.warm.get(Lane::Claim).await?;
        let claimed = self.claim_on(&mut c, claim, Statements::claim).await?;
        self.keep(c);
        Ok(claimed)
    }

    async fn complete_many(&self, done: &[Done]) -> Result<Vec<JobId>> {
        let mut c = self.conn().await?;
        let completed = self.complete_on(&mut *c, done).await?;
        self.keep(c);
        Ok(completed)
    }

    async fn fail(&self, lease: &Lease, failure: Failure) -> Result<JobState> {
        failure.validate()?;
        let mut c = self.conn().await?;
        let state = self.fail_on(&mut c, lease, failure).await?;
        self.keep(c);
        Ok(state)
    }

    async fn extend(&self, lease: &Lease, lease_for: Duration) -> Result<DateTime<Utc>> {
        pq_api::validate::validate_lease(lease_for)?;
        let mut c = self.conn().await?;
        let until: Option<Time> = sqlx::query_scalar(q(&self.inner.sql.extend))
            .bind(lease.job_id.0)
            .bind(lease.token)
            .bind(micros(lease_for))
            .fetch_optional(&mut *c)
            .await
            .map_err(map_err)?;
        self.keep(c);
        until.map(|t| t.0).ok_or(Error::LeaseLost(lease.job_id))
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        self.snooze(lease, Duration::ZERO).await
    }

    async fn snooze(&self, lease: &Lease, delay: Duration) -> Result<()> {
        pq_api::validate::validate_delay(delay)?;
        let mut c = self.conn().await?;
        let id: Option<i64> = sqlx::query_scalar(q(&self.inner.sql.release))
            .bind(lease.job_id.0)
            .bind(lease.token)
            .bind(micros(delay))
            .fetch_optional(&mut *c)
            .await
            .map_err(map_err)?;
        self.keep(c);
        id.map(|_| ()).ok_or(Error::LeaseLost(lease.job_id))
    }

    async fn cancel(&self, id: JobId) -> Result<()> {
        let mut c = self.conn().await?;
        let state: Option<String> = sqlx::query_scalar(q(&self.inner.sql.cancel))
            .bind(id.0)
            .fetch_optional(&mut *c)
            .await
            .map_err(map_err)?;
        self.keep(c);
        match one_state(state, id)? {
            JobState::Running => Err(Error::InvalidState {
                id,
                state: JobState::Running,
            }),
            _ => Ok(()),
        }
    }

    async fn retry(&self, id: JobId) -> Result<()> {
        let mut c = self.conn().await?;
        let state: Option<String> = sqlx::query_scalar(q(&self.inner.sql.retry))
            .bind(id.0)
            .fetch_optional(&mut *c)
            .await
            .map_err(map_err)?;
        self.keep(c);
        match one_state(state, id)? {
            JobState::Failed => Ok(()),
            state => Err(Error::InvalidState { id, state }),
        }
    }

    async fn job(&self, id: JobId) -> Result<Job> {
        let mut c = self.conn().await?;
        let row = sqlx::query(q(&self.inner.sql.job))
            .bind(id.0)
            .fetch_optional(&mut *c)
            .await
            .map_err(map_err)?;
        self.keep(c);
        let row = row.ok_or(Error::NotFound(id))?;
        job_row(&row)?.into_job()
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats> {
        let mut c = self.conn().await?;
        let rows: Vec<(String, i64)> = sqlx::query_as(q(&self.inner.sql.stats))
            .bind(queue)
            .fetch_all(&mut *c)
            .await
            .map_err(map_err)?;
        self.keep(c);
        let mut stats = QueueStats::default();
        for (state, n) in rows {
            stats.add(sql::parse_state(&state)?, u64::try_from(n).unwrap_or(0));
        }
        Ok(stats)
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        let mut c = self.conn().await?;
        let n: i64 = sqlx::query_scalar(q(&self.inner.sql.purge))
            .bind(queue)
            .fetch_one(&mut *c)
            .await
            .map_err(map_err)?;
        self.keep(c);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn key_state(&self, queue: &str, key: &str) -> Result<Option<serde_json::Value>> {
        let mut c = self.conn().await?;
        let state: Option<String> = sqlx::query_scalar(q(&self.inner.sql.key_state))
            .bind(queue)
            .bind(key)
            .fetch_optional(&mut *c)
            .await
            .map_err(map_err)?;
        self.keep(c);
        Ok(state.map(|s| serde_json::from_str(&s)).transpose()?)
    }

    async fn finished(&self, id: JobId) -> Result<FinishedJob> {
        let mut c = self.conn().await?;
        let row = sqlx::query(q(&self.inner.sql.finished))
            .bind(id.0)
            .fetch_optional(&mut *c)
            .await
            .map_err(map_err)?;
        self.keep(c);
        let row = row.ok_or(Error::NotFound(id))?;
        finished_row(&row)?.into_finished()
    }

    async fn history(&self, queue: &str, limit: u32) -> Result<Vec<FinishedJob>> {
        let mut c = self.conn().await?;
        let rows = sqlx::query(q(&self.inner.sql.history))
            .bind(queue)
            .bind(i64::from(limit))
            .fetch_all(&mut *c)
            .await
            .map_err(map_err)?;
        self.keep(c);
        rows.iter()
            .map(|r| finished_row(r)?.into_finished())
            .collect()
    }

    async fn cleanup_history(&self) -> Result<u64> {
        let mut c = self.conn().await?;
        let n: i64 = sqlx::query_scalar(q(&self.inner.sql.cleanup_history))
            .fetch_one(&mut *c)
            .await
            .map_err(map_err)?;
        self.keep(c);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn wait(&self, queues: &[String], timeout: Duration) -> Result<bool> {
        self.ensure_listener();
        let next_run = || async {
            let mut c = self.conn().await?;
            let sql = self.inner.sql.next_run(queues.len());
            let row = sqlx::query(AssertSqlSafe(sql))
                .bind(queues)
                .fetch_one(&mut *c)
                .await
                .map_err(map_err)?;
            let next = (opt_time(&row, 0)?, time(&row, 1)?);
            self.keep(c);
            Ok(next)
        };
        self.inner
            .wakeups
            .wait(queues, timeout, FALLBACK_POLL, next_run)
            .await
    }
}

/// A task whose handler runs inside the transaction that completes its job (pgtq's and
/// malthe/pq's transactional processing). Register it with [`SqlxStore::transactional`].
pub trait SqlxTask: Task {
    /// Runs the task on `tx`, an open transaction. `Ok` commits the handler's writes with the
    /// job's removal; an error, a panic or a lost lease rolls both back and counts as a failed
    /// attempt (or, for a lost lease, as nothing).
    fn run(
        self,
        cx: TaskContext,
        tx: &mut PgConnection,
    ) -> impl std::future::Future<Output = std::result::Result<(), TaskError>> + Send;
}

/// The worker handler of a [`SqlxTask`], from [`SqlxStore::transactional`].
///
/// A connection that breaks under the handler (on `BEGIN`, a statement of the handler's, the
/// rollback after its error, or `COMMIT`) is the store's failure, not the handler's: the
/// attempt is not counted ([`TaskError::store_failed`]).
#[derive(Debug)]
pub struct Transactional<T> {
    store: SqlxStore,
    idle_timeout: Duration,
    task: std::marker::PhantomData<fn() -> T>,
}

impl<T> Transactional<T> {
    /// The server ends the handler's transaction once it sits idle this long (default
    /// [`HANDLER_IDLE_TIMEOUT`](sql::HANDLER_IDLE_TIMEOUT), the default lease): see
    /// [`sql::begin_bounded`]. Raise it for a handler that waits on something slow between its
    /// statements.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }
}

#[async_trait]
impl<T: SqlxTask> JobHandler for Transactional<T> {
    async fn handle(
        &self,
        cx: TaskContext,
        args: &serde_json::Value,
    ) -> std::result::Result<Completion, TaskError> {
        let task = decode_args::<T>(args)?;
        let lease = *cx.lease();
        let record = cx.clone();
        let begin = AssertSqlSafe(sql::begin_bounded(self.idle_timeout));
        let mut tx = self.store.pool().begin_with(begin).await.map_err(map_err)?;
        let ran = match task.run(cx, &mut tx).await {
            Ok(()) => match self.store.complete_many_in(&mut tx, &[record.done()]).await {
                Ok(done) if done.is_empty() => Err(Error::LeaseLost(lease.job_id).into()),
                Ok(_) => Ok(()),
                Err(e) => Err(e.into()),
            },
            Err(e) => Err(e),
        };
        match ran {
            Ok(()) => {
                tx.commit().await.map_err(map_err)?;
                Ok(Completion::Committed)
            }
            Err(e) => match tx.rollback().await {
                Ok(()) => Err(e),
                // The connection is gone: the handler's error came from it, or could not be
                // recorded with it. Either way the store failed, not the handler.
                Err(lost) => {
                    Err(TaskError::new(format!("{e} (connection lost: {lost})")).store_failed())
                }
            },
        }
    }
}

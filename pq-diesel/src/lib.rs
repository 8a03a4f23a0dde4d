//! # pq-diesel: pq's `QueueStore` on diesel-async
//!
//! [`DieselStore`] runs on a deadpool pool of [`AsyncPgConnection`]s and sends the statements
//! of [`pq_api::postgres`], byte for byte the same as `pq-sqlx`. Claims use
//! `FOR UPDATE SKIP LOCKED` in one round trip; `wait` is woken by LISTEN/NOTIFY through
//! diesel-async's notification stream.
//!
//! Three operations have an `_in` variant for your own connection, typically inside
//! `transaction(...)`: [`put_many_in`](DieselStore::put_many_in),
//! [`claim_in`](DieselStore::claim_in) and [`complete_many_in`](DieselStore::complete_many_in),
//! so a job is enqueued, or claimed and removed, atomically with your writes:
//!
//! ```no_run
//! use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
//! use pq_api::NewJob;
//! use pq_diesel::DieselStore;
//!
//! # async fn demo(store: DieselStore, conn: &mut AsyncPgConnection) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! conn.transaction::<_, Box<dyn std::error::Error + Send + Sync>, _>(async |conn| {
//!     diesel::sql_query("INSERT INTO orders (id) VALUES (42)").execute(conn).await?;
//!     let job = NewJob::new("emails", &serde_json::json!({"order": 42}))?;
//!     store.put_many_in(conn, vec![job]).await?;
//!     Ok(())
//! })
//! .await?;
//! # Ok(()) }
//! ```
//!
//! For the worker, a [`DieselTask`] runs inside a transaction that also removes its job:
//! register it with [`DieselStore::transactional`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::result::DatabaseErrorKind;
use diesel::sql_types::{Array, BigInt, Bool, Integer, Nullable, Text, Timestamptz};
use diesel::{Queryable, QueryableByName};
use diesel_async::pooled_connection::deadpool::{Object, Pool, PoolError};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures_util::StreamExt;
mod prepared;

use pq_api::postgres::conn::{Lane, Warm, WarmConn};
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
use prepared::{prepared, prepared_as};
use tokio::sync::oneshot;

pub use pq_api::postgres::QueueTable;

/// The pool type the store runs on.
pub type PgPool = Pool<AsyncPgConnection>;

/// How often `wait` looks at the table while the listener connection is down.
pub const FALLBACK_POLL: Duration = Duration::from_secs(5);

/// The diesel-async store. Cloning gives another handle on the same store.
///
/// Its own statements (everything but the `_in` variants) run on connections from your pool.
/// While it is busy the store keeps the connections of its claims and of its completions
/// checked out between statements, one each ([`pq_api::postgres::conn`]): a worker sends the two at once,
/// and on the pool alone they swapped connections whenever a completion finished after its
/// claim, each then running on the other's server process, which slowed the claims (see
/// `docs/design.md`, "Kept connections"). Any other
/// statement takes a kept connection first, so a pool of one still serves them all. A kept
/// connection goes back to the pool after 100 ms unused or 30 s kept, so an idle store holds
/// none, and it never keeps the last connection a pool could lend. Once something calls
/// `wait`, the notification listener takes a connection out of the pool for good (the pool
/// opens another in its place). The store runs on a pool of one connection; for a busy worker,
/// size the pool for two connections more than the rest of your application needs at its
/// busiest.
#[derive(Clone)]
pub struct DieselStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    table: QueueTable,
    sql: Statements,
    wakeups: Arc<Wakeups>,
    stop_listener: Mutex<Option<oneshot::Sender<()>>>,
    /// When the store vacuums its table and checks its statistics (see
    /// [`DieselStore::vacuum_every`], [`DieselStore::analyze_when_stale`]).
    upkeep: Upkeep,
    /// The connections kept between the store's statements ([`pq_api::postgres::conn`]).
    warm: Arc<Warm<Object<AsyncPgConnection>>>,
}

impl std::fmt::Debug for DieselStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DieselStore")
            .field("table", &self.inner.table)
            .finish_non_exhaustive()
    }
}

/// Maps a diesel error into the contract's error, keeping it as the source.
pub fn map_err(e: diesel::result::Error) -> Error {
    use diesel::result::Error as D;
    let code = match &e {
        D::DatabaseError(kind, _) => match kind {
            DatabaseErrorKind::SerializationFailure => Some("40001"),
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand => {
                Some("08006")
            }
            DatabaseErrorKind::UniqueViolation
            | DatabaseErrorKind::ForeignKeyViolation
            | DatabaseErrorKind::NotNullViolation
            | DatabaseErrorKind::CheckViolation
            | DatabaseErrorKind::RestrictViolation
            | DatabaseErrorKind::ExclusionViolation => Some("23000"),
            _ => None,
        },
        _ => None,
    };
    if let D::DatabaseError(_, info) = &e {
        // diesel-async keeps no SQLSTATE beyond the kinds above; the server's messages for
        // the errors that end a session (57P01-57P03: shutdown, termination, recovery; 25P03:
        // idle-in-transaction timeout) tell them apart, in the server's default language.
        let ending = [
            "terminating connection",
            "the database system is shutting down",
            "the database system is starting up",
            "the database system is in recovery mode",
        ];
        if code.is_none() && ending.iter().any(|m| info.message().starts_with(m)) {
            return Error::from_sqlstate(Some("57P01"), Box::new(e));
        }
        if code.is_none() && info.message().contains("does not exist") {
            return Error::Schema(info.message().to_string());
        }
        if code.is_none() && info.message().contains("already exists") {
            return Error::from_sqlstate(Some("42P07"), Box::new(e));
        }
    }
    Error::from_sqlstate(code, Box::new(e))
}

/// Runs `text` on a connection of `pool` as a simple query (no parameters, no transaction).
fn simple_query(
    pool: &PgPool,
    text: &Arc<str>,
) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
    let (pool, text) = (pool.clone(), text.clone());
    async move {
        let mut c = pool.get().await.map_err(pool_err)?;
        c.batch_execute(&text).await.map_err(map_err)
    }
}

/// Runs `text`, a query of one boolean named `may`, on a connection of `pool`.
fn ask(
    pool: &PgPool,
    text: &Arc<str>,
) -> impl std::future::Future<Output = Result<bool>> + Send + 'static {
    let (pool, text) = (pool.clone(), text.clone());
    async move {
        let mut c = pool.get().await.map_err(pool_err)?;
        let row: MayRow = diesel::sql_query(&*text)
            .get_result(&mut c)
            .await
            .map_err(map_err)?;
        Ok(row.may)
    }
}

fn pool_err(e: PoolError) -> Error {
    Error::Unavailable(Box::new(e))
}

/// A `timestamptz` that never fails a whole result: a value chrono cannot hold
/// (`'infinity'`) decodes to `None`, and only the row that holds it fails, in [`job_row`].
#[derive(Debug, Clone, Copy, diesel::deserialize::FromSqlRow)]
struct Time(Option<DateTime<Utc>>);

impl diesel::deserialize::FromSql<Timestamptz, diesel::pg::Pg> for Time {
    fn from_sql(bytes: diesel::pg::PgValue<'_>) -> diesel::deserialize::Result<Self> {
        let micros =
            <i64 as diesel::deserialize::FromSql<BigInt, diesel::pg::Pg>>::from_sql(bytes)?;
        Ok(Time(sql::pg_time(micros)))
    }
}

impl Time {
    fn get(self, column: &str) -> Result<DateTime<Utc>> {
        self.0
            .ok_or_else(|| Error::BadValue(format!("{column} is out of range (infinite?)")))
    }
}

/// The SQL types of a job row, in column order (see [`Row`]).
type RowSql = (
    BigInt,
    Text,
    Text,
    Integer,
    Nullable<Timestamptz>,
    Timestamptz,
    Text,
    Integer,
    Integer,
    Nullable<Text>,
    Timestamptz,
    Nullable<BigInt>,
    Nullable<Text>,
    Bool,
    Nullable<BigInt>,
    Nullable<Text>,
);

/// A job row from [`Statements::claim`] or [`Statements::job`], decoded by position (the
/// fields in the statements' column order): a claim decodes 16 columns of each of its rows,
/// and finding each by its name took about a tenth of the worker's client time.
#[derive(Queryable)]
struct Row {
    id: i64,
    queue: String,
    payload: String,
    priority: i32,
    expected_at: Option<Time>,
    run_at: Time,
    state: String,
    attempts: i32,
    max_attempts: i32,
    last_error: Option<String>,
    created_at: Time,
    lease_token: Option<i64>,
    key: Option<String>,
    cursor: bool,
    keep_for: Option<i64>,
    key_state: Option<String>,
}

/// The row as the shared decoder takes it; a time out of chrono's range fails this row
/// alone.
fn job_row(r: Row) -> Result<JobRow<'static>> {
    Ok(JobRow {
        id: r.id,
        queue: r.queue,
        payload: r.payload.into(),
        priority: r.priority,
        expected_at: r.expected_at.map(|t| t.get("expected_at")).transpose()?,
        run_at: r.run_at.get("run_at")?,
        state: r.state.into(),
        attempts: r.attempts,
        max_attempts: r.max_attempts,
        last_error: r.last_error,
        created_at: r.created_at.get("created_at")?,
        lease_token: r.lease_token,
        key: r.key,
        cursor: r.cursor,
        keep_for: r.keep_for,
        key_state: r.key_state,
    })
}

#[derive(QueryableByName)]
struct HistoryRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    queue: String,
    #[diesel(sql_type = Text)]
    payload: String,
    #[diesel(sql_type = Nullable<Text>)]
    key: Option<String>,
    #[diesel(sql_type = Bool)]
    cursor: bool,
    #[diesel(sql_type = Integer)]
    priority: i32,
    #[diesel(sql_type = Integer)]
    attempts: i32,
    #[diesel(sql_type = Nullable<Text>)]
    result: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    created_at: Time,
    #[diesel(sql_type = Timestamptz)]
    finished_at: Time,
    #[diesel(sql_type = Timestamptz)]
    keep_until: Time,
}

impl TryFrom<HistoryRow> for FinishedRow {
    type Error = Error;
    fn try_from(r: HistoryRow) -> Result<Self> {
        Ok(FinishedRow {
            id: r.id,
            queue: r.queue,
            payload: r.payload,
            key: r.key,
            cursor: r.cursor,
            priority: r.priority,
            attempts: r.attempts,
            result: r.result,
            created_at: r.created_at.get("created_at")?,
            finished_at: r.finished_at.get("finished_at")?,
            keep_until: r.keep_until.get("keep_until")?,
        })
    }
}

#[derive(QueryableByName)]
struct InsertedRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Bool)]
    cursor: bool,
    #[diesel(sql_type = Nullable<Text>)]
    queue: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    key: Option<String>,
}

#[derive(QueryableByName)]
struct NRow {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct KeyStateRow {
    #[diesel(sql_type = Text)]
    state: String,
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

#[derive(QueryableByName)]
struct StateRow {
    #[diesel(sql_type = Text)]
    state: String,
}

#[derive(QueryableByName)]
struct RunAtRow {
    #[diesel(sql_type = Timestamptz)]
    run_at: Time,
}

#[derive(QueryableByName)]
struct CountRow {
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct NextRunRow {
    #[diesel(sql_type = Nullable<Timestamptz>)]
    next_at: Option<Time>,
    #[diesel(sql_type = Timestamptz)]
    now: Time,
}

#[derive(QueryableByName)]
struct MayRow {
    #[diesel(sql_type = Bool)]
    may: bool,
}

#[derive(QueryableByName)]
struct VersionRow {
    #[diesel(sql_type = Integer)]
    version: i32,
}

impl DieselStore {
    /// A pool of `size` connections to `url`, as the store wants it.
    pub fn pool(url: &str, size: usize) -> Result<PgPool> {
        // No test query on every checkout: a dead connection fails its first statement, which
        // maps to a retryable `Error::Unavailable`, and the pool drops it.
        let mut config = ManagerConfig::default();
        config.recycling_method = RecyclingMethod::Fast;
        let manager =
            AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, config);
        // Last in, first out: the worker's claims and completions keep reusing the same few
        // warm server processes instead of cycling through every connection of the pool (a
        // quarter fewer jobs per second with 32 connections cycled, measured on 2 cores).
        Pool::builder(manager)
            .max_size(size)
            .queue_mode(deadpool::managed::QueueMode::Lifo)
            .build()
            .map_err(|e| Error::invalid("pool", e.to_string()))
    }

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

    /// A store on the given table, trusting that its schema is in place.
    pub fn without_migrating(pool: PgPool, table: QueueTable) -> Self {
        DieselStore {
            inner: Arc::new(Inner {
                sql: Statements::new(&table),
                pool,
                table,
                wakeups: Arc::new(Wakeups::default()),
                stop_listener: Mutex::new(None),
                upkeep: Upkeep::default(),
                warm: Warm::new(),
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
    /// # async fn demo(url: &str) -> pq_api::Result<()> {
    /// use pq_diesel::DieselStore;
    /// // Leave the table to autovacuum (tuned for it, say) instead.
    /// let store = DieselStore::new(DieselStore::pool(url, 8)?).await?.vacuum_every(0);
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
    /// # async fn demo(url: &str) -> pq_api::Result<()> {
    /// use pq_diesel::DieselStore;
    /// // Leave the statistics to autovacuum.
    /// let store = DieselStore::new(DieselStore::pool(url, 8)?).await?.analyze_when_stale(false);
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

    /// A worker handler for `T` that runs it inside a transaction which also completes its
    /// job: the handler's writes and the job's removal commit together, or neither does.
    ///
    /// ```no_run
    /// # use pq_api::{Registry, Task, TaskContext, TaskError};
    /// # use pq_diesel::{DieselStore, DieselTask};
    /// use diesel_async::{AsyncPgConnection, RunQueryDsl};
    ///
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Ship { order: i64 }
    /// impl Task for Ship { const NAME: &'static str = "ship"; }
    /// impl DieselTask for Ship {
    ///     async fn run(self, _cx: TaskContext, conn: &mut AsyncPgConnection) -> Result<(), TaskError> {
    ///         diesel::sql_query("UPDATE orders SET shipped = true WHERE id = $1")
    ///             .bind::<diesel::sql_types::BigInt, _>(self.order)
    ///             .execute(conn)
    ///             .await?;
    ///         Ok(())
    ///     }
    /// }
    /// # fn demo(store: DieselStore) -> pq_api::Result<Registry> {
    /// let registry = Registry::new().register_with::<Ship>(store.transactional::<Ship>())?;
    /// # Ok(registry) }
    /// ```
    pub fn transactional<T: DieselTask>(&self) -> Transactional<T> {
        Transactional {
            store: self.clone(),
            idle_timeout: sql::HANDLER_IDLE_TIMEOUT,
            task: std::marker::PhantomData,
        }
    }

    /// The table the store keeps its jobs in.
    pub fn table(&self) -> &QueueTable {
        &self.inner.table
    }

    /// A connection for one of the store's statements: a kept one if any (not kept again),
    /// else one from the pool.
    async fn conn(&self) -> Result<Object<AsyncPgConnection>> {
        self.warm_conn(Lane::Rest).await.map(WarmConn::into_inner)
    }

    /// A connection for a statement of `lane`, to [`keep`](Warm::keep) once it has succeeded:
    /// the worker's claims and completions each keep to a server process of their own.
    async fn warm_conn(&self, lane: Lane) -> Result<WarmConn<Object<AsyncPgConnection>>> {
        if self.inner.pool.is_closed() {
            self.inner.warm.clear();
        } else if let Some(c) = self.inner.warm.take(lane) {
            return Ok(c);
        }
        let c = self.inner.pool.get().await.map_err(pool_err)?;
        Ok(WarmConn::new(c, lane))
    }

    /// Keeps `c` for the next statement of its lane, its statement having succeeded.
    fn keep(&self, c: WarmConn<Object<AsyncPgConnection>>) {
        if !self.inner.pool.is_closed() {
            let size = self.inner.pool.status().max_size;
            self.inner.warm.keep_from(c, size);
        }
    }

    /// Applies the missing schema migrations, in one transaction under an advisory lock.
    pub async fn migrate(&self) -> Result<()> {
        let mut conn = self.conn().await?;
        let table = self.inner.table.clone();
        conn.transaction::<_, diesel::result::Error, _>(async |c| {
            let m = MigrationStatements::new(&table);
            diesel::sql_query(m.lock.as_str())
                .bind::<BigInt, _>(table.lock_key())
                .execute(c)
                .await?;
            c.batch_execute(&m.prepare).await?;
            let applied: Vec<VersionRow> = diesel::sql_query(m.applied.as_str()).load(c).await?;
            for step in sql::migrations(&table) {
                if applied.iter().any(|v| v.version == step.version) {
                    continue;
                }
                c.batch_execute(&step.sql).await?;
                diesel::sql_query(m.record.as_str())
                    .bind::<Integer, _>(step.version)
                    .bind::<Text, _>(step.description)
                    .execute(c)
                    .await?;
            }
            Ok(())
        })
        .await
        .map_err(map_err)
    }

    /// [`QueueStore::put_many`] on your connection (inside your transaction): roll it back and
    /// the jobs never existed; commit it and they are visible and wake workers.
    pub async fn put_many_in(
        &self,
        conn: &mut AsyncPgConnection,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<JobId>> {
        let a = InsertArrays::new(&jobs)?;
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let insert = prepared(self.inner.sql.insert(&a))
            .bind::<Array<Text>, _>(&a.queue)
            .bind::<Array<Text>, _>(&a.payload)
            .bind::<Array<Integer>, _>(&a.priority)
            .bind::<Array<Nullable<Timestamptz>>, _>(&a.run_at)
            .bind::<Array<Nullable<BigInt>>, _>(&a.run_in)
            .bind::<Array<Nullable<Timestamptz>>, _>(&a.expected_at)
            .bind::<Array<Nullable<BigInt>>, _>(&a.expected_in)
            .bind::<Array<Integer>, _>(&a.max_attempts)
            .bind::<Array<Nullable<Text>>, _>(&a.key)
            .bind::<Array<Bool>, _>(&a.cursor)
            .bind::<Array<Nullable<BigInt>>, _>(&a.keep_for)
            .load(conn);
        let rows: Vec<InsertedRow> = sql::freeing(insert, jobs).await.map_err(map_err)?;
        a.ids(rows.into_iter().map(|r| (r.id, r.cursor, r.queue, r.key)))
    }

    /// [`QueueStore::claim`] on your connection. Inside a transaction the claim is undone with
    /// it: the jobs are claimable again at once, their attempt not counted.
    /// It commits as your transaction (or, outside one, your session) is set to: unlike the
    /// store's own claim, which commits without waiting for the WAL flush
    /// ([`Statements::claim`]), it leaves `synchronous_commit` alone.
    pub async fn claim_in(
        &self,
        conn: &mut AsyncPgConnection,
        claim: &Claim,
    ) -> Result<Vec<ClaimedJob>> {
        self.claim_on(conn, claim, Statements::claim_in_transaction)
            .await
    }

    /// Claims on `conn` with the claim text `text` gives (see [`Statements::claim`]: the
    /// store's own claims commit asynchronously, claims in a caller's transaction as it is
    /// set).
    async fn claim_on(
        &self,
        conn: &mut AsyncPgConnection,
        claim: &Claim,
        text: fn(&Statements, usize, u32) -> Arc<str>,
    ) -> Result<Vec<ClaimedJob>> {
        claim.validate()?;
        let queues = claim.distinct_queues();
        let token = Lease::new_token();
        let rows: Vec<Row> =
            prepared_as::<RowSql>(&text(&self.inner.sql, queues.len(), claim.limit))
                .bind::<Array<Text>, _>(queues)
                .bind::<BigInt, _>(micros(claim.lease))
                .bind::<BigInt, _>(token)
                .load(&mut *conn)
                .await
                .map_err(map_err)?;
        let mut jobs = Vec::with_capacity(rows.len());
        let mut bad = Vec::new();
        for r in rows {
            let job_id = JobId(r.id);
            match job_row(r).and_then(JobRow::into_claimed) {
                Ok(job) => jobs.push(job),
                Err(error) => bad.push(sql::Undecodable {
                    lease: Lease { job_id, token },
                    error,
                }),
            }
        }
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
        conn: &mut AsyncPgConnection,
        lease: &Lease,
        failure: Failure,
    ) -> Result<JobState> {
        failure.validate()?;
        let (at, within) = sql::retry_params(&failure);
        let rows: Vec<StateRow> = prepared(&self.inner.sql.fail)
            .bind::<BigInt, _>(lease.job_id.0)
            .bind::<BigInt, _>(lease.token)
            .bind::<Nullable<Timestamptz>, _>(at)
            .bind::<BigInt, _>(within)
            .bind::<Text, _>(failure.error)
            .bind::<diesel::sql_types::Bool, _>(!failure.give_up)
            .load(conn)
            .await
            .map_err(map_err)?;
        one_state(rows, Error::LeaseLost(lease.job_id))
    }

    /// [`QueueStore::complete_many`] on your connection: the jobs are removed when your
    /// transaction commits, together with the handler's writes.
    pub async fn complete_many_in(
        &self,
        conn: &mut AsyncPgConnection,
        done: &[Done],
    ) -> Result<Vec<JobId>> {
        if done.is_empty() {
            return Ok(Vec::new());
        }
        let a = DoneArrays::new(done)?;
        let completed: Vec<IdRow> = prepared(&self.inner.sql.complete)
            .bind::<Array<BigInt>, _>(a.id)
            .bind::<Array<BigInt>, _>(a.token)
            .bind::<Array<Nullable<Text>>, _>(a.result)
            .bind::<Array<Nullable<Text>>, _>(a.key_state)
            .load(conn)
            .await
            .map_err(map_err)?;
        Ok(sql::completed_in_order(
            done,
            completed.into_iter().map(|d| d.id),
        ))
    }

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
        let listen = self.inner.sql.listen.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop_rx => {}
                () = listen_forever(pool, wakeups, listen) => {}
            }
        });
    }
}

async fn listen_forever(pool: PgPool, wakeups: Arc<Wakeups>, listen: Arc<str>) {
    let mut reconnecting = false;
    loop {
        match pool.get().await {
            // The listening connection leaves the pool for good: it is busy forever.
            Ok(conn) => {
                let mut conn = Object::take(conn);
                match diesel::sql_query(&*listen).execute(&mut conn).await {
                    Ok(_) => {
                        wakeups.set_connected(true);
                        if reconnecting {
                            wakeups.notify_all();
                        }
                        let mut stream = std::pin::pin!(conn.notifications_stream());
                        while let Some(n) = stream.next().await {
                            match n {
                                Ok(n) => wakeups.notify(&n.payload),
                                Err(e) => {
                                    tracing::warn!(error = %e, "pq: listener connection lost");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "pq: LISTEN failed"),
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

fn one_state(rows: Vec<StateRow>, missing: Error) -> Result<JobState> {
    let row = rows.into_iter().next().ok_or(missing)?;
    sql::parse_state(&row.state)
}

#[async_trait]
impl QueueStore for DieselStore {
    async fn put_many(&self, jobs: Vec<NewJob>) -> Result<Vec<JobId>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn().await?;
        self.put_many_in(&mut conn, jobs).await
    }

    async fn claim(&self, claim: &Claim) -> Result<Vec<ClaimedJob>> {
        let mut conn = self.warm_conn(Lane::Claim).await?;
        let claimed = self.claim_on(&mut conn, claim, Statements::claim).await?;
        self.keep(conn);
        Ok(claimed)
    }

    async fn complete_many(&self, done: &[Done]) -> Result<Vec<JobId>> {
        let mut conn = self.warm_conn(Lane::Rest).await?;
        let completed = self.complete_many_in(&mut conn, done).await?;
        self.keep(conn);
        Ok(completed)
    }

    async fn fail(&self, lease: &Lease, failure: Failure) -> Result<JobState> {
        failure.validate()?;
        let mut conn = self.conn().await?;
        self.fail_on(&mut conn, lease, failure).await
    }

    async fn extend(&self, lease: &Lease, lease_for: Duration) -> Result<DateTime<Utc>> {
        pq_api::validate::validate_lease(lease_for)?;
        let mut conn = self.conn().await?;
        let rows: Vec<RunAtRow> = prepared(&self.inner.sql.extend)
            .bind::<BigInt, _>(lease.job_id.0)
            .bind::<BigInt, _>(lease.token)
            .bind::<BigInt, _>(micros(lease_for))
            .load(&mut conn)
            .await
            .map_err(map_err)?;
        rows.into_iter()
            .next()
            .ok_or(Error::LeaseLost(lease.job_id))?
            .run_at
            .get("run_at")
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        self.snooze(lease, Duration::ZERO).await
    }

    async fn snooze(&self, lease: &Lease, delay: Duration) -> Result<()> {
        pq_api::validate::validate_delay(delay)?;
        let mut conn = self.conn().await?;
        let rows: Vec<IdRow> = prepared(&self.inner.sql.release)
            .bind::<BigInt, _>(lease.job_id.0)
            .bind::<BigInt, _>(lease.token)
            .bind::<BigInt, _>(micros(delay))
            .load(&mut conn)
            .await
            .map_err(map_err)?;
        if rows.is_empty() {
            Err(Error::LeaseLost(lease.job_id))
        } else {
            Ok(())
        }
    }

    async fn cancel(&self, id: JobId) -> Result<()> {
        let mut conn = self.conn().await?;
        let rows: Vec<StateRow> = prepared(&self.inner.sql.cancel)
            .bind::<BigInt, _>(id.0)
            .load(&mut conn)
            .await
            .map_err(map_err)?;
        match one_state(rows, Error::NotFound(id))? {
            JobState::Running => Err(Error::InvalidState {
                id,
                state: JobState::Running,
            }),
            _ => Ok(()),
        }
    }

    async fn retry(&self, id: JobId) -> Result<()> {
        let mut conn = self.conn().await?;
        let rows: Vec<StateRow> = prepared(&self.inner.sql.retry)
            .bind::<BigInt, _>(id.0)
            .load(&mut conn)
            .await
            .map_err(map_err)?;
        match one_state(rows, Error::NotFound(id))? {
            JobState::Failed => Ok(()),
            state => Err(Error::InvalidState { id, state }),
        }
    }

    async fn job(&self, id: JobId) -> Result<Job> {
        let mut conn = self.conn().await?;
        let rows: Vec<Row> = prepared_as::<RowSql>(&self.inner.sql.job)
            .bind::<BigInt, _>(id.0)
            .load(&mut conn)
            .await
            .map_err(map_err)?;
        let row = rows.into_iter().next().ok_or(Error::NotFound(id))?;
        job_row(row)?.into_job()
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats> {
        let mut conn = self.conn().await?;
        let rows: Vec<CountRow> = prepared(&self.inner.sql.stats)
            .bind::<Text, _>(queue)
            .load(&mut conn)
            .await
            .map_err(map_err)?;
        let mut stats = QueueStats::default();
        for r in rows {
            stats.add(sql::parse_state(&r.state)?, u64::try_from(r.n).unwrap_or(0));
        }
        Ok(stats)
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        let mut conn = self.conn().await?;
        let rows: Vec<NRow> = prepared(&self.inner.sql.purge)
            .bind::<Text, _>(queue)
            .load(&mut conn)
            .await
            .map_err(map_err)?;
        Ok(rows
            .as_slice()
            .first()
            .map_or(0, |r| u64::try_from(r.n).unwrap_or(0)))
    }

    async fn key_state(&self, queue: &str, key: &str) -> Result<Option<serde_json::Value>> {
        let mut conn = self.conn().await?;
        let rows: Vec<KeyStateRow> = prepared(&self.inner.sql.key_state)
            .bind::<Text, _>(queue)
            .bind::<Text, _>(key)
            .load(&mut conn)
            .await
            .map_err(map_err)?;
        Ok(rows
            .as_slice()
            .first()
            .map(|r| serde_json::from_str(&r.state))
            .transpose()?)
    }

    async fn finished(&self, id: JobId) -> Result<FinishedJob> {
        let mut conn = self.conn().await?;
        let rows: Vec<HistoryRow> = prepared(&self.inner.sql.finished)
            .bind::<BigInt, _>(id.0)
            .load(&mut conn)
            .await
            .map_err(map_err)?;
        let row = rows.into_iter().next().ok_or(Error::NotFound(id))?;
        FinishedRow::try_from(row)?.into_finished()
    }

    async fn history(&self, queue: &str, limit: u32) -> Result<Vec<FinishedJob>> {
        let mut conn = self.conn().await?;
        let rows: Vec<HistoryRow> = prepared(&self.inner.sql.history)
            .bind::<Text, _>(queue)
            .bind::<BigInt, _>(i64::from(limit))
            .load(&mut conn)
            .await
            .map_err(map_err)?;
        rows.into_iter()
            .map(|r| FinishedRow::try_from(r)?.into_finished())
            .collect()
    }

    async fn cleanup_history(&self) -> Result<u64> {
        let mut conn = self.conn().await?;
        let rows: Vec<NRow> = prepared(&self.inner.sql.cleanup_history)
            .load(&mut conn)
            .await
            .map_err(map_err)?;
        Ok(rows
            .as_slice()
            .first()
            .map_or(0, |r| u64::try_from(r.n).unwrap_or(0)))
    }

    async fn wait(&self, queues: &[String], timeout: Duration) -> Result<bool> {
        self.ensure_listener();
        let next_run = || async {
            let mut conn = self.conn().await?;
            let rows: Vec<NextRunRow> = prepared(&Arc::from(self.inner.sql.next_run(queues.len())))
                .bind::<Array<Text>, _>(queues)
                .load(&mut conn)
                .await
                .map_err(map_err)?;
            let row = rows
                .into_iter()
                .next()
                .ok_or_else(|| Error::Backend("next_run returned no row".into()))?;
            let next_at = row.next_at.map(|t| t.get("next_at")).transpose()?;
            Ok((next_at, row.now.get("now")?))
        };
        self.inner
            .wakeups
            .wait(queues, timeout, FALLBACK_POLL, next_run)
            .await
    }
}

/// A task whose handler runs inside the transaction that completes its job (pgtq's and
/// malthe/pq's transactional processing). Register it with [`DieselStore::transactional`].
pub trait DieselTask: Task {
    /// Runs the task on `conn`, inside an open transaction. `Ok` commits the handler's writes
    /// with the job's removal; an error, a panic or a lost lease rolls both back and counts as
    /// a failed attempt (or, for a lost lease, as nothing).
    fn run(
        self,
        cx: TaskContext,
        conn: &mut AsyncPgConnection,
    ) -> impl std::future::Future<Output = std::result::Result<(), TaskError>> + Send;
}

/// The worker handler of a [`DieselTask`], from [`DieselStore::transactional`].
///
/// A connection that breaks under the handler (on `BEGIN`, a statement of the handler's, the
/// rollback after its error, or `COMMIT`) is the store's failure, not the handler's: the
/// attempt is not counted ([`TaskError::store_failed`]).
pub struct Transactional<T> {
    store: DieselStore,
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

impl<T: Task> std::fmt::Debug for Transactional<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transactional")
            .field("task", &T::NAME)
            .finish()
    }
}

#[async_trait]
impl<T: DieselTask> JobHandler for Transactional<T> {
    async fn handle(
        &self,
        cx: TaskContext,
        args: &serde_json::Value,
    ) -> std::result::Result<Completion, TaskError> {
        use diesel_async::{AnsiTransactionManager, TransactionManager};

        let task = decode_args::<T>(args)?;
        let lease = *cx.lease();
        let record = cx.clone();
        let mut conn = self.store.conn().await?;
        let begin = sql::begin_bounded(self.idle_timeout);
        AnsiTransactionManager::begin_transaction_sql(&mut *conn, &begin)
            .await
            .map_err(map_err)?;
        let outcome = async {
            task.run(cx, &mut conn).await?;
            let done = self
                .store
                .complete_many_in(&mut conn, &[record.done()])
                .await?;
            if done.is_empty() {
                return Err(Error::LeaseLost(lease.job_id).into());
            }
            Ok(())
        }
        .await;
        match outcome {
            Ok(()) => {
                AnsiTransactionManager::commit_transaction(&mut *conn)
                    .await
                    .map_err(map_err)?;
                Ok(Completion::Committed)
            }
            Err(e) => match AnsiTransactionManager::rollback_transaction(&mut *conn).await {
                Ok(()) => Err(e),
                // The connection is gone (the pool discards it): the handler's error came from
                // it, or could not be recorded with it. Either way the store failed.
                Err(lost) => {
                    Err(TaskError::new(format!("{e} (connection lost: {lost})")).store_failed())
                }
            },
        }
    }
}

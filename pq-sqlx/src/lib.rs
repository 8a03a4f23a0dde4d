//! # pq-sqlx: pq's `QueueStore` on sqlx
//!
//! [`SqlxStore`] keeps the jobs in one PostgreSQL table (schema and table configurable through
//! [`QueueTable`]) and runs the statements of [`pq_api::postgres`], byte for byte the same as
//! `pq-diesel`. Claims use `FOR UPDATE SKIP LOCKED` in one round trip; `wait` is woken by
//! LISTEN/NOTIFY through a [`PgListener`](sqlx::postgres::PgListener).
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

use futures_util::future::BoxFuture;
use pq_api::postgres::PgStore;
#[cfg(doc)]
use pq_api::QueueStore;
use pq_api::{Claim, ClaimedJob, Done, Error, JobId, NewJob, Result, Task, TaskContext, TaskError};
use sqlx::{PgConnection, PgPool};

mod driver;
pub use driver::Sqlx;

pub use pq_api::postgres::listen::FALLBACK_POLL;
pub use pq_api::postgres::QueueTable;

/// The sqlx store. Cloning gives another handle on the same store.
///
/// Its own statements (everything but the `_in` variants) run on connections from your pool.
/// While it is busy the store keeps up to two of them checked out between statements, most
/// recently used first, rather than handing each back after every statement (sqlx's pool
/// pings a connection on every return and hands out the oldest idle one first, which slowed a
/// busy worker markedly: see `docs/design.md`, "Kept connections"). A kept connection goes
/// back to the pool after 100 ms unused or 30 s kept, so an idle store holds none, and it
/// never keeps the last connection a pool could lend. Once something calls `wait`, the
/// notification listener holds a connection of its own, opened with the pool's options,
/// outside the pool. The store runs on a pool of one connection; for a busy worker, size the
/// pool for two connections more than the rest of your application needs at its busiest.
#[derive(Debug, Clone)]
pub struct SqlxStore {
    store: PgStore<Sqlx>,
}

pq_api::__forward_queue_store!(SqlxStore => store);

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
            store: PgStore::new(Sqlx(pool), table),
        }
    }

    /// How long [`QueueStore::prune`] keeps failed and cancelled
    /// jobs of queues without a retention of their own
    /// ([`QueueSetting::Retention`](pq_api::QueueSetting::Retention)); default
    /// [`DEFAULT_RETENTION`](pq_api::DEFAULT_RETENTION), a week. Rejects a period of zero or
    /// above [`MAX_DURATION`](pq_api::MAX_DURATION).
    ///
    /// ```no_run
    /// # async fn demo(pool: sqlx::PgPool) -> pq_api::Result<()> {
    /// use std::time::Duration;
    /// let store = pq_sqlx::SqlxStore::new(pool).await?.retention(Duration::from_secs(3 * 24 * 3600))?;
    /// # Ok(()) }
    /// ```
    pub fn retention(self, retention: std::time::Duration) -> Result<Self> {
        self.store.set_retention(retention)?;
        Ok(self)
    }

    /// Vacuums the jobs table, on a connection of the pool, after every `claimed_jobs` jobs
    /// this store claims (default
    /// [`Vacuuming::DEFAULT_EVERY`](pq_api::postgres::Vacuuming::DEFAULT_EVERY); 0 never
    /// does), if the store's role owns the table (asked before the first vacuum): see
    /// [`Vacuuming`](pq_api::postgres::Vacuuming) for why and how often.
    ///
    /// ```no_run
    /// # async fn demo(pool: sqlx::PgPool) -> pq_api::Result<()> {
    /// // Leave the table to autovacuum (tuned for it, say) instead.
    /// let store = pq_sqlx::SqlxStore::new(pool).await?.vacuum_every(0);
    /// # Ok(()) }
    /// ```
    pub fn vacuum_every(self, claimed_jobs: u64) -> Self {
        self.store.vacuum_every(claimed_jobs);
        self
    }

    /// Takes a rotation step of the jobs table's partitions, on a connection of the pool,
    /// after every `jobs` jobs this store puts or claims (default
    /// [`Rotating::DEFAULT_EVERY`](pq_api::postgres::Rotating::DEFAULT_EVERY); 0 never does):
    /// each step empties the drained partitions with `TRUNCATE`, so that a snapshot held
    /// elsewhere cannot slow claims. See [`Rotating`](pq_api::postgres::Rotating) for why and
    /// how often.
    ///
    /// ```no_run
    /// # async fn demo(pool: sqlx::PgPool) -> pq_api::Result<()> {
    /// // Leave the partitions to another store's upkeep.
    /// let store = pq_sqlx::SqlxStore::new(pool).await?.rotate_every(0);
    /// # Ok(()) }
    /// ```
    pub fn rotate_every(self, jobs: u64) -> Self {
        self.store.rotate_every(jobs);
        self
    }

    /// Splits the jobs table into rotating partitions, if it is not split yet, so that a
    /// snapshot held elsewhere cannot slow claims; true if this call split it. See
    /// [`PgStore::partition`](pq_api::postgres::PgStore::partition) for what it costs.
    pub async fn partition(&self) -> pq_api::Result<bool> {
        self.store.partition().await
    }

    /// Makes the store's own claims wait for their WAL flush, as the session's
    /// `synchronous_commit` is set. By default they do not: a claim is acknowledged before its WAL
    /// reaches the disk, and a server crash can lose only the claim itself, the job then
    /// running again as it would had its lease run out (see
    /// [`Statements::claim`](pq_api::postgres::Statements::claim)). Puts, completions and
    /// failures always wait.
    ///
    /// ```no_run
    /// # async fn demo(pool: sqlx::PgPool) -> pq_api::Result<()> {
    /// let store = pq_sqlx::SqlxStore::new(pool).await?.synchronous_claims(true);
    /// # Ok(()) }
    /// ```
    pub fn synchronous_claims(self, on: bool) -> Self {
        self.store.synchronous_claims(on);
        self
    }

    /// Checks the jobs table's planner statistics about once a second while the store claims
    /// jobs, and `ANALYZE`s the table, on a connection of the pool, when they lag far behind
    /// it (default on): see [`Analyzing`](pq_api::postgres::Analyzing) for why.
    ///
    /// ```no_run
    /// # async fn demo(pool: sqlx::PgPool) -> pq_api::Result<()> {
    /// // Leave the statistics to autovacuum.
    /// let store = pq_sqlx::SqlxStore::new(pool).await?.analyze_when_stale(false);
    /// # Ok(()) }
    /// ```
    pub fn analyze_when_stale(self, on: bool) -> Self {
        self.store.analyze_when_stale(on);
        self
    }

    /// The pool the store runs on.
    pub fn pool(&self) -> &PgPool {
        &self.store.driver().0
    }

    /// The table the store keeps its jobs in.
    pub fn table(&self) -> &QueueTable {
        self.store.table()
    }

    /// Applies the missing schema migrations, in one transaction under an advisory lock, so
    /// concurrent callers are safe. Tracked in `"<schema>"."<table>_migrations"`.
    pub async fn migrate(&self) -> Result<()> {
        self.store.migrate().await
    }

    /// [`QueueStore::put_many`] on your connection or transaction: roll it back and the jobs
    /// never existed; commit it and they are visible and wake workers.
    pub async fn put_many_in(
        &self,
        conn: &mut PgConnection,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<JobId>> {
        self.store.put_many_in(conn, jobs).await
    }

    /// [`QueueStore::claim`] on your connection or transaction. Inside a transaction the claim
    /// is undone with it: the jobs are claimable again at once, their attempt not counted.
    /// It commits as your transaction (or, outside one, your session) is set to: unlike the
    /// store's own claim, which commits without waiting for the WAL flush
    /// ([`Statements::claim`](pq_api::postgres::Statements::claim)), it leaves
    /// `synchronous_commit` alone.
    pub async fn claim_in(
        &self,
        conn: &mut PgConnection,
        claim: &Claim,
    ) -> Result<Vec<ClaimedJob>> {
        self.store.claim_in(conn, claim).await
    }

    /// [`QueueStore::complete_many`] on your connection or transaction: the jobs are removed
    /// when it commits, together with the handler's writes.
    pub async fn complete_many_in(
        &self,
        conn: &mut PgConnection,
        done: &[Done],
    ) -> Result<Vec<JobId>> {
        self.store.complete_many_in(conn, done).await
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
        Transactional::new(self.store.clone(), run_in::<T>)
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

/// The worker handler of a [`SqlxTask`], from [`SqlxStore::transactional`]: see
/// [`pq_api::postgres::Transactional`].
pub type Transactional<T> = pq_api::postgres::Transactional<Sqlx, T>;

/// Runs `task` as [`SqlxTask::run`] on `tx`, for [`Transactional`].
fn run_in<T: SqlxTask>(
    task: T,
    cx: TaskContext,
    tx: &mut PgConnection,
) -> BoxFuture<'_, std::result::Result<(), TaskError>> {
    Box::pin(task.run(cx, tx))
}

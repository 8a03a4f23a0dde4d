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

use diesel::result::DatabaseErrorKind;
use diesel_async::pooled_connection::deadpool::{Pool, PoolError};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::AsyncPgConnection;
use futures_util::future::BoxFuture;
use pq_api::postgres::PgStore;
#[cfg(doc)]
use pq_api::QueueStore;
use pq_api::{Claim, ClaimedJob, Done, Error, JobId, NewJob, Result, Task, TaskContext, TaskError};

mod driver;
mod prepared;
use driver::Diesel;

pub use pq_api::postgres::listen::FALLBACK_POLL;
pub use pq_api::postgres::QueueTable;

/// The pool type the store runs on.
pub type PgPool = Pool<AsyncPgConnection>;

/// The diesel-async store. Cloning gives another handle on the same store.
///
/// Its own statements (everything but the `_in` variants) run on connections from your pool.
/// While it is busy the store keeps up to two of them checked out between statements, its
/// claims on one and its other statements on the other ([`pq_api::postgres::conn`]): a worker
/// sends claims and completions at once, and on the pool alone they swapped connections
/// whenever a completion finished after its claim, each then running on the other's server
/// process, which slowed the claims (see `docs/design.md`, "Kept connections"). A kept
/// connection goes back to the pool after 100 ms unused or 30 s kept, so an idle store holds
/// none, and it never keeps the last connection a pool could lend. Once something calls
/// `wait`, the notification listener takes a connection out of the pool for good (the pool
/// opens another in its place). The store runs on a pool of one connection; for a busy worker,
/// size the pool for two connections more than the rest of your application needs at its
/// busiest.
#[derive(Debug, Clone)]
pub struct DieselStore {
    store: PgStore<Diesel>,
}

pq_api::__forward_queue_store!(DieselStore => store);

/// Maps a diesel error into the contract's error, keeping it as the source.
///
/// diesel-async keeps a database error's SQLSTATE to itself: what reaches diesel's error is
/// one of [`DatabaseErrorKind`]'s kinds and the server's message. The kinds that name one
/// SQLSTATE map as that code; an error the connection raised rather than the server
/// (`UnableToSendCommand`, `ClosedConnection`) is [`Error::Unavailable`]. The rest are told
/// apart by the server's message, in its default language: the errors that end a session
/// (57P01–57P03), a missing object (42P01, 42883, 3F000) and one that exists already (42P07).
pub fn map_err(e: diesel::result::Error) -> Error {
    use diesel::result::Error as D;
    let D::DatabaseError(kind, info) = &e else {
        return Error::Backend(Box::new(e));
    };
    let code = match kind {
        DatabaseErrorKind::UnableToSendCommand | DatabaseErrorKind::ClosedConnection => {
            return Error::Unavailable(Box::new(e));
        }
        DatabaseErrorKind::UniqueViolation => "23505",
        DatabaseErrorKind::ForeignKeyViolation => "23503",
        DatabaseErrorKind::NotNullViolation => "23502",
        DatabaseErrorKind::CheckViolation => "23514",
        DatabaseErrorKind::RestrictViolation => "23001",
        DatabaseErrorKind::ExclusionViolation => "23P01",
        DatabaseErrorKind::SerializationFailure => "40001",
        DatabaseErrorKind::ReadOnlyTransaction => "25006",
        _ => {
            let message = info.message();
            let ending = [
                ("terminating connection", "57P01"),
                ("the database system is shutting down", "57P03"),
                ("the database system is starting up", "57P03"),
                ("the database system is in recovery mode", "57P03"),
            ];
            if let Some((_, code)) = ending.iter().find(|(m, _)| message.starts_with(m)) {
                code
            } else if message.starts_with("pq puts jobs with uniqueness keys only") {
                "22023" // raised by pq's own function: see NewJob::unique
            } else if message.contains("does not exist") {
                "42P01"
            } else if message.contains("already exists") {
                "42P07"
            } else {
                return Error::Backend(Box::new(e));
            }
        }
    };
    Error::from_sqlstate(Some(code), Box::new(e))
}

fn pool_err(e: PoolError) -> Error {
    Error::Unavailable(Box::new(e))
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
            store: PgStore::new(Diesel(pool), table),
        }
    }

    /// How long [`QueueStore::prune`] keeps failed and cancelled
    /// jobs of queues without a retention of their own
    /// ([`QueueSetting::Retention`](pq_api::QueueSetting::Retention)); default
    /// [`DEFAULT_RETENTION`](pq_api::DEFAULT_RETENTION), a week. Rejects a period of zero or
    /// above [`MAX_DURATION`](pq_api::MAX_DURATION).
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
    /// # async fn demo(url: &str) -> pq_api::Result<()> {
    /// use pq_diesel::DieselStore;
    /// // Leave the table to autovacuum (tuned for it, say) instead.
    /// let store = DieselStore::new(DieselStore::pool(url, 8)?).await?.vacuum_every(0);
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
    /// # async fn demo(url: &str) -> pq_api::Result<()> {
    /// use pq_diesel::DieselStore;
    /// // Leave the partitions to another store's upkeep.
    /// let store = DieselStore::new(DieselStore::pool(url, 8)?).await?.rotate_every(0);
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
    /// # async fn demo(url: &str) -> pq_api::Result<()> {
    /// use pq_diesel::DieselStore;
    /// let store = DieselStore::new(DieselStore::pool(url, 8)?).await?.synchronous_claims(true);
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
    /// # async fn demo(url: &str) -> pq_api::Result<()> {
    /// use pq_diesel::DieselStore;
    /// // Leave the statistics to autovacuum.
    /// let store = DieselStore::new(DieselStore::pool(url, 8)?).await?.analyze_when_stale(false);
    /// # Ok(()) }
    /// ```
    pub fn analyze_when_stale(self, on: bool) -> Self {
        self.store.analyze_when_stale(on);
        self
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
        Transactional::new(self.store.clone(), run_in::<T>)
    }

    /// The table the store keeps its jobs in.
    pub fn table(&self) -> &QueueTable {
        self.store.table()
    }

    /// Applies the missing schema migrations, in one transaction under an advisory lock.
    pub async fn migrate(&self) -> Result<()> {
        self.store.migrate().await
    }

    /// [`QueueStore::put_many`] on your connection (inside your transaction): roll it back and
    /// the jobs never existed; commit it and they are visible and wake workers.
    pub async fn put_many_in(
        &self,
        conn: &mut AsyncPgConnection,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<JobId>> {
        self.store.put_many_in(conn, jobs).await
    }

    /// [`QueueStore::claim`] on your connection. Inside a transaction the claim is undone with
    /// it: the jobs are claimable again at once, their attempt not counted.
    /// It commits as your transaction (or, outside one, your session) is set to: unlike the
    /// store's own claim, which commits without waiting for the WAL flush
    /// ([`Statements::claim`](pq_api::postgres::Statements::claim)), it leaves
    /// `synchronous_commit` alone.
    pub async fn claim_in(
        &self,
        conn: &mut AsyncPgConnection,
        claim: &Claim,
    ) -> Result<Vec<ClaimedJob>> {
        self.store.claim_in(conn, claim).await
    }

    /// [`QueueStore::complete_many`] on your connection: the jobs are removed when your
    /// transaction commits, together with the handler's writes.
    pub async fn complete_many_in(
        &self,
        conn: &mut AsyncPgConnection,
        done: &[Done],
    ) -> Result<Vec<JobId>> {
        self.store.complete_many_in(conn, done).await
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

/// The worker handler of a [`DieselTask`], from [`DieselStore::transactional`]: see
/// [`pq_api::postgres::Transactional`].
pub type Transactional<T> = pq_api::postgres::Transactional<Diesel, T>;

/// Runs `task` as [`DieselTask::run`] on `conn`, for [`Transactional`].
fn run_in<T: DieselTask>(
    task: T,
    cx: TaskContext,
    conn: &mut AsyncPgConnection,
) -> BoxFuture<'_, std::result::Result<(), TaskError>> {
    Box::pin(task.run(cx, conn))
}

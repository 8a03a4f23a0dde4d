//! The one PostgreSQL implementation of [`QueueStore`], generic over a [`Driver`].
//!
//! [`PgStore`] holds the job semantics both SQL stores share: which statement each operation
//! runs with which parameters, what its rows mean, how a claim fails the rows it cannot decode,
//! the migrations under their advisory lock, the connections it keeps while busy
//! ([`conn`](super::conn)), the upkeep of the table ([`upkeep`](super::upkeep)) and the
//! listener behind `wait`, reconnected whenever it is lost ([`listen`](super::listen)).
//! `pq-sqlx`'s `SqlxStore` and `pq-diesel`'s `DieselStore` are each a `PgStore` on their
//! driver, with the methods that take their library's connection types.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use tokio::sync::oneshot;

use super::conn::{Lane, Warm, WarmConn};
use super::driver::{scalars, Driver, Int4, Kind, Note, Param, Scalar};
use super::group::{for_each_caller, Group, Sending, Waiting};
use super::listen::{Wakeups, FALLBACK_POLL};
use super::migrations::{migrations, partition_script, MigrationStatements};
use super::rows::{
    completed_in_order, freeing, parse_state, retry_params, DoneArrays, InsertArrays, JobRow,
    Undecodable,
};
use super::statements::{begin_bounded, Statements, HANDLER_IDLE_TIMEOUT};
use super::table::QueueTable;
use super::upkeep::Upkeep;
use crate::error::{Error, Result};
use crate::job::{
    micros, Claim, ClaimedJob, Done, Failure, FinishedJob, Job, JobId, JobState, Lease, NewJob,
    QueueStats,
};
use crate::queue::{
    JobFilter, Pruned, QueueConfig, QueueInfo, QueueSetting, Rate, Tally, Throughput,
    DEFAULT_RETENTION, THROUGHPUT_KEPT,
};
use crate::store::QueueStore;
use crate::task::{decode_args, Completion, JobHandler, Task, TaskContext, TaskError};
use crate::validate::{validate_delay, validate_lease, validate_queue_name, validate_setting};

/// How many jobs, and key records, one [`QueueStore::prune`] removes at most.
const PRUNE_BATCH: i32 = 1000;

/// How a claim's statement commits: [`Statements::claim`] for the store's own claims,
/// [`Statements::claim_in_transaction`] for claims on a caller's connection.
/// How long a store claims from a set of queues with the claim that keeps limits, once the
/// claim without them found one of those queues limited, before trying it again.
const LIMITED_FOR: Duration = Duration::from_secs(5);

/// The queue sets a store last found limited, and until when it takes them to be.
#[derive(Debug, Default)]
struct LimitedQueues(Mutex<Vec<(Vec<String>, Instant)>>);

impl LimitedQueues {
    fn is_limited(&self, queues: &[String]) -> bool {
        let now = Instant::now();
        let mut sets = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        sets.retain(|(_, until)| *until > now);
        sets.iter().any(|(q, _)| q.as_slice() == queues)
    }

    fn mark(&self, queues: &[String]) {
        let until = Instant::now() + LIMITED_FOR;
        let mut sets = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match sets.iter_mut().find(|(q, _)| q.as_slice() == queues) {
            Some(set) => set.1 = until,
            None => sets.push((queues.to_vec(), until)),
        }
    }
}

/// The PostgreSQL store on driver `D`. Cloning gives another handle on the same store.
///
/// Its own statements (everything but the `_in` variants) run on connections from the
/// driver's pool. While it is busy the store keeps up to two of them checked out between
/// statements, claims on one and the rest on the other, rather than handing each back after
/// every statement ([`conn`](super::conn)). Once something calls `wait`, the notification
/// listener holds a connection of its own.
pub struct PgStore<D: Driver> {
    inner: Arc<Inner<D>>,
}

impl<D: Driver> Clone for PgStore<D> {
    fn clone(&self) -> Self {
        PgStore {
            inner: self.inner.clone(),
        }
    }
}

impl<D: Driver> fmt::Debug for PgStore<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("table", &self.inner.table)
            .finish_non_exhaustive()
    }
}

struct Inner<D: Driver> {
    driver: D,
    table: QueueTable,
    sql: Statements,
    wakeups: Arc<Wakeups>,
    /// Connections kept between the store's own statements.
    warm: Arc<Warm<D::Pooled>>,
    /// When the store vacuums its table and checks its statistics.
    upkeep: Upkeep,
    /// Dropping this stops the listener task.
    stop_listener: Mutex<Option<oneshot::Sender<()>>>,
    /// How long failed and cancelled jobs of queues without their own retention are kept, µs.
    retention: AtomicI64,
    /// Whether the store's own claims wait for their WAL flush ([`PgStore::synchronous_claims`]).
    synchronous_claims: AtomicBool,
    /// Single puts waiting to be sent together ([`group`](super::group)).
    group: Group,
    /// Queue sets claimed with the claim that keeps limits ([`Statements::claim_unlimited`]).
    limited: LimitedQueues,
}

impl<D: Driver> PgStore<D> {
    /// A store on `table` through `driver`, trusting that the table's schema is in place (see
    /// [`PgStore::migrate`]).
    pub fn new(driver: D, table: QueueTable) -> Self {
        PgStore {
            inner: Arc::new(Inner {
                sql: Statements::new(&table),
                warm: Warm::new(),
                upkeep: Upkeep::default(),
                driver,
                table,
                wakeups: Arc::new(Wakeups::default()),
                stop_listener: Mutex::new(None),
                retention: AtomicI64::new(micros(DEFAULT_RETENTION)),
                synchronous_claims: AtomicBool::new(false),
                group: Group::default(),
                limited: LimitedQueues::default(),
            }),
        }
    }

    /// The driver the store runs on.
    pub fn driver(&self) -> &D {
        &self.inner.driver
    }

    /// The table the store keeps its jobs in.
    pub fn table(&self) -> &QueueTable {
        &self.inner.table
    }

    /// Vacuums the jobs table after every `claimed_jobs` jobs this store claims (0 never
    /// does): see [`Vacuuming`](super::Vacuuming).
    pub fn vacuum_every(&self, claimed_jobs: u64) {
        self.inner.upkeep.vacuuming.set_every(claimed_jobs);
    }

    /// Takes a rotation step of the jobs table's partitions after every `jobs` jobs this store
    /// puts or claims (0 never does): see [`Rotating`](super::Rotating).
    pub fn rotate_every(&self, jobs: u64) {
        self.inner.upkeep.rotating.set_every(jobs);
    }

    /// Checks the planner statistics while the store claims, and analyzes the table when they
    /// lag far behind it: see [`Analyzing`](super::Analyzing).
    pub fn analyze_when_stale(&self, on: bool) {
        self.inner.upkeep.analyzing.set_on(on);
    }

    /// Whether the store's own claims commit as the session is set to (`synchronous_commit`
    /// on, by default) rather than without waiting for their WAL flush (the default, `false`):
    /// see [`Statements::claim`] for what an asynchronous claim can lose, which is only the
    /// claim itself, on a server crash. Claims on a caller's connection (`claim_in`) always
    /// commit as the caller's transaction is set to.
    pub fn synchronous_claims(&self, on: bool) {
        self.inner.synchronous_claims.store(on, Ordering::Relaxed);
    }

    /// How long [`QueueStore::prune`] keeps failed and cancelled jobs of queues without a
    /// retention of their own ([`QueueSetting::Retention`]); default
    /// [`DEFAULT_RETENTION`]. Rejects a period of zero or above
    /// [`MAX_DURATION`](crate::MAX_DURATION).
    pub fn set_retention(&self, retention: std::time::Duration) -> Result<()> {
        QueueSetting::Retention(Some(retention)).validate()?;
        self.inner
            .retention
            .store(micros(retention), Ordering::Relaxed);
        Ok(())
    }

    /// Applies the missing schema migrations, in one transaction under an advisory lock, so
    /// concurrent callers are safe. Tracked in `"<schema>"."<table>_migrations"`.
    pub async fn migrate(&self) -> Result<()> {
        let mut tx = self.inner.driver.begin("BEGIN").await?;
        match migrate_on::<D>(&mut tx, &self.inner.table).await {
            Ok(()) => D::commit(tx).await,
            Err(e) => {
                // Dropped, it rolls back all the same; the migration's error is the one to see.
                let _ = D::rollback(tx).await;
                Err(e)
            }
        }
    }

    /// Splits the jobs table into rotating partitions ([`partition_script`]), if it is not
    /// split yet; true if this call split it. Migrates first.
    ///
    /// A snapshot held anywhere on the server (a long report in `REPEATABLE READ`, a session
    /// left idle in a transaction) keeps `VACUUM` from removing what completed jobs leave
    /// behind, and on a table not split every claim steps over all of it: claims slow down with
    /// every job completed while the snapshot is held. On a split table, the store's upkeep
    /// empties each drained partition with `TRUNCATE` ([`Rotating`](super::Rotating)), which
    /// removes it whatever snapshot is held. What it costs: every claim and every statement
    /// that finds a job by id reaches three partitions instead of one table; measured in
    /// `BENCHMARKS.md`, and the reasoning in `docs/design.md`, "Storage a held snapshot
    /// cannot slow".
    ///
    /// The split copies every job into the new table in one transaction, under the lock that
    /// serialises migrations, and holds the queue meanwhile (about a second per 100,000 jobs).
    pub async fn partition(&self) -> Result<bool> {
        self.migrate().await?;
        let table = &self.inner.table;
        let mut tx = self.inner.driver.begin("BEGIN").await?;
        let split = async {
            let m = MigrationStatements::new(table);
            let lock: Arc<str> = m.lock.into();
            D::execute(&mut tx, &lock, &[Param::Int8(table.lock_key())]).await?;
            let ask: Arc<str> = Arc::from(format!(
                "SELECT c.relkind = 'p' FROM pg_class AS c WHERE c.oid = '{}'::regclass",
                table.qualified()
            ));
            let done = scalars::<bool>(D::column(&mut tx, &ask, &[], Kind::Bool).await?)?;
            if done.first() == Some(&true) {
                return Ok(false);
            }
            D::batch(&mut tx, &partition_script(table)).await?;
            Ok(true)
        }
        .await;
        match split {
            Ok(split) => D::commit(tx).await.map(|()| split),
            Err(e) => {
                let _ = D::rollback(tx).await;
                Err(e)
            }
        }
    }

    /// [`QueueStore::put_many`] on `conn`, a connection or transaction of the caller's.
    pub async fn put_many_in(&self, conn: &mut D::Conn, jobs: Vec<NewJob>) -> Result<Vec<JobId>> {
        let a = InsertArrays::new(&jobs)?;
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        self.insert_on(conn, jobs, a).await
    }

    /// Inserts `jobs`, split into `a`, on `conn`.
    async fn insert_on(
        &self,
        conn: &mut D::Conn,
        jobs: Vec<NewJob>,
        a: InsertArrays,
    ) -> Result<Vec<JobId>> {
        let params = a.params();
        let insert = D::inserted(conn, self.inner.sql.insert(&a), &params);
        let rows = freeing(insert, jobs).await?;
        let ids = a.ids(rows)?;
        crate::metrics::record_put(a.queue.iter().map(String::as_str));
        let driver = &self.inner.driver;
        self.inner
            .upkeep
            .after_put(ids.len(), &self.inner.sql, |text| {
                let (driver, text) = (driver.clone(), text.clone());
                async move {
                    let mut c = driver.acquire().await?;
                    D::batch(&mut c, &text).await
                }
            });
        Ok(ids)
    }

    /// Inserts `jobs` on a connection of the store's.
    async fn insert(&self, jobs: &[NewJob]) -> Result<Vec<JobId>> {
        let a = InsertArrays::new(jobs)?;
        let mut c = self.conn(Lane::Rest).await?;
        let ids = self.insert_on(&mut c, Vec::new(), a).await?;
        self.keep(c);
        Ok(ids)
    }

    /// Puts `job`, validated and [admitted](Group::admits), in the next statement that sends
    /// single puts together ([`group`](super::group)), starting the task that sends them if
    /// none is running.
    async fn put_grouped(&self, job: NewJob) -> Result<JobId> {
        let (reply, answer) = oneshot::channel();
        if self.inner.group.join(Waiting { job, reply }) {
            let store = self.clone();
            tokio::spawn(async move { store.send_puts().await });
        }
        answer.await.map_err(|_| {
            Error::Unavailable(
                "the store's task sending puts stopped while sending this job's; it may or may \
                 not have been put"
                    .into(),
            )
        })?
    }

    /// The task that sends gathered puts, one statement after another, until none is left.
    async fn send_puts(&self) {
        let sending = Sending::new(&self.inner.group);
        loop {
            // Callers answered by the last statement put their next jobs before this one's
            // are taken, instead of waiting for the statement after.
            tokio::task::yield_now().await;
            let group = self.inner.group.next();
            if group.is_empty() {
                sending.done();
                return;
            }
            self.send_group(group).await;
        }
    }

    /// Sends `group` in one statement and answers each caller. If that fails for a reason
    /// that may lie in one job (a value the server refuses), each job is sent again on its
    /// own, so that the error reaches only its caller; a failure of the connection or a lost
    /// race reaches them all, as it would have reached each alone.
    async fn send_group(&self, group: Vec<Waiting>) {
        let (jobs, replies): (Vec<NewJob>, Vec<_>) =
            group.into_iter().map(|w| (w.job, w.reply)).unzip();
        let alone = jobs.len() == 1;
        match self.insert(&jobs).await {
            Ok(ids) if ids.len() == replies.len() => {
                for (reply, id) in replies.into_iter().zip(ids) {
                    let _ = reply.send(Ok(id));
                }
            }
            Ok(ids) => {
                let text = format!(
                    "the insert returned {} ids for {} jobs",
                    ids.len(),
                    jobs.len()
                );
                for reply in replies {
                    let _ = reply.send(Err(Error::Backend(text.clone().into())));
                }
            }
            Err(e) if alone || e.is_retryable() => {
                let mut replies = replies.into_iter();
                if let Some(first) = replies.next() {
                    for reply in replies {
                        let _ = reply.send(Err(for_each_caller(&e)));
                    }
                    let _ = first.send(Err(e));
                }
            }
            Err(_) => {
                for (job, reply) in jobs.chunks(1).zip(replies) {
                    let out = self.insert(job).await.and_then(|ids| {
                        one(ids, Error::Backend("the insert returned no id".into()))
                    });
                    let _ = reply.send(out);
                }
            }
        }
    }

    /// [`QueueStore::claim`] on `conn`, a connection or transaction of the caller's: it
    /// commits as the caller's transaction (or session) is set to
    /// ([`Statements::claim_in_transaction`]).
    pub async fn claim_in(&self, conn: &mut D::Conn, claim: &Claim) -> Result<Vec<ClaimedJob>> {
        self.claim_on(conn, claim, true).await
    }

    /// [`QueueStore::complete_many`] on `conn`, a connection or transaction of the caller's.
    pub async fn complete_many_in(&self, conn: &mut D::Conn, done: &[Done]) -> Result<Vec<JobId>> {
        done.iter().try_for_each(Done::validate)?;
        if done.is_empty() {
            return Ok(Vec::new());
        }
        let a = DoneArrays::new(done)?;
        let params = a.params();
        let cells = D::column(conn, &self.inner.sql.complete, &params, Kind::Int8).await?;
        Ok(completed_in_order(done, scalars::<i64>(cells)?))
    }

    /// Claims on `conn`, committing as the session is set to if `in_transaction`, else
    /// without waiting for the WAL flush ([`Statements::claim`]). Queues the store has not
    /// found limited are claimed from without the limits machinery
    /// ([`Statements::claim_unlimited`]); should that claim find a limit, the claim that
    /// keeps limits runs instead, and is used for those queues for a while.
    async fn claim_on(
        &self,
        conn: &mut D::Conn,
        claim: &Claim,
        in_transaction: bool,
    ) -> Result<Vec<ClaimedJob>> {
        claim.validate()?;
        let queues = claim.distinct_queues();
        let sql = &self.inner.sql;
        let kept = |sql: &Statements| {
            if in_transaction {
                sql.claim_in_transaction(&queues, claim.limit, claim.lease)
            } else {
                sql.claim(&queues, claim.limit, claim.lease)
            }
        };
        let jobs = if self.inner.limited.is_limited(&queues) {
            self.claim_rows(conn, &kept(sql), claim.limit).await?.0
        } else {
            let text = sql.claim_unlimited(&queues, claim.limit, claim.lease, in_transaction);
            match self.claim_rows(conn, &text, claim.limit).await? {
                (_, true) => {
                    self.inner.limited.mark(&queues);
                    self.claim_rows(conn, &kept(sql), claim.limit).await?.0
                }
                (jobs, false) => jobs,
            }
        };
        self.upkeep_after_claim(jobs.len());
        Ok(jobs)
    }

    /// Runs the claim `sql` on `conn`: the jobs claimed, and whether it returned the marker
    /// of a limited queue ([`Statements::is_limited_marker`]). Each row becomes a job as it
    /// is read; a row that cannot be decoded is failed at once, in its own statement, and the
    /// rest are handed out ([`Undecodable`]).
    async fn claim_rows(
        &self,
        conn: &mut D::Conn,
        sql: &Arc<str>,
        limit: u32,
    ) -> Result<(Vec<ClaimedJob>, bool)> {
        let mut jobs = Vec::with_capacity(usize::try_from(limit.min(256)).unwrap_or(0));
        let mut bad = Vec::new();
        let mut limited = false;
        let mut each = |id: i64, token: Option<i64>, row: Result<JobRow<'_>>| {
            if Statements::is_limited_marker(id, token) {
                limited = true;
                return;
            }
            match (row.and_then(JobRow::into_claimed), token) {
                (Ok(job), _) => jobs.push(job),
                (Err(error), Some(token)) => bad.push(Undecodable {
                    lease: Lease {
                        job_id: JobId(id),
                        token,
                    },
                    error,
                }),
                // Not a row the claim leased (it sets every token): nothing to fail.
                (Err(error), None) => {
                    tracing::warn!(job = id, error = %error, "a claimed row carries no lease token");
                }
            }
        };
        D::jobs(conn, sql, &[], &mut each).await?;
        for row in bad {
            if let Err(e) = self.fail_on(conn, &row.lease, row.failure()).await {
                row.not_failed(&e);
            }
        }
        Ok((jobs, limited))
    }

    /// Records a failed attempt on `conn`: [`QueueStore::fail`].
    async fn fail_on(
        &self,
        conn: &mut D::Conn,
        lease: &Lease,
        failure: Failure,
    ) -> Result<JobState> {
        failure.validate()?;
        let (at, within) = retry_params(&failure);
        let params = [
            Param::Int8(lease.job_id.0),
            Param::Int8(lease.token),
            Param::Time(at),
            Param::Int8(within),
            Param::Text(&failure.recorded_error()),
            Param::Bool(!failure.give_up),
        ];
        let cells = D::column(conn, &self.inner.sql.fail, &params, Kind::Text).await?;
        match scalars::<String>(cells)?.into_iter().next() {
            Some(state) => parse_state(&state),
            None => Err(Error::LeaseLost(lease.job_id)),
        }
    }

    /// After a lease operation found nothing to change: [`Error::Cancelled`] if the job was
    /// cancelled under `lease`, else [`Error::LeaseLost`].
    async fn lost(&self, lease: &Lease) -> Error {
        let params = [Param::Int8(lease.job_id.0), Param::Int8(lease.token)];
        match self
            .column::<bool>(&self.inner.sql.lease_cancelled, &params)
            .await
        {
            Ok(c) if c.first() == Some(&true) => Error::Cancelled(lease.job_id),
            Ok(_) => Error::LeaseLost(lease.job_id),
            Err(e) => e,
        }
    }

    /// Rows of JSON arrays, one column of text, each decoded as `T`.
    async fn json_rows<T: serde::de::DeserializeOwned>(&self, sql: &Arc<str>) -> Result<Vec<T>> {
        let rows: Vec<String> = self.column(sql, &[]).await?;
        rows.iter()
            .map(|r| {
                serde_json::from_str(r)
                    .map_err(|e| Error::BadValue(format!("a row of the queue tables: {e}")))
            })
            .collect()
    }

    /// A connection for a statement of `lane`: one the store kept, else one from the pool.
    async fn conn(&self, lane: Lane) -> Result<WarmConn<D::Pooled>> {
        if self.inner.driver.is_closed() {
            self.inner.warm.clear();
        } else if let Some(c) = self.inner.warm.take(lane) {
            return Ok(c);
        }
        let c = self.inner.driver.acquire().await?;
        Ok(WarmConn::new(c, lane))
    }

    /// Keeps `c` for the next statement, its statement having succeeded. (Dropped instead,
    /// after an error or a cancelled statement, it goes back to the pool, which checks it.)
    fn keep(&self, c: WarmConn<D::Pooled>) {
        if !self.inner.driver.is_closed() {
            self.inner.warm.keep_from(c, self.inner.driver.pool_size());
        }
    }

    /// Runs a statement of one column on a connection of the store's.
    async fn column<T: Scalar>(&self, sql: &Arc<str>, params: &[Param<'_>]) -> Result<Vec<T>> {
        let mut c = self.conn(Lane::Rest).await?;
        let cells = D::column(&mut c, sql, params, T::KIND).await?;
        self.keep(c);
        scalars(cells)
    }

    /// After a claim of `claimed` jobs: starts the store's vacuum or statistics check if due,
    /// on a connection of the pool (not the claim's: that may be in a caller's transaction).
    fn upkeep_after_claim(&self, claimed: usize) {
        let driver = &self.inner.driver;
        let run = |text: &Arc<str>| {
            let (driver, text) = (driver.clone(), text.clone());
            async move {
                let mut c = driver.acquire().await?;
                D::batch(&mut c, &text).await
            }
        };
        let ask = |text: &Arc<str>| {
            let (driver, text) = (driver.clone(), text.clone());
            async move {
                let mut c = driver.acquire().await?;
                let cells = D::column(&mut c, &text, &[], Kind::Bool).await?;
                Ok(scalars::<bool>(cells)?.first() == Some(&true))
            }
        };
        self.inner
            .upkeep
            .after_claim(claimed, &self.inner.sql, run, ask);
    }

    /// Starts the listener task on first use; it ends when the store is dropped.
    fn ensure_listener(&self) {
        if !self.inner.wakeups.claim_start() {
            return;
        }
        let (stop_tx, stop_rx) = oneshot::channel();
        if let Ok(mut slot) = self.inner.stop_listener.lock() {
            *slot = Some(stop_tx);
        }
        let driver = self.inner.driver.clone();
        let wakeups = self.inner.wakeups.clone();
        let listen = self.inner.sql.listen.clone();
        let channel = self.inner.table.channel();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop_rx => {}
                () = listen_forever(driver, wakeups, listen, channel) => {}
            }
        });
    }
}

/// The migrations, on `c` inside the migrating transaction.
async fn migrate_on<D: Driver>(c: &mut D::Conn, table: &QueueTable) -> Result<()> {
    let m = MigrationStatements::new(table);
    let (lock, applied, record): (Arc<str>, Arc<str>, Arc<str>) =
        (m.lock.into(), m.applied.into(), m.record.into());
    D::execute(c, &lock, &[Param::Int8(table.lock_key())]).await?;
    D::batch(c, &m.prepare).await?;
    let applied = scalars::<Int4>(D::column(c, &applied, &[], Kind::Int4).await?)?;
    for step in migrations(table) {
        if applied.iter().any(|v| v.0 == step.version) {
            continue;
        }
        D::batch(c, &step.sql).await?;
        let params = [Param::Int4(step.version), Param::Text(step.description)];
        D::execute(c, &record, &params).await?;
    }
    Ok(())
}

/// Keeps a listening connection, reconnecting a second after each loss. While it is down
/// `wait` polls; on every loss and reconnection every waiter is woken to look, since
/// notifications sent meanwhile were lost.
async fn listen_forever<D: Driver>(
    driver: D,
    wakeups: Arc<Wakeups>,
    listen: Arc<str>,
    channel: String,
) {
    let mut reconnecting = false;
    loop {
        let again = reconnecting;
        let note = |note: Note<'_>| match note {
            Note::Listening => {
                wakeups.set_connected(true);
                if again {
                    wakeups.notify_all();
                } else {
                    // A job cancelled before the first LISTEN went unheard: holders look.
                    wakeups.recheck_cancels();
                }
            }
            Note::Queue(queue) => wakeups.notify(queue),
            Note::Missed => wakeups.notify_all(),
        };
        let lost = driver.listen(&listen, &channel, &note).await;
        tracing::warn!(error = %lost, "pq: listener connection lost");
        wakeups.set_connected(false);
        wakeups.notify_all();
        reconnecting = true;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn one<T>(values: Vec<T>, missing: Error) -> Result<T> {
    values.into_iter().next().ok_or(missing)
}

fn count(n: Vec<i64>) -> u64 {
    n.first().map_or(0, |&n| u64::try_from(n).unwrap_or(0))
}

#[async_trait]
impl<D: Driver> QueueStore for PgStore<D> {
    async fn put_many(&self, mut jobs: Vec<NewJob>) -> Result<Vec<JobId>> {
        // Validated before a connection is taken: a bad job is refused whatever the server.
        if jobs.len() == 1 && Group::admits(&jobs[0]) {
            if let Some(job) = jobs.pop() {
                job.validate()?;
                return Ok(vec![self.put_grouped(job).await?]);
            }
        }
        let a = InsertArrays::new(&jobs)?;
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.conn(Lane::Rest).await?;
        let ids = self.insert_on(&mut c, jobs, a).await?;
        self.keep(c);
        Ok(ids)
    }

    async fn claim(&self, claim: &Claim) -> Result<Vec<ClaimedJob>> {
        let mut c = self.conn(Lane::Claim).await?;
        let in_transaction = self.inner.synchronous_claims.load(Ordering::Relaxed);
        let claimed = self.claim_on(&mut c, claim, in_transaction).await?;
        self.keep(c);
        Ok(claimed)
    }

    async fn complete_many(&self, done: &[Done]) -> Result<Vec<JobId>> {
        let mut c = self.conn(Lane::Rest).await?;
        let completed = self.complete_many_in(&mut c, done).await?;
        self.keep(c);
        Ok(completed)
    }

    async fn fail(&self, lease: &Lease, failure: Failure) -> Result<JobState> {
        failure.validate()?;
        let mut c = self.conn(Lane::Rest).await?;
        let state = self.fail_on(&mut c, lease, failure).await;
        self.keep(c);
        match state {
            Err(Error::LeaseLost(_)) => Err(self.lost(lease).await),
            other => other,
        }
    }

    async fn extend(&self, lease: &Lease, lease_for: Duration) -> Result<DateTime<Utc>> {
        validate_lease(lease_for)?;
        let params = [
            Param::Int8(lease.job_id.0),
            Param::Int8(lease.token),
            Param::Int8(micros(lease_for)),
        ];
        let until = self.column(&self.inner.sql.extend, &params).await?;
        match until.into_iter().next() {
            Some(until) => Ok(until),
            None => Err(self.lost(lease).await),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        self.snooze(lease, Duration::ZERO).await
    }

    async fn snooze(&self, lease: &Lease, delay: Duration) -> Result<()> {
        validate_delay(delay)?;
        let params = [
            Param::Int8(lease.job_id.0),
            Param::Int8(lease.token),
            Param::Int8(micros(delay)),
        ];
        let ids: Vec<i64> = self.column(&self.inner.sql.release, &params).await?;
        if ids.is_empty() {
            return Err(self.lost(lease).await);
        }
        Ok(())
    }

    async fn cancel(&self, id: JobId) -> Result<()> {
        let state: Vec<String> = self
            .column(&self.inner.sql.cancel, &[Param::Int8(id.0)])
            .await?;
        parse_state(&one(state, Error::NotFound(id))?).map(drop)
    }

    async fn cancel_requested(&self, id: JobId) {
        self.ensure_listener();
        self.inner.wakeups.cancelled(id.0).await;
    }

    async fn set_progress(&self, lease: &Lease, progress: serde_json::Value) -> Result<()> {
        crate::validate::validate_json("progress", &progress)?;
        let text = serde_json::to_string(&progress)?;
        let params = [
            Param::Int8(lease.job_id.0),
            Param::Int8(lease.token),
            Param::Text(&text),
        ];
        let ids: Vec<i64> = self.column(&self.inner.sql.progress, &params).await?;
        if ids.is_empty() {
            return Err(self.lost(lease).await);
        }
        Ok(())
    }

    async fn configure_queue(&self, queue: &str, setting: QueueSetting) -> Result<()> {
        validate_setting(queue, &setting)?;
        let (which, paused, n, per) = match setting {
            QueueSetting::Paused(p) => (1, p, 0, 0),
            QueueSetting::Concurrency(n) => (2, false, n.map_or(0, i64::from), 0),
            QueueSetting::Rate(r) => (
                3,
                false,
                r.map_or(0, |r| i64::from(r.jobs)),
                r.map_or(0, |r| micros(r.per)),
            ),
            QueueSetting::Retention(d) => (4, false, d.map_or(0, micros), 0),
            // A setting this version does not know of: refused rather than ignored.
            #[allow(unreachable_patterns)]
            _ => {
                return Err(Error::invalid(
                    "queue setting",
                    "not supported by this store",
                ))
            }
        };
        let params = [
            Param::Text(queue),
            Param::Int4(which),
            Param::Bool(paused),
            Param::Int8(n),
            Param::Int8(per),
        ];
        let _: Vec<i64> = self
            .column(&self.inner.sql.configure_queue, &params)
            .await?;
        Ok(())
    }

    async fn queues(&self) -> Result<Vec<QueueInfo>> {
        type ConfigRow = (String, bool, i64, i64, i64, i64);
        let configs: Vec<ConfigRow> = self.json_rows(&self.inner.sql.queue_configs).await?;
        let counts: Vec<(String, String, i64, i64)> =
            self.json_rows(&self.inner.sql.queue_counts).await?;
        let mut out: std::collections::BTreeMap<String, QueueInfo> = Default::default();
        let count = |n: i64| u32::try_from(n).ok().filter(|&n| n > 0);
        let span = |us: i64| {
            u64::try_from(us)
                .ok()
                .filter(|&us| us > 0)
                .map(std::time::Duration::from_micros)
        };
        for (queue, paused, concurrency, rate, per, retention) in configs {
            let mut config = QueueConfig::default()
                .with(QueueSetting::Paused(paused))
                .with(QueueSetting::Concurrency(count(concurrency)))
                .with(QueueSetting::Retention(span(retention)));
            if let (Some(jobs), Some(per)) = (count(rate), span(per)) {
                config = config.with(QueueSetting::Rate(Some(Rate::new(jobs, per))));
            }
            if !config.is_default() {
                out.insert(
                    queue.clone(),
                    QueueInfo::new(queue, config, QueueStats::default()),
                );
            }
        }
        for (queue, state, n, age) in counts {
            let info = out.entry(queue.clone()).or_insert_with(|| {
                QueueInfo::new(queue, QueueConfig::default(), QueueStats::default())
            });
            let state = parse_state(&state)?;
            info.stats.add(state, u64::try_from(n).unwrap_or(0));
            if state == JobState::Ready {
                let age = std::time::Duration::from_micros(u64::try_from(age).unwrap_or(0));
                info.oldest_ready = Some(age);
            }
        }
        Ok(out.into_values().collect())
    }

    async fn prune(&self) -> Result<Pruned> {
        let retention = self.inner.retention.load(Ordering::Relaxed);
        let params = [Param::Int8(retention), Param::Int8(PRUNE_BATCH.into())];
        let jobs = count(self.column(&self.inner.sql.prune_jobs, &params).await?);
        let params = [Param::Int4(PRUNE_BATCH)];
        let keys = count(self.column(&self.inner.sql.prune_keys, &params).await?);
        let _: Vec<i64> = self.column(&self.inner.sql.reveal, &params).await?;
        let history = self.cleanup_history().await?;
        let params = [Param::Int8(micros(THROUGHPUT_KEPT))];
        let _: Vec<i64> = self
            .column(&self.inner.sql.prune_throughput, &params)
            .await?;
        Ok(Pruned::new(jobs, keys, history))
    }

    async fn retry(&self, id: JobId) -> Result<()> {
        let state: Vec<String> = self
            .column(&self.inner.sql.retry, &[Param::Int8(id.0)])
            .await?;
        match parse_state(&one(state, Error::NotFound(id))?)? {
            JobState::Failed => Ok(()),
            state => Err(Error::InvalidState { id, state }),
        }
    }

    async fn job(&self, id: JobId) -> Result<Job> {
        let mut c = self.conn(Lane::Rest).await?;
        let mut found = None;
        let mut each = |_: i64, _: Option<i64>, row: Result<JobRow<'_>>| {
            found = Some(row.and_then(JobRow::into_job));
        };
        D::jobs(&mut c, &self.inner.sql.job, &[Param::Int8(id.0)], &mut each).await?;
        self.keep(c);
        found.ok_or(Error::NotFound(id))?
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>> {
        filter.validate()?;
        let state = filter.state.map_or("", JobState::as_str);
        let params = [
            Param::Text(filter.queue.as_deref().unwrap_or("")),
            Param::Text(state),
            Param::Int8(filter.before.map_or(i64::MAX, |id| id.0)),
            Param::Int8(filter.limit.into()),
        ];
        let mut c = self.conn(Lane::Rest).await?;
        let mut found = Vec::new();
        // A row pq cannot read is left out of the list, not allowed to hide the rest;
        // `job` on its id tells what is wrong with it.
        let mut each = |id: i64, _: Option<i64>, row: Result<JobRow<'_>>| match row
            .and_then(JobRow::into_job)
        {
            Ok(job) => found.push(job),
            Err(e) => tracing::warn!(job = id, error = %e, "a listed job cannot be read"),
        };
        D::jobs(&mut c, &self.inner.sql.list_jobs, &params, &mut each).await?;
        self.keep(c);
        Ok(found)
    }

    async fn record_throughput(&self, tallies: &[Tally]) -> Result<()> {
        if tallies.is_empty() {
            return Ok(());
        }
        let mut queues = Vec::with_capacity(tallies.len());
        let (mut completed, mut failed) = (Vec::new(), Vec::new());
        for t in tallies {
            validate_queue_name(&t.queue)?;
            queues.push(t.queue.clone());
            completed.push(i64::try_from(t.completed).unwrap_or(i64::MAX));
            failed.push(i64::try_from(t.failed).unwrap_or(i64::MAX));
        }
        let params = [
            Param::Texts(&queues),
            Param::Int8s(&completed),
            Param::Int8s(&failed),
        ];
        let _: Vec<i64> = self
            .column(&self.inner.sql.record_throughput, &params)
            .await?;
        Ok(())
    }

    async fn throughput(&self, since: std::time::Duration) -> Result<Vec<Throughput>> {
        let rows: Vec<String> = self
            .column(&self.inner.sql.throughput, &[Param::Int8(micros(since))])
            .await?;
        rows.iter()
            .map(|r| {
                let (queue, minute, completed, failed): (String, i64, i64, i64) =
                    serde_json::from_str(r)
                        .map_err(|e| Error::BadValue(format!("a throughput record: {e}")))?;
                let minute = DateTime::from_timestamp_micros(minute).ok_or_else(|| {
                    Error::BadValue(format!("a throughput record's minute: {minute}"))
                })?;
                let n = |v: i64| u64::try_from(v).unwrap_or(0);
                Ok(Throughput::new(queue, minute, n(completed), n(failed)))
            })
            .collect()
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats> {
        if unstorable(queue) {
            return Ok(QueueStats::default());
        }
        let mut c = self.conn(Lane::Rest).await?;
        let rows = D::counts(&mut c, &self.inner.sql.stats, &[Param::Text(queue)]).await?;
        self.keep(c);
        let mut stats = QueueStats::default();
        for (state, n) in rows {
            stats.add(parse_state(&state)?, u64::try_from(n).unwrap_or(0));
        }
        Ok(stats)
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        if unstorable(queue) {
            return Ok(0);
        }
        let n = self
            .column(&self.inner.sql.purge, &[Param::Text(queue)])
            .await?;
        Ok(count(n))
    }

    async fn key_state(&self, queue: &str, key: &str) -> Result<Option<serde_json::Value>> {
        if unstorable(queue) || unstorable(key) {
            return Ok(None);
        }
        let params = [Param::Text(queue), Param::Text(key)];
        let state: Vec<String> = self.column(&self.inner.sql.key_state, &params).await?;
        Ok(state.first().map(|s| serde_json::from_str(s)).transpose()?)
    }

    async fn finished(&self, id: JobId) -> Result<FinishedJob> {
        let mut c = self.conn(Lane::Rest).await?;
        let rows = D::finished(&mut c, &self.inner.sql.finished, &[Param::Int8(id.0)]).await?;
        self.keep(c);
        one(rows, Error::NotFound(id))?.into_finished()
    }

    async fn history(&self, queue: &str, limit: u32) -> Result<Vec<FinishedJob>> {
        if unstorable(queue) {
            return Ok(Vec::new());
        }
        let mut c = self.conn(Lane::Rest).await?;
        let params = [Param::Text(queue), Param::Int8(i64::from(limit))];
        let rows = D::finished(&mut c, &self.inner.sql.history, &params).await?;
        self.keep(c);
        rows.into_iter().map(|r| r.into_finished()).collect()
    }

    async fn cleanup_history(&self) -> Result<u64> {
        let n = self.column(&self.inner.sql.cleanup_history, &[]).await?;
        Ok(count(n))
    }

    async fn wait(&self, queues: &[String], timeout: Duration) -> Result<bool> {
        self.ensure_listener();
        let sql: Arc<str> = self.inner.sql.next_run(queues.len()).into();
        let next_run = || async {
            let mut c = self.conn(Lane::Rest).await?;
            let next = D::next_run(&mut c, &sql, &[Param::Texts(queues)]).await?;
            self.keep(c);
            Ok(next)
        };
        self.inner
            .wakeups
            .wait(queues, timeout, FALLBACK_POLL, next_run)
            .await
    }
}

/// Whether `name` (a queue's, a key's) holds a NUL character, which no text column can: no
/// row has it, so what asks for one gets the empty answer without a statement (the server
/// would refuse the parameter), as from the memory store.
fn unstorable(name: &str) -> bool {
    name.contains('\0')
}

/// Runs a task of type `T` on a connection of driver `D` inside an open transaction: how a
/// store crate calls its own task trait's `run` (`SqlxTask`, `DieselTask`).
pub type RunIn<D, T> = for<'c> fn(
    T,
    TaskContext,
    &'c mut <D as Driver>::Conn,
) -> BoxFuture<'c, std::result::Result<(), TaskError>>;

/// The worker handler of a task that runs inside the transaction which also completes its
/// job (pgtq's and malthe/pq's transactional processing): the handler's writes and the job's
/// removal commit together, or neither does. Each store crate makes one for its task trait
/// (`SqlxStore::transactional`, `DieselStore::transactional`).
///
/// A connection that breaks under the handler (on `BEGIN`, a statement of the handler's, the
/// rollback after its error, or `COMMIT`) is the store's failure, not the handler's: the
/// attempt is not counted ([`TaskError::store_failed`]). A handler that is dropped before it
/// returns (a worker stopping with [`StopMode::Abort`](crate::StopMode::Abort)) has its
/// transaction rolled back.
pub struct Transactional<D: Driver, T> {
    store: PgStore<D>,
    idle_timeout: Duration,
    run: RunIn<D, T>,
}

impl<D: Driver, T> Transactional<D, T> {
    /// The handler of tasks `T` on `store`, each run by `run`.
    pub fn new(store: PgStore<D>, run: RunIn<D, T>) -> Self {
        Transactional {
            store,
            idle_timeout: HANDLER_IDLE_TIMEOUT,
            run,
        }
    }

    /// The server ends the handler's transaction once it sits idle this long (default
    /// [`HANDLER_IDLE_TIMEOUT`], the default lease): see [`begin_bounded`]. Raise it for a
    /// handler that waits on something slow between its statements.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }
}

impl<D: Driver, T: Task> fmt::Debug for Transactional<D, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transactional")
            .field("task", &T::NAME)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<D: Driver, T: Task> JobHandler for Transactional<D, T> {
    async fn handle(
        &self,
        cx: TaskContext,
        args: &serde_json::Value,
    ) -> std::result::Result<Completion, TaskError> {
        let task = decode_args::<T>(args)?;
        let lease = *cx.lease();
        let record = cx.clone();
        let begin = begin_bounded(self.idle_timeout);
        let mut tx = self.store.driver().begin(&begin).await?;
        let ran = match (self.run)(task, cx, &mut tx).await {
            Ok(()) => match self.store.complete_many_in(&mut tx, &[record.done()]).await {
                Ok(done) if done.is_empty() => Err(Error::LeaseLost(lease.job_id).into()),
                Ok(_) => Ok(()),
                Err(e) => Err(e.into()),
            },
            Err(e) => Err(e),
        };
        match ran {
            Ok(()) => {
                D::commit(tx).await?;
                Ok(Completion::Committed)
            }
            Err(e) => match D::rollback(tx).await {
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

/// Implements [`QueueStore`] for a store type that wraps a [`PgStore`] (the expression after
/// `=>` reaches it from `self`): each method runs the `PgStore`'s.
#[doc(hidden)]
#[macro_export]
macro_rules! __forward_queue_store {
    ($ty:ty => $field:tt) => {
        #[$crate::async_trait]
        impl $crate::QueueStore for $ty {
            async fn put_many(
                &self,
                jobs: Vec<$crate::NewJob>,
            ) -> $crate::Result<Vec<$crate::JobId>> {
                $crate::QueueStore::put_many(&self.$field, jobs).await
            }
            async fn claim(
                &self,
                claim: &$crate::Claim,
            ) -> $crate::Result<Vec<$crate::ClaimedJob>> {
                $crate::QueueStore::claim(&self.$field, claim).await
            }
            async fn complete_many(
                &self,
                done: &[$crate::Done],
            ) -> $crate::Result<Vec<$crate::JobId>> {
                $crate::QueueStore::complete_many(&self.$field, done).await
            }
            async fn fail(
                &self,
                lease: &$crate::Lease,
                failure: $crate::Failure,
            ) -> $crate::Result<$crate::JobState> {
                $crate::QueueStore::fail(&self.$field, lease, failure).await
            }
            async fn extend(
                &self,
                lease: &$crate::Lease,
                lease_for: ::std::time::Duration,
            ) -> $crate::Result<$crate::__chrono::DateTime<$crate::__chrono::Utc>> {
                $crate::QueueStore::extend(&self.$field, lease, lease_for).await
            }
            async fn release(&self, lease: &$crate::Lease) -> $crate::Result<()> {
                $crate::QueueStore::release(&self.$field, lease).await
            }
            async fn snooze(
                &self,
                lease: &$crate::Lease,
                delay: ::std::time::Duration,
            ) -> $crate::Result<()> {
                $crate::QueueStore::snooze(&self.$field, lease, delay).await
            }
            async fn cancel(&self, id: $crate::JobId) -> $crate::Result<()> {
                $crate::QueueStore::cancel(&self.$field, id).await
            }
            async fn cancel_requested(&self, id: $crate::JobId) {
                $crate::QueueStore::cancel_requested(&self.$field, id).await
            }
            async fn set_progress(
                &self,
                lease: &$crate::Lease,
                progress: $crate::__serde_json::Value,
            ) -> $crate::Result<()> {
                $crate::QueueStore::set_progress(&self.$field, lease, progress).await
            }
            async fn configure_queue(
                &self,
                queue: &str,
                setting: $crate::QueueSetting,
            ) -> $crate::Result<()> {
                $crate::QueueStore::configure_queue(&self.$field, queue, setting).await
            }
            async fn queues(&self) -> $crate::Result<Vec<$crate::QueueInfo>> {
                $crate::QueueStore::queues(&self.$field).await
            }
            async fn prune(&self) -> $crate::Result<$crate::Pruned> {
                $crate::QueueStore::prune(&self.$field).await
            }
            async fn retry(&self, id: $crate::JobId) -> $crate::Result<()> {
                $crate::QueueStore::retry(&self.$field, id).await
            }
            async fn job(&self, id: $crate::JobId) -> $crate::Result<$crate::Job> {
                $crate::QueueStore::job(&self.$field, id).await
            }
            async fn record_throughput(&self, tallies: &[$crate::Tally]) -> $crate::Result<()> {
                $crate::QueueStore::record_throughput(&self.$field, tallies).await
            }
            async fn throughput(
                &self,
                since: std::time::Duration,
            ) -> $crate::Result<Vec<$crate::Throughput>> {
                $crate::QueueStore::throughput(&self.$field, since).await
            }
            async fn list_jobs(
                &self,
                filter: &$crate::JobFilter,
            ) -> $crate::Result<Vec<$crate::Job>> {
                $crate::QueueStore::list_jobs(&self.$field, filter).await
            }
            async fn stats(&self, queue: &str) -> $crate::Result<$crate::QueueStats> {
                $crate::QueueStore::stats(&self.$field, queue).await
            }
            async fn purge(&self, queue: &str) -> $crate::Result<u64> {
                $crate::QueueStore::purge(&self.$field, queue).await
            }
            async fn key_state(
                &self,
                queue: &str,
                key: &str,
            ) -> $crate::Result<Option<$crate::__serde_json::Value>> {
                $crate::QueueStore::key_state(&self.$field, queue, key).await
            }
            async fn finished(&self, id: $crate::JobId) -> $crate::Result<$crate::FinishedJob> {
                $crate::QueueStore::finished(&self.$field, id).await
            }
            async fn history(
                &self,
                queue: &str,
                limit: u32,
            ) -> $crate::Result<Vec<$crate::FinishedJob>> {
                $crate::QueueStore::history(&self.$field, queue, limit).await
            }
            async fn cleanup_history(&self) -> $crate::Result<u64> {
                $crate::QueueStore::cleanup_history(&self.$field).await
            }
            async fn wait(
                &self,
                queues: &[String],
                timeout: ::std::time::Duration,
            ) -> $crate::Result<bool> {
                $crate::QueueStore::wait(&self.$field, queues, timeout).await
            }
        }
    };
}

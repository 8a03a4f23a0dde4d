//! The stores' background upkeep of their table: vacuuming it as claims leave dead index
//! entries behind, and analyzing it when its statistics lag far behind it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::statements::Statements;
use crate::error::Result;

/// A pacer of a store's background upkeep ([`Vacuuming`], [`Analyzing`]).
trait Pacer: Send + Sync + 'static {
    /// Ends the upkeep the pacer started, which took `took`.
    fn finished(&self, took: Duration);
}

/// One piece of upkeep at a time, none before a set time.
#[derive(Debug, Default)]
struct Duty {
    busy: AtomicBool,
    not_before: Mutex<Option<Instant>>,
}

impl Duty {
    /// True if the upkeep may start now: it is not running and its wait is over. The caller
    /// then owns it and must [`Duty::end`] it.
    fn start(&self) -> bool {
        if self.busy.swap(true, Ordering::Acquire) {
            return false;
        }
        let waiting = self
            .not_before
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|t| Instant::now() < t);
        if waiting {
            self.busy.store(false, Ordering::Release);
        }
        !waiting
    }

    /// Ends the upkeep [`Duty::start`] started; the next may start after `wait`.
    fn end(&self, wait: Duration) {
        *self
            .not_before
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now().checked_add(wait);
        self.busy.store(false, Ordering::Release);
    }

    #[cfg(test)]
    fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }
}

/// Upkeep under way; ends it with its pacer's `finished` when dropped, so that it ends even
/// if its task is dropped unfinished (its runtime shutting down): else the store would never
/// run that upkeep again.
struct Running<P: Pacer> {
    pacer: Arc<P>,
    started: Instant,
}

impl<P: Pacer> Drop for Running<P> {
    fn drop(&mut self) {
        self.pacer.finished(self.started.elapsed());
    }
}

/// Runs the upkeep `pacer` has just started, the future `upkeep` returns, in a task of its
/// own on the current tokio runtime (outside one, it skips it), logging how it went.
fn run_upkeep<P: Pacer, F>(pacer: &Arc<P>, what: &'static str, upkeep: impl FnOnce() -> F)
where
    F: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        pacer.finished(Duration::ZERO);
        return;
    };
    let running = Running {
        pacer: pacer.clone(),
        started: Instant::now(),
    };
    let ran = upkeep();
    runtime.spawn(async move {
        match ran.await {
            Ok(()) => tracing::debug!(took = ?running.started.elapsed(), "{what}: done"),
            Err(e) => tracing::warn!(error = %e, "{what}: failed"),
        }
        drop(running);
    });
}

/// When a store vacuums its jobs table: every [`Vacuuming::DEFAULT_EVERY`] claimed jobs by
/// default, one vacuum at a time per store, and never more than a tenth of the time (after a
/// vacuum that took `d`, the next waits at least `9 × d`).
///
/// Why a store vacuums at all: a claim walks the claim index in claim order from its start,
/// and every job claimed leaves an index entry there, pointing at the row's version from
/// before the claim, that only `VACUUM` removes. Each claim then steps over all the entries
/// the claims before it left, and autovacuum visits each database only once per
/// `autovacuum_naptime` (1 min by default), while a busy queue claims far more jobs than that
/// in a minute. The measurements are in `docs/design.md`, "Vacuum and analyze pacing".
///
/// The vacuum needs the table's owner: without that, PostgreSQL skips it with a warning. So
/// before its first vacuum a store asks whether its role owns the table
/// ([`Statements::may_vacuum`]), and if it does not, it says so once (an `info` event) and
/// leaves the table to autovacuum from then on; if the question fails, it asks again at the
/// next vacuum due. (Other roles PostgreSQL lets vacuum a table, such as the database's owner,
/// are left to autovacuum too, as with the statistics check.)
///
/// ```
/// use pq_api::postgres::Vacuuming;
/// use std::time::Duration;
///
/// let v = Vacuuming::new(100);
/// assert!(!v.claimed(60));
/// assert!(v.claimed(60)); // 120 claimed: vacuum now
/// assert!(!v.claimed(500)); // one at a time
/// v.finished(Duration::from_secs(3600));
/// assert!(!v.claimed(500)); // and not again for nine times as long as it took
///
/// let off = Vacuuming::new(0);
/// assert!(!off.claimed(1_000_000));
/// ```
#[derive(Debug)]
pub struct Vacuuming {
    every: AtomicU64,
    claimed: AtomicU64,
    duty: Duty,
    /// Whether the role may vacuum the table: [`MAY_UNKNOWN`] until asked.
    may: AtomicU8,
}

/// [`Vacuuming`] has not yet learned whether its role may vacuum the table.
const MAY_UNKNOWN: u8 = 0;
/// The role may vacuum the table.
const MAY: u8 = 1;
/// The role may not: the table is left to autovacuum.
const MAY_NOT: u8 = 2;

impl Default for Vacuuming {
    fn default() -> Self {
        Vacuuming::new(Vacuuming::DEFAULT_EVERY)
    }
}

impl Vacuuming {
    /// Claimed jobs between vacuums by default.
    pub const DEFAULT_EVERY: u64 = 10_000;

    /// Vacuums after every `every` claimed jobs; 0 never does.
    pub fn new(every: u64) -> Self {
        Vacuuming {
            every: AtomicU64::new(every),
            claimed: AtomicU64::new(0),
            duty: Duty::default(),
            may: AtomicU8::new(MAY_UNKNOWN),
        }
    }

    /// Changes how many claimed jobs come between vacuums; 0 stops vacuuming.
    pub fn set_every(&self, every: u64) {
        self.every.store(every, Ordering::Relaxed);
    }

    /// How many claimed jobs come between vacuums (0: never).
    pub fn every(&self) -> u64 {
        self.every.load(Ordering::Relaxed)
    }

    /// Counts `n` jobs just claimed. True means vacuum now: the caller then owns this vacuum
    /// and must call [`Vacuuming::finished`] once it has run, failed or not.
    pub fn claimed(&self, n: usize) -> bool {
        let every = self.every();
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        if every == 0 || n == 0 {
            return false;
        }
        let total = self
            .claimed
            .fetch_add(n, Ordering::Relaxed)
            .saturating_add(n);
        if total < every || !self.duty.start() {
            return false;
        }
        self.claimed.store(0, Ordering::Relaxed);
        true
    }

    /// Counts `n` jobs just claimed and, if that makes a vacuum due, runs the one `vacuum`
    /// returns in a task of its own on the current tokio runtime (outside one, it skips this
    /// vacuum), logging how it went. Before the first, it asks the question `may` returns
    /// ([`Statements::may_vacuum`]): if the answer is no, it vacuums no more. A store calls it
    /// after each claim, with closures that clone what they need only when a vacuum is due.
    pub fn after_claim<F, G>(
        self: &Arc<Self>,
        n: usize,
        vacuum: impl FnOnce() -> F,
        may: impl FnOnce() -> G,
    ) where
        F: std::future::Future<Output = Result<()>> + Send + 'static,
        G: std::future::Future<Output = Result<bool>> + Send + 'static,
    {
        if self.may.load(Ordering::Relaxed) == MAY_NOT || !self.claimed(n) {
            return;
        }
        let asking = (self.may.load(Ordering::Relaxed) == MAY_UNKNOWN).then(may);
        let pacer = self.clone();
        run_upkeep(self, "vacuum of the jobs table", move || {
            let vacuum = vacuum();
            async move {
                if let Some(asking) = asking {
                    let may = asking.await?;
                    pacer
                        .may
                        .store(if may { MAY } else { MAY_NOT }, Ordering::Relaxed);
                    if !may {
                        tracing::info!(
                            "the store's role does not own the jobs table, which PostgreSQL \
                             requires to vacuum it: left to autovacuum"
                        );
                        return Ok(());
                    }
                }
                vacuum.await
            }
        });
    }

    /// Ends the vacuum [`Vacuuming::claimed`] started, which took `took`.
    pub fn finished(&self, took: Duration) {
        self.duty.end(took.saturating_mul(9));
    }
}

impl Pacer for Vacuuming {
    fn finished(&self, took: Duration) {
        Vacuuming::finished(self, took);
    }
}

/// When a store checks its jobs table's planner statistics, and `ANALYZE`s the table if they
/// lag far behind it ([`Statements::analyze_if_stale`]): while it claims, at most once every
/// [`Analyzing::EVERY`], one check at a time, and never more than a tenth of the time (after a
/// check that took `d`, the next waits at least `9 × d`).
///
/// Why: a table's statistics come from `ANALYZE`, which autovacuum runs once enough rows have
/// changed, on its next visit to the database (`autovacuum_naptime`, 1 min by default, longer
/// when its workers are busy elsewhere). A table created empty and then filled — the first
/// backlog a new deployment queues, or a bulk load — has none until then (or only those taken
/// while it was empty), and PostgreSQL, guessing that few rows match the claim, plans it as a
/// scan of the whole backlog and a sort. The check is one catalog query; the `ANALYZE` it may
/// run samples at most 30,000 rows. The measurements are in `docs/design.md`, "Vacuum and
/// analyze pacing".
///
/// ```
/// use pq_api::postgres::Analyzing;
/// use std::time::Duration;
///
/// let a = Analyzing::new(true);
/// assert!(a.due()); // the first claim checks at once
/// assert!(!a.due()); // one check at a time
/// a.finished(Duration::from_millis(1));
/// assert!(!a.due()); // and then not again for a second
///
/// let off = Analyzing::new(false);
/// assert!(!off.due());
/// ```
#[derive(Debug)]
pub struct Analyzing {
    on: AtomicBool,
    duty: Duty,
}

impl Default for Analyzing {
    fn default() -> Self {
        Analyzing::new(true)
    }
}

impl Analyzing {
    /// The shortest time between two checks.
    pub const EVERY: Duration = Duration::from_secs(1);

    /// A pacer that checks (`on`) or never does.
    pub fn new(on: bool) -> Self {
        Analyzing {
            on: AtomicBool::new(on),
            duty: Duty::default(),
        }
    }

    /// Turns the checks on or off.
    pub fn set_on(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
    }

    /// Whether the checks are on.
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// True means check now: the caller then owns this check and must call
    /// [`Analyzing::finished`] once it has run, failed or not.
    pub fn due(&self) -> bool {
        self.is_on() && self.duty.start()
    }

    /// Starts the check `check` returns if one is due ([`Analyzing::due`]), as
    /// [`Vacuuming::after_claim`] starts a vacuum. A store calls it after each claim.
    pub fn after_claim<F>(self: &Arc<Self>, check: impl FnOnce() -> F)
    where
        F: std::future::Future<Output = Result<()>> + Send + 'static,
    {
        if self.due() {
            run_upkeep(self, "statistics check of the jobs table", check);
        }
    }

    /// Ends the check [`Analyzing::due`] started, which took `took`.
    pub fn finished(&self, took: Duration) {
        self.duty.end(took.saturating_mul(9).max(Self::EVERY));
    }
}

impl Pacer for Analyzing {
    fn finished(&self, took: Duration) {
        Analyzing::finished(self, took);
    }
}

/// When a store takes a rotation step of its jobs table's partitions
/// ([`Statements::rotate`]): after every [`Rotating::DEFAULT_EVERY`] jobs it puts or claims by
/// default, one step at a time per store, and never more than a tenth of the time.
///
/// Why: the jobs table is split into rotating partitions (`migration_11.sql`). A step truncates
/// each partition other than the current one that holds no job, which removes at once every row
/// version its jobs left, even while a transaction somewhere holds a snapshot that keeps
/// `VACUUM` from removing them; and once the current partition has grown to
/// [`Rotating::FULL_BYTES`], it makes the next one current. Claims then step over the versions
/// of at most the jobs of a few partitions, however long a snapshot is held. The measurements
/// are in `docs/design.md`, "Storage a held snapshot cannot slow".
///
/// ```
/// use pq_api::postgres::Rotating;
/// use std::time::Duration;
///
/// let r = Rotating::new(100);
/// assert!(!r.counted(60));
/// assert!(r.counted(60)); // 120 jobs: a step now
/// assert!(!r.counted(500)); // one at a time
/// r.finished(Duration::from_millis(1));
///
/// let off = Rotating::new(0);
/// assert!(!off.counted(1_000_000));
/// ```
#[derive(Debug)]
pub struct Rotating {
    every: AtomicU64,
    counted: AtomicU64,
    duty: Duty,
}

impl Default for Rotating {
    fn default() -> Self {
        Rotating::new(Rotating::DEFAULT_EVERY)
    }
}

impl Rotating {
    /// Jobs put or claimed between steps by default.
    pub const DEFAULT_EVERY: u64 = 2_000;
    /// The size of the current partition (its rows, not its indexes) at which the next one
    /// becomes current.
    pub const FULL_BYTES: i64 = 2 << 20;

    /// Takes a step after every `every` jobs put or claimed; 0 never does.
    pub fn new(every: u64) -> Self {
        Rotating {
            every: AtomicU64::new(every),
            counted: AtomicU64::new(0),
            duty: Duty::default(),
        }
    }

    /// Changes how many jobs come between steps; 0 stops them.
    pub fn set_every(&self, every: u64) {
        self.every.store(every, Ordering::Relaxed);
    }

    /// Counts `n` jobs just put or claimed. True means take a step now: the caller then owns
    /// it and must call [`Rotating::finished`] once it has run, failed or not.
    pub fn counted(&self, n: usize) -> bool {
        let every = self.every.load(Ordering::Relaxed);
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        if every == 0 || n == 0 {
            return false;
        }
        let total = self
            .counted
            .fetch_add(n, Ordering::Relaxed)
            .saturating_add(n);
        if total < every || !self.duty.start() {
            return false;
        }
        self.counted.store(0, Ordering::Relaxed);
        true
    }

    /// Counts `n` jobs and, if that makes a step due, runs the one `step` returns in a task of
    /// its own on the current tokio runtime (outside one, it skips this step).
    pub fn after_jobs<F>(self: &Arc<Self>, n: usize, step: impl FnOnce() -> F)
    where
        F: std::future::Future<Output = Result<()>> + Send + 'static,
    {
        if self.counted(n) {
            run_upkeep(self, "rotation of the jobs table's partitions", step);
        }
    }

    /// Ends the step [`Rotating::counted`] started, which took `took`.
    pub fn finished(&self, took: Duration) {
        self.duty.end(took.saturating_mul(9));
    }
}

impl Pacer for Rotating {
    fn finished(&self, took: Duration) {
        Rotating::finished(self, took);
    }
}

/// A SQL store's background upkeep of its jobs table, started after its claims and puts: the
/// vacuum ([`Vacuuming`]), the statistics check ([`Analyzing`]) and the rotation of its
/// partitions ([`Rotating`]).
#[derive(Debug, Default)]
pub struct Upkeep {
    /// When the store vacuums the table.
    pub vacuuming: Arc<Vacuuming>,
    /// When the store checks the table's statistics.
    pub analyzing: Arc<Analyzing>,
    /// When the store rotates the table's partitions.
    pub rotating: Arc<Rotating>,
}

impl Upkeep {
    /// After a claim of `claimed` jobs, starts what is due: the vacuum, the statistics check,
    /// each a statement of `sql` that `run` runs as a simple query on a connection of the
    /// store's own (not the claim's: that may be in a caller's transaction), and before the
    /// first vacuum, the question of [`Statements::may_vacuum`], which `ask` asks on a
    /// connection of the store's own and answers with the boolean it returns.
    pub fn after_claim<F, G>(
        &self,
        claimed: usize,
        sql: &Statements,
        run: impl Fn(&Arc<str>) -> F,
        ask: impl Fn(&Arc<str>) -> G,
    ) where
        F: std::future::Future<Output = Result<()>> + Send + 'static,
        G: std::future::Future<Output = Result<bool>> + Send + 'static,
    {
        if claimed == 0 {
            return;
        }
        self.vacuuming
            .after_claim(claimed, || run(&sql.vacuum), || ask(&sql.may_vacuum));
        self.analyzing.after_claim(|| run(&sql.analyze_if_stale));
        self.rotating.after_jobs(claimed, || run(&sql.rotate));
    }

    /// After a put of `put` jobs, starts a rotation step if one is due, run as
    /// [`Upkeep::after_claim`] runs its statements.
    pub fn after_put<F>(&self, put: usize, sql: &Statements, run: impl Fn(&Arc<str>) -> F)
    where
        F: std::future::Future<Output = Result<()>> + Send + 'static,
    {
        self.rotating.after_jobs(put, || run(&sql.rotate));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a test's verdict

    use super::*;
    use crate::error::Error;

    /// A due vacuum runs once (not again while it runs), and ends once it has run.
    #[tokio::test]
    async fn a_due_vacuum_runs_once_and_ends() {
        let pacer = Arc::new(Vacuuming::new(10));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..3 {
            let tx = tx.clone();
            pacer.after_claim(
                10,
                move || async move {
                    tx.send(()).unwrap();
                    Ok(())
                },
                || async { Ok(true) },
            );
        }
        rx.recv().await.unwrap();
        tokio::task::yield_now().await;
        assert!(rx.try_recv().is_err(), "only one vacuum at a time");
        assert!(!pacer.duty.is_busy(), "the vacuum ended");
    }

    /// Claims 10 jobs on `pacer` (due every 10), recording on `log` what ran: the question
    /// (answered `may`) and the vacuum; waits until the upkeep has ended and its wait is over.
    async fn due_vacuum(
        pacer: &Arc<Vacuuming>,
        may: Result<bool>,
        log: &tokio::sync::mpsc::UnboundedSender<&'static str>,
    ) {
        let (asked, vacuumed) = (log.clone(), log.clone());
        pacer.after_claim(
            10,
            move || async move {
                vacuumed.send("vacuum").unwrap();
                Ok(())
            },
            move || async move {
                asked.send("asked").unwrap();
                may
            },
        );
        while pacer.duty.is_busy() {
            tokio::task::yield_now().await;
        }
        // The wait after an upkeep is nine times as long as it took: microseconds here.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    fn drained(rx: &mut tokio::sync::mpsc::UnboundedReceiver<&'static str>) -> Vec<&'static str> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    /// The store asks once whether its role may vacuum; a role that may is not asked again.
    #[tokio::test]
    async fn a_role_that_may_vacuum_is_asked_once() {
        let pacer = Arc::new(Vacuuming::new(10));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        due_vacuum(&pacer, Ok(true), &tx).await;
        due_vacuum(&pacer, Ok(true), &tx).await;
        assert_eq!(drained(&mut rx), ["asked", "vacuum", "vacuum"]);
    }

    /// A role that may not vacuum the table never vacuums it, and is not asked again.
    #[tokio::test]
    async fn a_role_that_may_not_vacuum_never_does() {
        let pacer = Arc::new(Vacuuming::new(10));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..3 {
            due_vacuum(&pacer, Ok(false), &tx).await;
        }
        assert_eq!(drained(&mut rx), ["asked"]);
    }

    /// If the question fails, nothing is vacuumed, and it is asked again at the next vacuum due.
    #[tokio::test]
    async fn a_failed_question_is_asked_again() {
        let pacer = Arc::new(Vacuuming::new(10));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let gone = || Err(Error::Unavailable("connection lost".into()));
        due_vacuum(&pacer, gone(), &tx).await;
        due_vacuum(&pacer, Ok(true), &tx).await;
        assert_eq!(drained(&mut rx), ["asked", "asked", "vacuum"]);
    }

    /// A due statistics check runs once, and the next waits at least [`Analyzing::EVERY`].
    #[tokio::test]
    async fn a_due_statistics_check_runs_once_then_waits() {
        let pacer = Arc::new(Analyzing::new(true));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..3 {
            let tx = tx.clone();
            pacer.after_claim(move || async move {
                tx.send(()).unwrap();
                Ok(())
            });
        }
        rx.recv().await.unwrap();
        tokio::task::yield_now().await;
        assert!(rx.try_recv().is_err(), "only one check at a time");
        assert!(!pacer.duty.is_busy(), "the check ended");
        assert!(!pacer.due(), "and the next waits");
    }

    /// A vacuum whose task is dropped unfinished (its runtime shut down) still ends: the
    /// store vacuums again later.
    #[test]
    fn a_vacuum_dropped_unfinished_still_ends() {
        let pacer = Arc::new(Vacuuming::new(10));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            pacer.after_claim(10, std::future::pending::<Result<()>>, || async {
                Ok(true)
            });
        });
        assert!(pacer.duty.is_busy());
        drop(runtime);
        assert!(!pacer.duty.is_busy());
        // Outside a runtime a due vacuum is skipped, and ends at once.
        pacer.after_claim(10, || async { Ok(()) }, || async { Ok(true) });
        assert!(!pacer.duty.is_busy());
    }
}

//! The statements both SQL stores run, rendered once per configured table.
//!
//! Each statement is a `.sql` file of `postgres/sql/` whose header says what it takes and
//! returns: parameterised text with `$n` placeholders, and `{name}` placeholders for the
//! table's names, which come only from a validated [`QueueTable`] and are quoted in one place.
//! `pq-sqlx` and `pq-diesel` send these exact strings, so the two stores run byte-identical
//! SQL; `pq-api/tests/golden/statements.sql` holds them rendered for the default table.

use super::upkeep::Rotating;
#[cfg(doc)]
use super::upkeep::{Analyzing, Vacuuming};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::render::statement;
use super::rows::InsertArrays;
use super::table::QueueTable;

/// How many rendered claim texts [`Statements::claim`] keeps; past that it renders each
/// new one on every call.
pub const CLAIM_TEXTS_KEPT: usize = 256;
/// The statement files, each documented in its header.
mod files {
    pub(super) const STATE: &str = include_str!("sql/state.sql");
    pub(super) const JOB_COLUMNS: &str = include_str!("sql/job_columns.sql");
    pub(super) const FINISHED_COLUMNS: &str = include_str!("sql/finished_columns.sql");
    pub(super) const INSERT: &str = include_str!("sql/insert.sql");
    pub(super) const ON_CONFLICT_CURSOR: &str = include_str!("sql/on_conflict_cursor.sql");
    pub(super) const INSERT_UNIQUE: &str = include_str!("sql/insert_unique.sql");
    pub(super) const INSERT_HIDDEN: &str = include_str!("sql/insert_hidden.sql");
    pub(super) const NEXT_IN_GROUP: &str = include_str!("sql/next_in_group.sql");
    pub(super) const KEY_FREED_NOTIFY: &str = include_str!("sql/key_freed_notify.sql");
    pub(super) const CLAIM: &str = include_str!("sql/claim.sql");
    pub(super) const ROTATE: &str = include_str!("sql/rotate.sql");
    pub(super) const CLAIM_UNLIMITED: &str = include_str!("sql/claim_unlimited.sql");
    pub(super) const CLAIM_CANDIDATES: &str = include_str!("sql/claim_candidates.sql");
    pub(super) const CLAIM_TAKE: &str = include_str!("sql/claim_take.sql");
    pub(super) const LEASE_CANCELLED: &str = include_str!("sql/lease_cancelled.sql");
    pub(super) const PROGRESS: &str = include_str!("sql/progress.sql");
    pub(super) const CONFIGURE_QUEUE: &str = include_str!("sql/configure_queue.sql");
    pub(super) const QUEUE_CONFIGS: &str = include_str!("sql/queue_configs.sql");
    pub(super) const QUEUE_COUNTS: &str = include_str!("sql/queue_counts.sql");
    pub(super) const PRUNE_JOBS: &str = include_str!("sql/prune_jobs.sql");
    pub(super) const PRUNE_KEYS: &str = include_str!("sql/prune_keys.sql");
    pub(super) const REVEAL: &str = include_str!("sql/reveal.sql");
    pub(super) const COMPLETE: &str = include_str!("sql/complete.sql");
    pub(super) const FAIL: &str = include_str!("sql/fail.sql");
    pub(super) const EXTEND: &str = include_str!("sql/extend.sql");
    pub(super) const RELEASE: &str = include_str!("sql/release.sql");
    pub(super) const CANCEL: &str = include_str!("sql/cancel.sql");
    pub(super) const SHOW_NEXT: &str = include_str!("sql/show_next.sql");
    pub(super) const RETRY: &str = include_str!("sql/retry.sql");
    pub(super) const JOB: &str = include_str!("sql/job.sql");
    pub(super) const LIST_JOBS: &str = include_str!("sql/list_jobs.sql");
    pub(super) const RECORD_THROUGHPUT: &str = include_str!("sql/record_throughput.sql");
    pub(super) const THROUGHPUT: &str = include_str!("sql/throughput.sql");
    pub(super) const PRUNE_THROUGHPUT: &str = include_str!("sql/prune_throughput.sql");
    pub(super) const STATS: &str = include_str!("sql/stats.sql");
    pub(super) const PURGE: &str = include_str!("sql/purge.sql");
    pub(super) const KEY_STATE: &str = include_str!("sql/key_state.sql");
    pub(super) const FINISHED: &str = include_str!("sql/finished.sql");
    pub(super) const HISTORY: &str = include_str!("sql/history.sql");
    pub(super) const CLEANUP_HISTORY: &str = include_str!("sql/cleanup_history.sql");
    pub(super) const NEXT_RUN: &str = include_str!("sql/next_run.sql");
    pub(super) const LISTEN: &str = include_str!("sql/listen.sql");
    pub(super) const VACUUM: &str = include_str!("sql/vacuum.sql");
    pub(super) const MAY_VACUUM: &str = include_str!("sql/may_vacuum.sql");
    pub(super) const ANALYZE_IF_STALE: &str = include_str!("sql/analyze_if_stale.sql");
}

/// The part of `file` named `name`: the lines after its `-- name:` comment line, up to the
/// next part's (comment lines within a part are kept for [`statement`] to drop).
fn part(file: &str, name: &str) -> String {
    let head = format!("-- {name}:");
    let is_head = |l: &str| {
        let l = l.trim_start();
        l.starts_with("-- ")
            && l[3..].split_once(':').is_some_and(|(n, _)| {
                !n.is_empty() && n.chars().all(|c| c == '_' || c.is_ascii_lowercase())
            })
    };
    let mut out = String::new();
    let mut inside = false;
    for line in file.lines() {
        if is_head(line) {
            inside = line.trim_start().starts_with(&head);
            continue;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Rendered claim texts by limit, lease µs and how the claim commits, then by queues.
type ClaimTexts = HashMap<(u32, i64, Commit, Limits), Vec<(Vec<String>, Arc<str>)>>;

/// Which claim a text is: [`Statements::claim`] or [`Statements::claim_unlimited`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Limits {
    /// `claim.sql`: keeps the queues' limits.
    Kept,
    /// `claim_unlimited.sql`: for queues without limits.
    None,
}

/// How a claim's transaction commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Commit {
    /// Without waiting for the WAL to reach the disk: the claim is the whole transaction.
    Async,
    /// As the caller's transaction is set to: the claim is one statement of it.
    AsSet,
}

/// Put in place of the claim's ` {commit}` for [`Commit::Async`]: the claim's own
/// transaction commits without waiting for its WAL flush. A one-time filter, evaluated once
/// per claim.
const ASYNC_COMMIT: &str =
    " WHERE (SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL";

/// Every statement pq runs against one [`QueueTable`]. Cheap to clone.
///
/// Parameters (all typed explicitly in the text, so the drivers need no inference):
/// see each field's doc.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Statements {
    /// The insert for rows without cursor keys: see [`Statements::insert`].
    insert_plain: Arc<str>,
    /// The insert for rows with serial keys, some sharing one: see [`Statements::insert`].
    insert_serial: Arc<str>,
    /// The insert for rows with cursor keys: see [`Statements::insert`].
    insert_cursor: Arc<str>,
    /// The insert with rows with uniqueness keys, and with cursor keys too.
    insert_unique: Arc<str>,
    insert_cursor_unique: Arc<str>,
    /// The claim, with `{queues}`, `{limit}` and `{commit}` still to fill in: see
    /// [`Statements::claim`].
    claim: Arc<str>,
    /// The claim for queues without limits, with the same still to fill in: see
    /// [`Statements::claim_unlimited`].
    claim_unlimited: Arc<str>,
    /// Claim texts already filled in; shared by clones.
    claims: Arc<Mutex<ClaimTexts>>,
    /// `$1 int8[]` ids, `$2 int8[]` tokens, `$3 text[]` results (JSON or null), `$4 text[]` key
    /// states (JSON or null) → `id` of each completed job.
    pub complete: Arc<str>,
    /// `$1 int8` id, `$2 int8` token, `$3 timestamptz` retry_at, `$4 int8` retry_in µs,
    /// `$5 text` error, `$6 bool` retry (false: give up) → `state`.
    pub fail: Arc<str>,
    /// `$1 int8` id, `$2 int8` token, `$3 int8` lease µs → `run_at`.
    pub extend: Arc<str>,
    /// `$1 int8` id, `$2 int8` token, `$3 int8` delay µs → `id`: hands the job back, its
    /// attempt not counted, claimable after the delay (0 for a release).
    pub release: Arc<str>,
    /// `$1 int8` id → `state` (row absent: unknown id); removes the job unless running, else
    /// marks it cancelled and notifies its holder.
    pub cancel: Arc<str>,
    /// `$1 int8` id, `$2 int8` token → `cancelled bool` (row absent: the job is gone).
    pub lease_cancelled: Arc<str>,
    /// `$1 int8` id, `$2 int8` token, `$3 text` progress (JSON) → `id`.
    pub progress: Arc<str>,
    /// `$1 text` queue, `$2 int4` which setting (1 paused, 2 concurrency, 3 rate,
    /// 4 retention), `$3 bool` paused, `$4 int8` limit or retention µs (0: none), `$5 int8`
    /// rate period µs → `n int8`.
    pub configure_queue: Arc<str>,
    /// → `row text` per queue with settings: a JSON array `[queue, paused, concurrency, rate,
    /// rate_per µs, retention µs]` (0: none).
    pub queue_configs: Arc<str>,
    /// → `row text` per queue and state present: a JSON array `[queue, state, n, age µs]`,
    /// the age being the time since the earliest `run_at` (for ready jobs, how long the
    /// oldest has been claimable).
    pub queue_counts: Arc<str>,
    /// `$1 int8` the store's retention µs, `$2 int8` at most so many → `n int8`, the failed
    /// and cancelled jobs removed.
    pub prune_jobs: Arc<str>,
    /// `$1 int4` at most so many → `n int8`, the idle key records removed.
    pub prune_keys: Arc<str>,
    /// `$1 int4` at most → `n int8`: shows the first queued job of keys whose first queued
    /// job is hidden (left so only by plain SQL; see `reveal.sql`).
    pub reveal: Arc<str>,
    /// `$1 int8` id → `state` (row absent: unknown id); restarts the job if failed.
    pub retry: Arc<str>,
    /// `$1 int8` id → a job row.
    pub job: Arc<str>,
    /// `$1 text` queue (`''`: any), `$2 text` state (`''`: any), `$3 int8` ids below it,
    /// `$4 int8` at most so many → job rows, newest first.
    pub list_jobs: Arc<str>,
    /// `$1 text[]` queues, `$2 int8[]` completed, `$3 int8[]` failed → `n int8` per record
    /// written: adds to the current minute's throughput records.
    pub record_throughput: Arc<str>,
    /// `$1 int8` µs back → `row text` per minute and queue: a JSON array `[queue, minute µs
    /// since the epoch, completed, failed]`, oldest first.
    pub throughput: Arc<str>,
    /// `$1 int8` µs → `n int8`, the throughput records older than that removed.
    pub prune_throughput: Arc<str>,
    /// `$1 text` queue → `state`, `n int8` per state present.
    pub stats: Arc<str>,
    /// `$1 text` queue → `n int8`, the number purged.
    pub purge: Arc<str>,
    /// `$1 text` queue, `$2 text` key → `state text` (row absent: unknown key).
    pub key_state: Arc<str>,
    /// `$1 int8` id → a history row.
    pub finished: Arc<str>,
    /// `$1 text` queue, `$2 int8` limit → history rows, most recent first.
    pub history: Arc<str>,
    /// → `n int8`, the number of expired history rows removed.
    pub cleanup_history: Arc<str>,
    /// The earliest claim time, with `{queues}` still to fill in: see [`Statements::next_run`].
    next_run: Arc<str>,
    /// `LISTEN` on this table's channel (no parameters).
    pub listen: Arc<str>,
    /// `VACUUM` of the jobs table and its indexes, skipped if another vacuum of it is running
    /// (no parameters; run outside a transaction, as a simple query). See [`Vacuuming`].
    pub vacuum: Arc<str>,
    /// Whether the role may vacuum the jobs table, as its owner (or a member of the owner's
    /// role) → one row, `may bool`. Without that PostgreSQL skips a `VACUUM` with a warning.
    /// See [`Vacuuming`].
    pub may_vacuum: Arc<str>,
    /// `ANALYZE` of the jobs table if its planner statistics lag far behind it: none yet, or
    /// under half the rows it holds, with over 1,000 held; skipped if the role does not own
    /// the table (no parameters; a simple query). See [`Analyzing`].
    pub analyze_if_stale: Arc<str>,
    /// One rotation step of the jobs table's partitions → `n int4`, the partitions emptied
    /// (no parameters; a simple query). See [`Rotating`].
    pub rotate: Arc<str>,
}

impl Statements {
    /// The claim of at most `limit` jobs from `queues` (distinct queue names), each leased for
    /// `lease` under one new token drawn by the server → job rows plus `key_state text`, in
    /// claim order. The statement takes no parameters.
    ///
    /// The queues, the limit and the lease are written into the text rather than bound, and
    /// the token is drawn by the statement itself. PostgreSQL plans a prepared statement that
    /// has parameters afresh for each execution (a custom plan) until a plan for any values
    /// (the generic plan) looks no costlier than the custom plans so far; a claim prepared
    /// while its table was small keeps that small cost in its record, so once a backlog grew
    /// the claim was planned on every execution (about as long as running it). A statement
    /// without parameters has one plan, made again only when the table's statistics change.
    /// A worker claims with few distinct limits (up to its concurrency) and one lease, so few
    /// distinct texts are prepared. See `docs/design.md`, "Claim plans".
    ///
    /// The texts are kept (up to [`CLAIM_TEXTS_KEPT`] of them, shared by clones), so a claim
    /// does not render its statement again.
    ///
    /// This text is for a claim that is a transaction of its own (a store's
    /// [`QueueStore::claim`](crate::QueueStore::claim)): it sets `synchronous_commit` off for
    /// that transaction, so PostgreSQL acknowledges the claim without waiting for its WAL to be
    /// flushed to disk. Nothing is lost by that but the claim itself, and only if the server
    /// crashes before the WAL is flushed (within a few hundred milliseconds, or sooner by
    /// any later synchronous commit, such as the job's completion): the job is then queued
    /// again, unclaimed, and runs again, as it would had its lease expired — the queue's
    /// at-least-once promise. Completions, puts and failures stay synchronous. For a claim
    /// inside a transaction of the caller's, use [`Statements::claim_in_transaction`], which
    /// leaves that transaction's commit as it is.
    ///
    /// ```
    /// use std::time::Duration;
    /// use pq_api::postgres::{QueueTable, Statements};
    /// let sql = Statements::new(&QueueTable::default());
    /// let queues = ["emails".to_string()];
    /// let text = sql.claim(&queues, 32, Duration::from_secs(30));
    /// assert!(text.contains("LIMIT 32"));
    /// assert!(text.contains("E'emails'"));
    /// assert!(text.contains("synchronous_commit"));
    /// assert!(!text.contains("$1"));
    /// assert!(std::sync::Arc::ptr_eq(&text, &sql.claim(&queues, 32, Duration::from_secs(30))));
    /// ```
    pub fn claim(&self, queues: &[String], limit: u32, lease: Duration) -> Arc<str> {
        self.claim_text(queues, limit, lease, Commit::Async, Limits::Kept)
    }

    /// The claim of [`Statements::claim`] for queues without limits: it claims the same jobs,
    /// but neither locks, counts nor takes a limited queue's places, and is planned in half
    /// the time. Should a queue it claims from have a concurrency or rate limit, it claims
    /// nothing and returns one marker row: id 0, no lease token (see
    /// [`Statements::is_limited_marker`]); the caller then claims with [`Statements::claim`].
    ///
    /// `in_transaction` chooses the commit as [`Statements::claim_in_transaction`] does.
    ///
    /// ```
    /// use std::time::Duration;
    /// use pq_api::postgres::{QueueTable, Statements};
    /// let sql = Statements::new(&QueueTable::default());
    /// let text = sql.claim_unlimited(&["q".to_string()], 8, Duration::from_secs(30), false);
    /// assert!(text.contains("LIMIT 8"));
    /// assert!(!text.contains("_slots"));
    /// assert!(text.contains("synchronous_commit"));
    /// ```
    pub fn claim_unlimited(
        &self,
        queues: &[String],
        limit: u32,
        lease: Duration,
        in_transaction: bool,
    ) -> Arc<str> {
        let commit = if in_transaction {
            Commit::AsSet
        } else {
            Commit::Async
        };
        self.claim_text(queues, limit, lease, commit, Limits::None)
    }

    /// Whether a row of [`Statements::claim_unlimited`] (its id and lease token) is the marker
    /// saying a queue claimed from has limits.
    pub fn is_limited_marker(id: i64, token: Option<i64>) -> bool {
        id == 0 && token.is_none()
    }

    /// The claim of [`Statements::claim`] for a statement inside a transaction of the
    /// caller's (a store's `claim_in`): the same text without the asynchronous commit, so the
    /// caller's transaction commits as the caller has set it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use pq_api::postgres::{QueueTable, Statements};
    /// let sql = Statements::new(&QueueTable::default());
    /// let text = sql.claim_in_transaction(&["q".to_string()], 32, Duration::from_secs(30));
    /// assert!(text.contains("LIMIT 32"));
    /// assert!(!text.contains("synchronous_commit"));
    /// ```
    pub fn claim_in_transaction(&self, queues: &[String], limit: u32, lease: Duration) -> Arc<str> {
        self.claim_text(queues, limit, lease, Commit::AsSet, Limits::Kept)
    }

    fn claim_text(
        &self,
        queues: &[String],
        limit: u32,
        lease: Duration,
        commit: Commit,
        limits: Limits,
    ) -> Arc<str> {
        let lease_us = i64::try_from(lease.as_micros()).unwrap_or(i64::MAX);
        let key = (limit, lease_us, commit, limits);
        let mut kept = self.claims.lock().unwrap_or_else(PoisonError::into_inner);
        let found = kept
            .get(&key)
            .and_then(|texts| texts.iter().find(|(q, _)| q.as_slice() == queues));
        if let Some((_, text)) = found {
            return text.clone();
        }
        let commit_filter = match commit {
            Commit::Async => ASYNC_COMMIT,
            Commit::AsSet => "",
        };
        let template = match limits {
            Limits::Kept => &self.claim,
            Limits::None => &self.claim_unlimited,
        };
        let text: Arc<str> = Arc::from(
            template
                .replace("{queues}", &queue_literals(queues))
                .replace("{limit}", &limit.to_string())
                .replace("{lease}", &lease_us.to_string())
                .replace(" {commit}", commit_filter),
        );
        if kept.values().map(Vec::len).sum::<usize>() < CLAIM_TEXTS_KEPT {
            kept.entry(key)
                .or_default()
                .push((queues.to_vec(), text.clone()));
        }
        text
    }

    /// The insert of `rows`: `$1 text[]` queue, `$2 text[]` payload, `$3 int4[]` priority,
    /// `$4 timestamptz[]` run_at, `$5 int8[]` run_in µs, `$6 timestamptz[]` expected_at,
    /// `$7 int8[]` expected_in µs, `$8 int4[]` max_attempts, `$9 text[]` key, `$10 bool[]`
    /// cursor, `$11 int8[]` keep_for µs → `id int8, cursor bool, queue text, key text` per row,
    /// in no promised order (see [`InsertArrays::ids`]). A cursor-keyed row whose key has a
    /// pending job returns that job's id instead of inserting.
    ///
    /// Rows with serial keys, two or more of them sharing one (and none with a cursor or
    /// uniqueness key), get a statement that hides each row behind an earlier one of its key
    /// (`insert_hidden.sql`), so that a claim does not walk a key's backlog; the others do not
    /// pay for working that out.
    ///
    /// Rows without cursor keys get a statement without `ON CONFLICT`: with it, PostgreSQL
    /// inserts every row speculatively (an extra WAL record and lock per row, whether or not
    /// the row can conflict), a measurable part of a large insert's server time.
    pub fn insert(&self, rows: &InsertArrays) -> &Arc<str> {
        let unique = rows.unique_key.iter().any(Option::is_some);
        match (rows.cursor.contains(&true), unique) {
            (false, false) if shares_a_key(rows) => &self.insert_serial,
            (false, false) => &self.insert_plain,
            (true, false) => &self.insert_cursor,
            (false, true) => &self.insert_unique,
            (true, true) => &self.insert_cursor_unique,
        }
    }

    /// When a job of `queues` queues may next be claimable: `$1 text[]` the queues (exactly
    /// `queues` of them) → `next_at timestamptz` (null: nothing pending, or only a time no
    /// driver can decode, left by a row written before pq's checks), `now timestamptz`.
    ///
    /// The queue count is written into the text for the reason given at
    /// [`Statements::claim`]: bound as a whole array, PostgreSQL planned this statement afresh
    /// on every call, several times longer than running it, and a worker runs it each time it
    /// goes idle.
    pub fn next_run(&self, queues: usize) -> String {
        self.next_run.replace("{queues}", &queue_values(queues))
    }

    /// Every statement by name, rendered: both inserts, the claims for one and two queues
    /// (asynchronous and in a transaction, limit 32), the wait for one and two queues, and
    /// the rest. What the golden file (`pq-api/tests/golden/statements.sql`) holds for the
    /// default table, so that a change to any text shows in review.
    pub fn all(&self) -> Vec<(String, Arc<str>)> {
        let mut all: Vec<(String, Arc<str>)> = vec![
            ("insert".into(), self.insert_plain.clone()),
            (
                "insert, serial keys shared".into(),
                self.insert_serial.clone(),
            ),
            ("insert, cursor keys".into(), self.insert_cursor.clone()),
            ("insert, uniqueness keys".into(), self.insert_unique.clone()),
            (
                "insert, cursor and uniqueness keys".into(),
                self.insert_cursor_unique.clone(),
            ),
        ];
        let lease = crate::DEFAULT_LEASE;
        for queues in [&["q"][..], &["q", "it's"][..]] {
            let queues: Vec<String> = queues.iter().map(|q| q.to_string()).collect();
            let n = queues.len();
            all.push((
                format!("claim, {n} queue(s), limit 32"),
                self.claim(&queues, 32, lease),
            ));
            all.push((
                format!("claim in a transaction, {n} queue(s), limit 32"),
                self.claim_in_transaction(&queues, 32, lease),
            ));
        }
        for queues in [1, 2] {
            all.push((
                format!("next run, {queues} queue(s)"),
                Arc::from(self.next_run(queues)),
            ));
        }
        let named = [
            ("complete", &self.complete),
            ("fail", &self.fail),
            ("extend", &self.extend),
            ("release", &self.release),
            ("cancel", &self.cancel),
            ("lease cancelled", &self.lease_cancelled),
            ("progress", &self.progress),
            ("configure queue", &self.configure_queue),
            ("queue configs", &self.queue_configs),
            ("queue counts", &self.queue_counts),
            ("prune jobs", &self.prune_jobs),
            ("prune keys", &self.prune_keys),
            ("reveal", &self.reveal),
            ("retry", &self.retry),
            ("job", &self.job),
            ("list jobs", &self.list_jobs),
            ("record throughput", &self.record_throughput),
            ("throughput", &self.throughput),
            ("prune throughput", &self.prune_throughput),
            ("stats", &self.stats),
            ("purge", &self.purge),
            ("key state", &self.key_state),
            ("finished", &self.finished),
            ("history", &self.history),
            ("cleanup history", &self.cleanup_history),
            ("listen", &self.listen),
            ("vacuum", &self.vacuum),
            ("may vacuum", &self.may_vacuum),
            ("analyze if stale", &self.analyze_if_stale),
        ];
        all.extend(named.into_iter().map(|(n, t)| (n.to_string(), t.clone())));
        all
    }

    /// Renders every statement for `table`, from the files of `postgres/sql/`.
    pub fn new(table: &QueueTable) -> Self {
        use files::*;
        let jobs = table.qualified();
        let keys = table.object(&format!("{}_keys", table.table()));
        let history = table.object(&format!("{}_history", table.table()));
        let unique = table.object(&format!("{}_unique", table.table()));
        let unique_fn = table.object(&format!("{}_unique_holders", table.table()));
        let queues_table = table.object(&format!("{}_queues", table.table()));
        let slots = table.object(&format!("{}_slots", table.table()));
        let sweep_keys_fn = table.object(&format!("{}_sweep_keys", table.table()));
        let throughput = table.object(&format!("{}_throughput", table.table()));
        let rotation = table.object(&format!("{}_rotation", table.table()));
        let rotate_fn = table.object(&format!("{}_rotate", table.table()));
        let full_bytes = Rotating::FULL_BYTES.to_string();
        let channel_name = table.channel();
        let channel = format!("\"{channel_name}\"");
        let state = statement(STATE, &[]);
        let job_columns = statement(JOB_COLUMNS, &[("state", &state)]);
        let claim_columns = statement(JOB_COLUMNS, &[("state", "'running'")]);
        let finished_columns = statement(FINISHED_COLUMNS, &[]);
        let on_conflict = statement(ON_CONFLICT_CURSOR, &[]);
        let vars = [
            ("jobs", jobs.as_str()),
            ("keys", keys.as_str()),
            ("history", history.as_str()),
            ("unique", unique.as_str()),
            ("unique_fn", unique_fn.as_str()),
            ("queues_table", queues_table.as_str()),
            ("slots", slots.as_str()),
            ("sweep_keys_fn", sweep_keys_fn.as_str()),
            ("throughput", throughput.as_str()),
            ("rotation", rotation.as_str()),
            ("rotate_fn", rotate_fn.as_str()),
            ("full_bytes", full_bytes.as_str()),
            ("channel", channel.as_str()),
            ("channel_name", channel_name.as_str()),
            ("state", state.as_str()),
            ("job_columns", job_columns.as_str()),
            ("claim_columns", claim_columns.as_str()),
            ("finished_columns", finished_columns.as_str()),
        ];
        let next_in_group = statement(NEXT_IN_GROUP, &vars);
        let mut with_next = vars.to_vec();
        with_next.push(("next_in_group", next_in_group.as_str()));
        let key_freed_notify = statement(KEY_FREED_NOTIFY, &vars);
        let mut with_notify = vars.to_vec();
        with_notify.push(("key_freed_notify", key_freed_notify.as_str()));
        // The statements that end a job's turn, each showing the next of its group from its
        // own CTE of ended jobs.
        let ending = |file: &str, ended: &str| -> Arc<str> {
            let mut with = with_next.clone();
            with.push(("ended", ended));
            let shown = statement(SHOW_NEXT, &with);
            let mut with = with_notify.clone();
            with.push(("shown", shown.as_str()));
            Arc::from(statement(file, &with))
        };
        let s = |file: &str| -> Arc<str> { Arc::from(statement(file, &vars)) };
        let candidates = statement(CLAIM_CANDIDATES, &with_next);
        let take = statement(CLAIM_TAKE, &with_next);
        let mut claim_vars = with_next.clone();
        claim_vars.push(("candidates", candidates.as_str()));
        claim_vars.push(("take", take.as_str()));
        let unique_parts: Vec<(&str, String)> = ["held", "unique_filter", "periods", "refused"]
            .into_iter()
            .map(|name| {
                let text = statement(&part(INSERT_UNIQUE, name), &vars);
                (name, format!("\n{text}\n"))
            })
            .collect();
        let hiding = statement(&part(INSERT_HIDDEN, "hiding"), &vars);
        let window = statement(&part(INSERT_HIDDEN, "window"), &vars);
        let insert = |on_conflict: &str, unique: bool, hide: bool| -> Arc<str> {
            let mut with = vars.to_vec();
            with.push(("on_conflict", on_conflict));
            with.push((
                "hiding",
                if hide {
                    hiding.as_str()
                } else {
                    "false, false"
                },
            ));
            with.push(("window", if hide { window.as_str() } else { "" }));
            for (name, text) in &unique_parts {
                with.push((name, if unique { text.as_str() } else { "" }));
            }
            Arc::from(statement(INSERT, &with))
        };
        Statements {
            insert_plain: insert("", false, false),
            insert_serial: insert("", false, true),
            insert_cursor: insert(&on_conflict, false, false),
            insert_unique: insert("", true, false),
            insert_cursor_unique: insert(&on_conflict, true, false),
            claim: Arc::from(statement(CLAIM, &claim_vars)),
            claim_unlimited: Arc::from(statement(CLAIM_UNLIMITED, &claim_vars)),
            claims: Arc::default(),
            complete: ending(COMPLETE, "done"),
            fail: ending(FAIL, "f"),
            extend: s(EXTEND),
            release: ending(RELEASE, "r"),
            cancel: ending(CANCEL, "target"),
            lease_cancelled: s(LEASE_CANCELLED),
            progress: s(PROGRESS),
            configure_queue: s(CONFIGURE_QUEUE),
            queue_configs: s(QUEUE_CONFIGS),
            queue_counts: s(QUEUE_COUNTS),
            prune_jobs: s(PRUNE_JOBS),
            prune_keys: s(PRUNE_KEYS),
            reveal: s(REVEAL),
            retry: s(RETRY),
            job: s(JOB),
            list_jobs: s(LIST_JOBS),
            record_throughput: s(RECORD_THROUGHPUT),
            throughput: s(THROUGHPUT),
            prune_throughput: s(PRUNE_THROUGHPUT),
            stats: s(STATS),
            purge: s(PURGE),
            key_state: s(KEY_STATE),
            finished: s(FINISHED),
            history: s(HISTORY),
            cleanup_history: s(CLEANUP_HISTORY),
            next_run: s(NEXT_RUN),
            listen: s(LISTEN),
            vacuum: s(VACUUM),
            may_vacuum: s(MAY_VACUUM),
            analyze_if_stale: s(ANALYZE_IF_STALE),
            rotate: s(ROTATE),
        }
    }
}

/// How long a transactional handler's transaction may sit idle before the server ends it,
/// unless the handler sets another bound ([`begin_bounded`]).
pub const HANDLER_IDLE_TIMEOUT: Duration = crate::DEFAULT_LEASE;

/// The `BEGIN` of a transactional handler's transaction (one simple-protocol batch): the
/// server ends the transaction, and its session, once it has sat idle for `idle` (at least
/// 1 ms). A worker cut off from the database, stopped or killed mid-handler then cannot
/// leave the job's row locked, skipped by every claim, for as long as the server takes to
/// notice the client is gone (hours, with TCP keepalive's defaults).
///
/// ```
/// let sql = pq_api::postgres::begin_bounded(std::time::Duration::from_secs(30));
/// assert_eq!(sql, "BEGIN; SET LOCAL idle_in_transaction_session_timeout = 30000");
/// ```
pub fn begin_bounded(idle: Duration) -> String {
    let ms = idle.as_millis().clamp(1, i32::MAX as u128);
    format!("BEGIN; SET LOCAL idle_in_transaction_session_timeout = {ms}")
}

/// Whether two or more of `rows` share a serial key in one queue.
fn shares_a_key(rows: &InsertArrays) -> bool {
    let mut seen = std::collections::HashSet::new();
    rows.key
        .iter()
        .zip(&rows.queue)
        .filter_map(|(key, queue)| key.as_deref().map(|k| (queue.as_str(), k)))
        .any(|pair| !seen.insert(pair))
}

/// `(E'a'), (E'b'), …`: `queues` as VALUES rows of string literals (at least one). An
/// escape string literal reads the same whatever `standard_conforming_strings` is set to:
/// its quotes and backslashes are doubled.
fn queue_literals(queues: &[String]) -> String {
    if queues.is_empty() {
        return "(NULL::text)".to_string();
    }
    let values: Vec<String> = queues
        .iter()
        .map(|q| format!("(E'{}'::text)", q.replace('\\', "\\\\").replace('\'', "''")))
        .collect();
    values.join(", ")
}

/// `(($1::text[])[1]), (($1::text[])[2]), …`: the first `queues` elements of `$1` as VALUES
/// rows (at least one).
fn queue_values(queues: usize) -> String {
    let values: Vec<String> = (1..=queues.max(1))
        .map(|i| format!("(($1::text[])[{i}])"))
        .collect();
    values.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_texts_kept_stay_bounded_whatever_the_leases() {
        let sql = Statements::new(&QueueTable::default());
        let queues = ["q".to_string()];
        for ms in 1..=300 {
            sql.claim(&queues, 1, Duration::from_millis(ms));
        }
        let kept = sql.claims.lock().unwrap_or_else(PoisonError::into_inner);
        assert_eq!(kept.values().map(Vec::len).sum::<usize>(), CLAIM_TEXTS_KEPT);
        assert_eq!(kept.len(), CLAIM_TEXTS_KEPT);
    }
}

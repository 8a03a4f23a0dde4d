//! The PostgreSQL statements both SQL stores run, rendered once per configured table.
//!
//! Every statement is parameterised text with `$n` placeholders; identifiers come only from
//! a validated [`QueueTable`] and are quoted here, in one place. `pq-sqlx` and `pq-diesel`
//! send these exact strings, so the two stores run byte-identical SQL.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::job::{ClaimedJob, Done, FinishedJob, Job, JobId, JobState, Lease};

/// How many rendered claim texts [`Statements::claim`] keeps; past that it renders each
/// new one on every call.
pub const CLAIM_TEXTS_KEPT: usize = 256;

/// Longest schema name (PostgreSQL's identifier limit).
pub const MAX_SCHEMA_LEN: usize = 63;
/// Longest table name: shorter than PostgreSQL's limit because pq derives index, function and
/// migration-table names from it.
pub const MAX_TABLE_LEN: usize = 48;

/// The schema and table that hold the jobs. Names are plain lowercase SQL identifiers
/// (`[a-z_][a-z0-9_]*`), validated on construction, so nothing hostile reaches SQL text.
///
/// ```
/// use pq_api::sql::QueueTable;
/// let t = QueueTable::new("billing", "jobs")?;
/// assert_eq!(t.qualified(), "\"billing\".\"jobs\"");
/// assert!(QueueTable::new("public", "jobs; DROP TABLE users").is_err());
/// assert!(QueueTable::new("information_schema", "jobs").is_err());
/// # Ok::<(), pq_api::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueTable {
    schema: String,
    table: String,
}

impl Default for QueueTable {
    /// `public.pq_jobs`.
    fn default() -> Self {
        QueueTable {
            schema: "public".into(),
            table: "pq_jobs".into(),
        }
    }
}

impl QueueTable {
    /// Names the table `schema.table`, rejecting anything but plain identifiers.
    pub fn new(schema: &str, table: &str) -> Result<Self> {
        validate_identifier("schema name", schema, MAX_SCHEMA_LEN)?;
        validate_identifier("table name", table, MAX_TABLE_LEN)?;
        if schema.starts_with("pg_") || schema == "information_schema" {
            return Err(Error::invalid(
                "schema name",
                format!(
                    "{schema:?} is PostgreSQL's own (pg_* and information_schema are reserved)"
                ),
            ));
        }
        Ok(QueueTable {
            schema: schema.into(),
            table: table.into(),
        })
    }

    /// The schema name.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// `"schema"."table"`, quoted.
    pub fn qualified(&self) -> String {
        self.object(&self.table)
    }

    fn object(&self, name: &str) -> String {
        format!("{}.{}", quote(&self.schema), quote(name))
    }

    /// The LISTEN/NOTIFY channel of this table: short, and distinct per schema and table.
    pub fn channel(&self) -> String {
        format!("pq_{:016x}", self.hash())
    }

    /// The advisory-lock key that serialises migrations of this table.
    pub fn lock_key(&self) -> i64 {
        i64::from_ne_bytes(self.hash().to_ne_bytes())
    }

    /// FNV-1a of `schema.table`: stable across processes and versions, unlike `DefaultHasher`.
    fn hash(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.schema.bytes().chain([b'.']).chain(self.table.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    }
}

fn validate_identifier(what: &'static str, name: &str, max: usize) -> Result<()> {
    if name.is_empty() || name.len() > max {
        return Err(Error::invalid(
            what,
            format!("must be 1 to {max} characters"),
        ));
    }
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Err(Error::invalid(
            what,
            format!("{name:?} is not a plain lowercase identifier ([a-z_][a-z0-9_]*)"),
        ));
    }
    Ok(())
}

/// Quotes an identifier. Validated names never contain `"`, but quoting keeps reserved words
/// (`user`, `order`) usable.
fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The job's state as the contract defines it, from the stored columns at `statement_timestamp()`.
const STATE_EXPR: &str = "CASE WHEN state = 'failed' THEN 'failed' \
     WHEN state = 'running' AND run_at > statement_timestamp() THEN 'running' \
     WHEN attempts >= max_attempts THEN 'failed' \
     WHEN run_at > statement_timestamp() THEN 'scheduled' \
     ELSE 'ready' END";

/// The columns of a job row, in the order [`JobRow`] is decoded.
const JOB_COLUMNS: &str = "id, queue, payload::text AS payload, priority, expected_at, run_at, \
     {state} AS state, attempts, max_attempts, last_error, created_at, lease_token, key, cursor, \
     keep_for";

/// The columns of a history row, in the order [`FinishedRow`] is decoded.
const FINISHED_COLUMNS: &str = "id, queue, payload::text AS payload, key, cursor, priority, \
     attempts, result::text AS result, created_at, finished_at, keep_until";

/// Rendered claim texts by queue count, limit and how the claim commits.
type ClaimTexts = HashMap<(usize, u32, Commit), Arc<str>>;

/// How a claim's transaction commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Commit {
    /// Without waiting for the WAL to reach the disk: the claim is the whole transaction.
    Async,
    /// As the caller's transaction is set to: the claim is one statement of it.
    AsSet,
}

/// Added to the claim's final `SELECT` for [`Commit::Async`]: the claim's own transaction
/// commits without waiting for its WAL flush. A one-time filter, evaluated once per claim.
const ASYNC_COMMIT: &str =
    "WHERE (SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL ";

/// Every statement pq runs against one [`QueueTable`]. Cheap to clone.
///
/// Parameters (all typed explicitly in the text, so the drivers need no inference):
/// see each field's doc.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Statements {
    /// The insert for rows without cursor keys: see [`Statements::insert`].
    insert_plain: Arc<str>,
    /// The insert for rows with cursor keys: see [`Statements::insert`].
    insert_cursor: Arc<str>,
    /// The claim, with `{queues}`, `{limit}` and `{commit}` still to fill in: see
    /// [`Statements::claim`].
    claim: Arc<str>,
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
    /// `$1 int8` id → `state` (row absent: unknown id); removes the job unless running.
    pub cancel: Arc<str>,
    /// `$1 int8` id → `state` (row absent: unknown id); restarts the job if failed.
    pub retry: Arc<str>,
    /// `$1 int8` id → a job row.
    pub job: Arc<str>,
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
}

impl Statements {
    /// The claim of at most `limit` jobs from `queues` distinct queues: `$1 text[]` the queues
    /// (exactly `queues` of them, no repeats), `$2 int8` lease µs, `$3 int8` token → job rows
    /// plus `key_state text`, in claim order.
    ///
    /// The queue count and the limit are written into the text rather than bound. Bound, they
    /// hide from PostgreSQL's generic plan how many rows the claim wants, so its cost estimate
    /// loses to a custom plan every time and each claim is planned afresh (~0.8 ms, as long as
    /// running it). Written in, the generic plan is the same index scan, and after its first
    /// executions a connection stops planning that statement. A worker claims with few
    /// distinct limits (up to its concurrency), so few distinct texts are prepared.
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
    /// use pq_api::sql::{QueueTable, Statements};
    /// let sql = Statements::new(&QueueTable::default());
    /// let text = sql.claim(1, 32);
    /// assert!(text.contains("LIMIT 32"));
    /// assert!(text.contains("synchronous_commit"));
    /// assert!(std::sync::Arc::ptr_eq(&text, &sql.claim(1, 32)));
    /// ```
    pub fn claim(&self, queues: usize, limit: u32) -> Arc<str> {
        self.claim_text(queues, limit, Commit::Async)
    }

    /// The claim of [`Statements::claim`] for a statement inside a transaction of the
    /// caller's (a store's `claim_in`): the same text without the asynchronous commit, so the
    /// caller's transaction commits as the caller has set it.
    ///
    /// ```
    /// use pq_api::sql::{QueueTable, Statements};
    /// let sql = Statements::new(&QueueTable::default());
    /// let text = sql.claim_in_transaction(1, 32);
    /// assert!(text.contains("LIMIT 32"));
    /// assert!(!text.contains("synchronous_commit"));
    /// ```
    pub fn claim_in_transaction(&self, queues: usize, limit: u32) -> Arc<str> {
        self.claim_text(queues, limit, Commit::AsSet)
    }

    fn claim_text(&self, queues: usize, limit: u32, commit: Commit) -> Arc<str> {
        let mut kept = self.claims.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(text) = kept.get(&(queues, limit, commit)) {
            return text.clone();
        }
        let commit_filter = match commit {
            Commit::Async => ASYNC_COMMIT,
            Commit::AsSet => "",
        };
        let text: Arc<str> = Arc::from(
            self.claim
                .replace("{queues}", &queue_values(queues))
                .replace("{limit}", &limit.to_string())
                .replace("{commit}", commit_filter),
        );
        if kept.len() < CLAIM_TEXTS_KEPT {
            kept.insert((queues, limit, commit), text.clone());
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
    /// Rows without cursor keys get a statement without `ON CONFLICT`: with it, PostgreSQL
    /// inserts every row speculatively (an extra WAL record and lock per row, whether or not
    /// the row can conflict), ~12% of a 1,000-row insert's server time.
    pub fn insert(&self, rows: &InsertArrays) -> &Arc<str> {
        if rows.cursor.contains(&true) {
            &self.insert_cursor
        } else {
            &self.insert_plain
        }
    }

    /// When a job of `queues` queues may next be claimable: `$1 text[]` the queues (exactly
    /// `queues` of them) → `next_at timestamptz` (null: nothing pending, or only a time no
    /// driver can decode, left by a row written before pq's checks), `now timestamptz`.
    ///
    /// The queue count is written into the text for the reason given at
    /// [`Statements::claim`]: bound as a whole array, PostgreSQL planned this statement afresh
    /// on every call (~0.7 ms of server time for a statement that runs in ~0.1 ms), and a
    /// worker runs it each time it goes idle.
    pub fn next_run(&self, queues: usize) -> String {
        self.next_run.replace("{queues}", &queue_values(queues))
    }

    /// Renders every statement for `table`.
    pub fn new(table: &QueueTable) -> Self {
        let t = table.qualified();
        let keys = table.object(&format!("{}_keys", table.table()));
        let history = table.object(&format!("{}_history", table.table()));
        let cols = JOB_COLUMNS.replace("{state}", STATE_EXPR);
        let claim_cols = JOB_COLUMNS.replace("{state}", "'running'");
        let ready = |a: &str| {
            format!(
                "{a}.state <> 'failed' AND {a}.run_at <= statement_timestamp() \
                 AND {a}.attempts < {a}.max_attempts"
            )
        };
        let order = |a: &str| {
            format!("{a}.priority DESC, {a}.expected_at ASC NULLS LAST, {a}.run_at ASC, {a}.id ASC")
        };
        let (ready_j, ready_o, order_j, order_o, order_c) =
            (ready("j"), ready("o"), order("j"), order("o"), order("c"));
        // Frees the key a job held; `{src}` names the rows with `id`, `queue`, `key`.
        let free_key = |src: &str| {
            format!(
                "UPDATE {keys} AS k SET running_id = NULL, running_until = NULL \
                 FROM {src} WHERE {src}.key IS NOT NULL AND k.queue = {src}.queue \
                 AND k.key = {src}.key AND k.running_id = {src}.id"
            )
        };
        let insert = |on_conflict: &str| {
            format!(
                "WITH ins AS (INSERT INTO {t} AS t (queue, payload, priority, run_at, expected_at, \
                 max_attempts, key, cursor, keep_for) \
                 SELECT j.queue, j.payload::jsonb, j.priority, \
                 COALESCE(j.run_at, statement_timestamp() + j.run_in * interval '1 microsecond'), \
                 COALESCE(j.expected_at, statement_timestamp() + j.expected_in * interval '1 microsecond'), \
                 j.max_attempts, j.key, j.cursor, j.keep_for \
                 FROM unnest($1::text[], $2::text[], $3::int4[], $4::timestamptz[], $5::int8[], \
                 $6::timestamptz[], $7::int8[], $8::int4[], $9::text[], $10::bool[], $11::int8[]) \
                 WITH ORDINALITY AS j(queue, payload, priority, run_at, run_in, expected_at, \
                 expected_in, max_attempts, key, cursor, keep_for, ord) \
                 ORDER BY j.ord{on_conflict} \
                 RETURNING t.id, t.cursor, t.queue, t.key), \
                 new_keys AS (INSERT INTO {keys} (queue, key) \
                 SELECT DISTINCT queue, key FROM ins WHERE key IS NOT NULL \
                 ON CONFLICT DO NOTHING) \
                 SELECT id, cursor, CASE WHEN cursor THEN queue END AS queue, \
                 CASE WHEN cursor THEN key END AS key FROM ins"
            )
        };
        let s = |text: String| -> Arc<str> { Arc::from(text) };
        Statements {
            insert_plain: s(insert("")),
            insert_cursor: s(insert(
                " ON CONFLICT (queue, key) WHERE cursor AND lease_token IS NULL \
                 DO UPDATE SET cursor = EXCLUDED.cursor",
            )),
            // A keyed job is a candidate if no other job holds its key (tested first: it is the
            // cheaper probe, and rules out every waiting job of a held key) and it heads its
            // key's claimable jobs; `picked` then locks the key's row, re-checked at its latest version,
            // which makes the check race-free. The head test is written as a boolean subquery,
            // not `(SELECT id …) = j.id`: the planner guesses an equality with a subquery
            // passes 0.5% of rows, expects to scan the whole index, and above
            // `jit_above_cost` spends ~100 ms compiling every claim.
            claim: s(format!(
                "WITH cand AS (\
                 SELECT c.id, c.queue, c.key, c.priority, c.expected_at, c.run_at \
                 FROM (VALUES {{queues}}) AS q(name) \
                 CROSS JOIN LATERAL (SELECT j.id, j.queue, j.key, j.priority, j.expected_at, j.run_at \
                 FROM {t} AS j WHERE j.queue = q.name AND {ready_j} \
                 AND (j.key IS NULL OR (\
                 NOT EXISTS (SELECT 1 FROM {keys} AS k WHERE k.queue = j.queue \
                 AND k.key = j.key AND k.running_id <> j.id \
                 AND k.running_until > statement_timestamp()) \
                 AND (SELECT o.id = j.id FROM {t} AS o WHERE o.queue = j.queue AND o.key = j.key \
                 AND {ready_o} ORDER BY {order_o} LIMIT 1))) \
                 ORDER BY {order_j} LIMIT {{limit}} FOR UPDATE OF j SKIP LOCKED) AS c \
                 ORDER BY {order_c} LIMIT {{limit}}), \
                 picked AS (SELECT c.id, c.run_at AS prev_run_at FROM cand AS c \
                 LEFT JOIN LATERAL (SELECT true AS free FROM {keys} AS k \
                 WHERE c.key IS NOT NULL AND k.queue = c.queue AND k.key = c.key \
                 AND (k.running_id IS NULL OR k.running_id = c.id \
                 OR k.running_until <= statement_timestamp()) \
                 FOR UPDATE SKIP LOCKED) AS h ON true \
                 WHERE c.key IS NULL OR h.free), \
                 claimed AS (UPDATE {t} AS t SET state = 'running', attempts = t.attempts + 1, \
                 lease_token = $3::int8, \
                 run_at = statement_timestamp() + $2::int8 * interval '1 microsecond' \
                 FROM picked WHERE t.id = picked.id RETURNING t.*, picked.prev_run_at), \
                 taken AS (UPDATE {keys} AS k SET running_id = c.id, running_until = c.run_at \
                 FROM claimed AS c WHERE c.key IS NOT NULL AND k.queue = c.queue AND k.key = c.key \
                 RETURNING k.queue AS k_queue, k.key AS k_key, k.state AS k_state) \
                 SELECT {claim_cols}, \
                 CASE WHEN key IS NOT NULL THEN COALESCE(k_state::text, 'null') END AS key_state \
                 FROM claimed LEFT JOIN taken ON k_queue = queue AND k_key = key \
                 {{commit}}ORDER BY priority DESC, expected_at ASC NULLS LAST, prev_run_at ASC, id ASC"
            )),
            // The payload is carried along only for jobs that keep a history record.
            complete: s(format!(
                "WITH done AS (DELETE FROM {t} AS t \
                 USING unnest($1::int8[], $2::int8[], $3::text[], $4::text[]) \
                 AS l(id, token, result, key_state) \
                 WHERE t.id = l.id AND t.lease_token = l.token AND t.state = 'running' \
                 RETURNING t.id, t.queue, \
                 CASE WHEN t.keep_for IS NOT NULL THEN t.payload END AS payload, t.key, t.cursor, \
                 t.priority, t.attempts, t.created_at, t.keep_for, l.result, l.key_state), \
                 freed AS (UPDATE {keys} AS k SET running_id = NULL, running_until = NULL, \
                 state = COALESCE(done.key_state::jsonb, k.state) \
                 FROM done WHERE done.key IS NOT NULL AND k.queue = done.queue \
                 AND k.key = done.key AND k.running_id = done.id), \
                 kept AS (INSERT INTO {history} (id, queue, payload, key, cursor, priority, \
                 attempts, result, created_at, finished_at, keep_until) \
                 SELECT id, queue, payload, key, cursor, priority, attempts, result::jsonb, \
                 created_at, statement_timestamp(), \
                 statement_timestamp() + keep_for * interval '1 microsecond' \
                 FROM done WHERE keep_for IS NOT NULL) \
                 SELECT id FROM done"
            )),
            fail: s(format!(
                "WITH f AS (UPDATE {t} SET \
                 state = CASE WHEN $6::bool AND attempts < max_attempts THEN 'queued' ELSE 'failed' END, \
                 run_at = CASE WHEN $6::bool AND attempts < max_attempts THEN COALESCE($3::timestamptz, \
                 statement_timestamp() + $4::int8 * interval '1 microsecond') \
                 ELSE statement_timestamp() END, \
                 last_error = $5::text \
                 WHERE id = $1::int8 AND lease_token = $2::int8 AND state = 'running' \
                 RETURNING id, queue, key, {STATE_EXPR} AS state), \
                 freed AS ({free}) \
                 SELECT state FROM f",
                free = free_key("f")
            )),
            extend: s(format!(
                "WITH e AS (UPDATE {t} \
                 SET run_at = statement_timestamp() + $3::int8 * interval '1 microsecond' \
                 WHERE id = $1::int8 AND lease_token = $2::int8 AND state = 'running' \
                 RETURNING id, queue, key, run_at), \
                 moved AS (UPDATE {keys} AS k SET running_until = e.run_at FROM e \
                 WHERE e.key IS NOT NULL AND k.queue = e.queue AND k.key = e.key \
                 AND k.running_id = e.id) \
                 SELECT run_at FROM e"
            )),
            release: s(format!(
                "WITH r AS (UPDATE {t} SET state = 'queued', \
                 attempts = GREATEST(attempts - 1, 0), \
                 run_at = statement_timestamp() + $3::int8 * interval '1 microsecond' \
                 WHERE id = $1::int8 AND lease_token = $2::int8 AND state = 'running' \
                 RETURNING id, queue, key), \
                 freed AS ({free}) \
                 SELECT id FROM r",
                free = free_key("r")
            )),
            cancel: s(format!(
                "WITH target AS (SELECT id, {STATE_EXPR} AS state FROM {t} WHERE id = $1::int8 FOR UPDATE), \
                 gone AS (DELETE FROM {t} AS t USING target \
                 WHERE t.id = target.id AND target.state <> 'running' RETURNING t.id) \
                 SELECT state FROM target"
            )),
            retry: s(format!(
                "WITH target AS (SELECT id, {STATE_EXPR} AS state FROM {t} WHERE id = $1::int8 FOR UPDATE), \
                 restarted AS (UPDATE {t} AS t SET state = 'queued', attempts = 0, \
                 run_at = statement_timestamp() FROM target \
                 WHERE t.id = target.id AND target.state = 'failed' RETURNING t.id) \
                 SELECT state FROM target"
            )),
            job: s(format!(
                "SELECT {cols}, NULL::text AS key_state FROM {t} WHERE id = $1::int8"
            )),
            stats: s(format!(
                "SELECT {STATE_EXPR} AS state, count(*)::int8 AS n FROM {t} \
                 WHERE queue = $1::text GROUP BY 1"
            )),
            purge: s(format!(
                "WITH gone AS (DELETE FROM {t} WHERE queue = $1::text RETURNING id), \
                 freed AS (UPDATE {keys} SET running_id = NULL, running_until = NULL \
                 WHERE queue = $1::text AND running_id IS NOT NULL) \
                 SELECT count(*)::int8 AS n FROM gone"
            )),
            key_state: s(format!(
                "SELECT COALESCE(state::text, 'null') AS state FROM {keys} \
                 WHERE queue = $1::text AND key = $2::text"
            )),
            finished: s(format!(
                "SELECT {FINISHED_COLUMNS} FROM {history} WHERE id = $1::int8"
            )),
            history: s(format!(
                "SELECT {FINISHED_COLUMNS} FROM {history} WHERE queue = $1::text \
                 ORDER BY finished_at DESC, id DESC LIMIT $2::int8"
            )),
            cleanup_history: s(format!(
                "WITH gone AS (DELETE FROM {history} WHERE keep_until <= statement_timestamp() \
                 RETURNING 1) SELECT count(*)::int8 AS n FROM gone"
            )),
            claims: Arc::default(),
            // Jobs without a key: the earliest `run_at` per queue. Keyed jobs: per live key
            // (found by skipping through the key index), its earliest `run_at`, but not before
            // a live lease on the key runs out.
            next_run: s(format!(
                "WITH RECURSIVE qs AS (SELECT DISTINCT name FROM (VALUES {{queues}}) AS q(name) \
                 WHERE name IS NOT NULL), \
                 ks AS (SELECT qs.name AS queue, (SELECT min(key) FROM {t} WHERE queue = qs.name \
                 AND key IS NOT NULL AND state <> 'failed') AS key FROM qs \
                 UNION ALL \
                 SELECT ks.queue, (SELECT min(key) FROM {t} WHERE queue = ks.queue \
                 AND key > ks.key AND state <> 'failed') FROM ks WHERE ks.key IS NOT NULL), \
                 nr AS (SELECT LEAST(\
                 (SELECT min(n.run_at) FROM qs CROSS JOIN LATERAL (SELECT run_at FROM {t} \
                 WHERE queue = qs.name AND key IS NULL AND state <> 'failed' \
                 AND attempts < max_attempts ORDER BY run_at LIMIT 1) AS n), \
                 (SELECT min(GREATEST(h.run_at, CASE WHEN k.running_until > statement_timestamp() \
                 THEN k.running_until END)) FROM ks CROSS JOIN LATERAL (SELECT run_at FROM {t} \
                 WHERE queue = ks.queue AND key = ks.key AND state <> 'failed' \
                 AND attempts < max_attempts ORDER BY run_at LIMIT 1) AS h \
                 LEFT JOIN {keys} AS k ON k.queue = ks.queue AND k.key = ks.key)\
                 ) AS at) \
                 SELECT CASE WHEN isfinite(at) THEN at END AS next_at, statement_timestamp() AS now \
                 FROM nr"
            )),
            listen: s(format!("LISTEN \"{}\"", table.channel())),
            // INDEX_CLEANUP ON: left to its default, PostgreSQL skips the index pass when few
            // heap pages hold dead rows (under 2% of them, as on a large backlog), and the
            // index entries the claims scan past are what this vacuum is for.
            vacuum: s(format!("VACUUM (SKIP_LOCKED, INDEX_CLEANUP ON) {t}")),
            may_vacuum: s(format!(
                "SELECT pg_has_role(c.relowner, 'USAGE') AS may FROM pg_class AS c \
                 WHERE c.oid = '{t}'::regclass"
            )),
            // Ownership checked first: without it PostgreSQL would skip the ANALYZE with a
            // warning, at every check. (Other roles allowed to analyze it, such as the
            // database's owner, are left to autovacuum.)
            analyze_if_stale: s(format!(
                "DO $$BEGIN IF (SELECT s.n_live_tup > 1000 \
                 AND (c.reltuples < 0 OR c.reltuples * 2 < s.n_live_tup) \
                 AND pg_has_role(c.relowner, 'USAGE') \
                 FROM pg_class AS c JOIN pg_stat_user_tables AS s ON s.relid = c.oid \
                 WHERE c.oid = '{t}'::regclass) THEN ANALYZE {t}; END IF; END$$"
            )),
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
/// let sql = pq_api::sql::begin_bounded(std::time::Duration::from_secs(30));
/// assert_eq!(sql, "BEGIN; SET LOCAL idle_in_transaction_session_timeout = 30000");
/// ```
pub fn begin_bounded(idle: Duration) -> String {
    let ms = idle.as_millis().clamp(1, i32::MAX as u128);
    format!("BEGIN; SET LOCAL idle_in_transaction_session_timeout = {ms}")
}

/// `(($1::text[])[1]), (($1::text[])[2]), …`: the first `queues` elements of `$1` as VALUES
/// rows (at least one).
fn queue_values(queues: usize) -> String {
    let values: Vec<String> = (1..=queues.max(1))
        .map(|i| format!("(($1::text[])[{i}])"))
        .collect();
    values.join(", ")
}

/// One versioned step of the schema. Applied in order, each once, recorded in
/// `"<schema>"."<table>_migrations"`.
#[derive(Debug, Clone)]
pub struct Migration {
    /// Its version, from 1 up.
    pub version: i32,
    /// What it does.
    pub description: &'static str,
    /// The DDL, rendered for the table.
    pub sql: String,
}

/// The migrations for `table`, oldest first.
pub fn migrations(table: &QueueTable) -> Vec<Migration> {
    let t = table.qualified();
    let claim_idx = quote(&format!("{}_claim", table.table()));
    let run_idx = quote(&format!("{}_run_at", table.table()));
    let notify_fn = table.object(&format!("{}_notify", table.table()));
    let channel = table.channel();
    let name = |suffix: &str| format!("{}_{suffix}", table.table());
    let keys = table.object(&name("keys"));
    let history = table.object(&name("history"));
    let key_idx = quote(&name("key"));
    let key_run_idx = quote(&name("key_run_at"));
    let pending_idx = quote(&name("cursor_pending"));
    let history_idx = quote(&name("history_queue"));
    let history_keep_idx = quote(&name("history_keep"));
    let key_notify_fn = table.object(&name("key_freed"));
    let run_idx_qualified = table.object(&name("run_at"));
    // NOT VALID: a table that already holds such a row still migrates (its rows are then
    // failed one by one when claimed, see `Undecodable`); every row written from now on is
    // checked.
    let v3 = Migration {
        version: 3,
        description: "finite timestamps only",
        sql: format!(
            "ALTER TABLE {t} ADD CONSTRAINT {jobs_finite} CHECK (isfinite(run_at) \
             AND isfinite(created_at) AND (expected_at IS NULL OR isfinite(expected_at))) NOT VALID;\n\
             ALTER TABLE {history} ADD CONSTRAINT {history_finite} CHECK (isfinite(created_at) \
             AND isfinite(finished_at) AND isfinite(keep_until)) NOT VALID;\n",
            jobs_finite = quote(&name("finite_times")),
            history_finite = quote(&name("history_finite_times")),
        ),
    };
    let v2 = Migration {
        version: 2,
        description: "serial and cursor keys, key states, job history",
        sql: format!(
            "ALTER TABLE {t} ADD COLUMN key text CHECK (length(key) BETWEEN 1 AND 255),\n\
             \x20 ADD COLUMN cursor boolean NOT NULL DEFAULT false,\n\
             \x20 ADD COLUMN keep_for bigint CHECK (keep_for > 0);\n\
             DROP INDEX {run_idx_qualified};\n\
             CREATE INDEX {run_idx} ON {t} (queue, run_at) WHERE state <> 'failed' AND key IS NULL;\n\
             CREATE INDEX {key_idx} ON {t} (queue, key, priority DESC, expected_at ASC NULLS LAST, run_at ASC, id ASC) \
             WHERE key IS NOT NULL AND state <> 'failed';\n\
             CREATE INDEX {key_run_idx} ON {t} (queue, key, run_at) WHERE key IS NOT NULL AND state <> 'failed';\n\
             CREATE UNIQUE INDEX {pending_idx} ON {t} (queue, key) WHERE cursor AND lease_token IS NULL;\n\
             CREATE TABLE {keys} (\n\
             \x20 queue text NOT NULL,\n\
             \x20 key text NOT NULL,\n\
             \x20 running_id bigint,\n\
             \x20 running_until timestamptz,\n\
             \x20 state jsonb,\n\
             \x20 PRIMARY KEY (queue, key)\n\
             );\n\
             CREATE TABLE {history} (\n\
             \x20 id bigint PRIMARY KEY,\n\
             \x20 queue text NOT NULL,\n\
             \x20 payload jsonb NOT NULL,\n\
             \x20 key text,\n\
             \x20 cursor boolean NOT NULL,\n\
             \x20 priority integer NOT NULL,\n\
             \x20 attempts integer NOT NULL,\n\
             \x20 result jsonb,\n\
             \x20 created_at timestamptz NOT NULL,\n\
             \x20 finished_at timestamptz NOT NULL,\n\
             \x20 keep_until timestamptz NOT NULL\n\
             );\n\
             CREATE INDEX {history_idx} ON {history} (queue, finished_at DESC, id DESC);\n\
             CREATE INDEX {history_keep_idx} ON {history} (keep_until);\n\
             CREATE FUNCTION {key_notify_fn}() RETURNS trigger LANGUAGE plpgsql AS $pq$\n\
             BEGIN\n\
             \x20 IF EXISTS (SELECT 1 FROM {t} WHERE queue = NEW.queue AND key = NEW.key AND state <> 'failed') THEN\n\
             \x20   PERFORM pg_notify('{channel}', NEW.queue);\n\
             \x20 END IF;\n\
             \x20 RETURN NULL;\n\
             END\n\
             $pq$;\n\
             CREATE TRIGGER pq_notify_key_freed AFTER UPDATE ON {keys} FOR EACH ROW \
             WHEN (OLD.running_id IS NOT NULL AND NEW.running_id IS NULL) \
             EXECUTE FUNCTION {key_notify_fn}();\n"
        ),
    };
    vec![Migration {
        version: 1,
        description: "jobs table, claim index, notify trigger",
        sql: format!(
            "CREATE TABLE {t} (\n\
             \x20 id bigserial PRIMARY KEY,\n\
             \x20 queue text NOT NULL CHECK (length(queue) BETWEEN 1 AND 128),\n\
             \x20 payload jsonb NOT NULL,\n\
             \x20 priority integer NOT NULL DEFAULT 0,\n\
             \x20 expected_at timestamptz,\n\
             \x20 run_at timestamptz NOT NULL DEFAULT now(),\n\
             \x20 state text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'failed')),\n\
             \x20 attempts integer NOT NULL DEFAULT 0,\n\
             \x20 max_attempts integer NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),\n\
             \x20 lease_token bigint,\n\
             \x20 last_error text,\n\
             \x20 created_at timestamptz NOT NULL DEFAULT now()\n\
             );\n\
             CREATE INDEX {claim_idx} ON {t} (queue, priority DESC, expected_at ASC NULLS LAST, run_at ASC, id ASC) \
             WHERE state <> 'failed';\n\
             CREATE INDEX {run_idx} ON {t} (queue, run_at) WHERE state <> 'failed';\n\
             CREATE FUNCTION {notify_fn}() RETURNS trigger LANGUAGE plpgsql AS $pq$\n\
             BEGIN\n\
             \x20 PERFORM pg_notify('{channel}', q.queue) FROM (SELECT DISTINCT queue FROM new_rows WHERE state = 'queued') AS q;\n\
             \x20 RETURN NULL;\n\
             END\n\
             $pq$;\n\
             CREATE TRIGGER pq_notify_insert AFTER INSERT ON {t} REFERENCING NEW TABLE AS new_rows \
             FOR EACH STATEMENT EXECUTE FUNCTION {notify_fn}();\n\
             CREATE TRIGGER pq_notify_update AFTER UPDATE ON {t} REFERENCING NEW TABLE AS new_rows \
             FOR EACH STATEMENT EXECUTE FUNCTION {notify_fn}();\n"
        ),
    }, v2, v3]
}

/// The statements a store runs, in one transaction, to bring the schema up to date.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MigrationStatements {
    /// `$1 int8`: the advisory lock that serialises concurrent migrators.
    pub lock: String,
    /// Creates the schema and the migrations table if missing (one simple-protocol batch).
    pub prepare: String,
    /// → `version int4` of every applied migration.
    pub applied: String,
    /// `$1 int4` version, `$2 text` description: records one applied migration.
    pub record: String,
}

impl MigrationStatements {
    /// Renders them for `table`.
    pub fn new(table: &QueueTable) -> Self {
        let m = table.object(&format!("{}_migrations", table.table()));
        MigrationStatements {
            lock: "SELECT pg_advisory_xact_lock($1::int8)".into(),
            prepare: format!(
                "CREATE SCHEMA IF NOT EXISTS {schema};\n\
                 CREATE TABLE IF NOT EXISTS {m} (version integer PRIMARY KEY, \
                 description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());",
                schema = quote(table.schema())
            ),
            applied: format!("SELECT version FROM {m} ORDER BY version"),
            record: format!("INSERT INTO {m} (version, description) VALUES ($1::int4, $2::text)"),
        }
    }
}

/// The whole schema as one SQL script, for users who run their own migration tool.
///
/// ```
/// let ddl = pq_api::sql::schema_ddl(&pq_api::sql::QueueTable::default());
/// assert!(ddl.contains("CREATE TABLE \"public\".\"pq_jobs\""));
/// ```
pub fn schema_ddl(table: &QueueTable) -> String {
    let m = MigrationStatements::new(table);
    let mut out = format!("{}\n", m.prepare);
    for step in migrations(table) {
        out.push_str(&format!(
            "-- pq migration {}: {}\n{}",
            step.version, step.description, step.sql
        ));
        out.push_str(&format!(
            "INSERT INTO {} (version, description) VALUES ({}, '{}');\n",
            table.object(&format!("{}_migrations", table.table())),
            step.version,
            step.description
        ));
    }
    out
}

/// A job row as the SQL stores decode it from [`Statements::claim`] and [`Statements::job`]:
/// plain column values, converted to a [`Job`] in one place. The payload and the state may
/// borrow from the driver's row (a claim parses each payload straight from it).
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub struct JobRow<'r> {
    pub id: i64,
    pub queue: String,
    pub payload: Cow<'r, str>,
    pub priority: i32,
    pub expected_at: Option<DateTime<Utc>>,
    pub run_at: DateTime<Utc>,
    pub state: Cow<'r, str>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub lease_token: Option<i64>,
    pub key: Option<String>,
    pub cursor: bool,
    pub keep_for: Option<i64>,
    pub key_state: Option<String>,
}

impl JobRow<'_> {
    /// Converts the row into a [`Job`].
    pub fn into_job(self) -> Result<Job> {
        let state = parse_state(&self.state)?;
        let payload: Value = serde_json::from_str(&self.payload)?;
        let (serial_key, cursor_key) = split_key(self.key, self.cursor);
        Ok(Job {
            serial_key,
            cursor_key,
            keep_history: self
                .keep_for
                .and_then(|us| u64::try_from(us).ok())
                .map(std::time::Duration::from_micros),
            id: JobId(self.id),
            queue: self.queue,
            payload: Arc::new(payload),
            priority: self.priority,
            expected_at: self.expected_at,
            run_at: self.run_at,
            state,
            attempts: u32::try_from(self.attempts).unwrap_or(0),
            max_attempts: u32::try_from(self.max_attempts).unwrap_or(1),
            last_error: self.last_error,
            created_at: self.created_at,
        })
    }

    /// Converts a claimed row into a [`ClaimedJob`].
    pub fn into_claimed(mut self) -> Result<ClaimedJob> {
        let token = self
            .lease_token
            .ok_or_else(|| Error::Backend("claimed row carries no lease token".into()))?;
        let key_state = match self.key_state.take() {
            Some(text) => Some(serde_json::from_str(&text)?),
            None => None,
        };
        let job = self.into_job()?;
        let lease = Lease {
            job_id: job.id,
            token,
        };
        Ok(ClaimedJob::new(job, lease).with_key_state(key_state))
    }
}

fn split_key(key: Option<String>, cursor: bool) -> (Option<String>, Option<String>) {
    match key {
        Some(k) if cursor => (None, Some(k)),
        k => (k, None),
    }
}

/// The instant `micros` microseconds after PostgreSQL's epoch (2000-01-01 UTC), as a
/// `timestamptz` travels in binary; `None` for `±infinity` and anything else chrono cannot
/// hold. The drivers decode timestamps through this rather than panic on such a value.
///
/// ```
/// use pq_api::sql::pg_time;
/// assert_eq!(pg_time(0).unwrap().to_rfc3339(), "2000-01-01T00:00:00+00:00");
/// assert!(pg_time(i64::MAX).is_none()); // 'infinity'
/// assert!(pg_time(i64::MIN).is_none()); // '-infinity'
/// ```
pub fn pg_time(micros: i64) -> Option<DateTime<Utc>> {
    const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;
    if micros == i64::MAX || micros == i64::MIN {
        return None;
    }
    DateTime::from_timestamp(PG_EPOCH_UNIX_SECS, 0)?
        .checked_add_signed(chrono::TimeDelta::microseconds(micros))
}

/// A claimed row that could not be turned into a job: a payload serde_json cannot parse (a
/// number out of range, nesting past its limit), a time no driver can hold, all written by
/// plain SQL or by an older version. The store fails it at once, in the claim's own
/// transaction, with [`Undecodable::failure`], and hands out the rest of the batch: one bad
/// row never holds up the jobs claimed with it, and never uses up more attempts.
#[derive(Debug)]
pub struct Undecodable {
    /// The lease the claim took on it.
    pub lease: Lease,
    /// Why it could not be decoded.
    pub error: Error,
}

impl Undecodable {
    /// The failure recorded on the job: no retry, the reason in `last_error`.
    pub fn failure(&self) -> crate::Failure {
        crate::Failure::new(format!(
            "pq cannot decode this job as stored: {}",
            self.error
        ))
        .give_up()
    }

    /// Logs that the job could not be failed either; it is claimed and tried again once its
    /// lease expires.
    pub fn not_failed(&self, e: &Error) {
        tracing::error!(job.id = self.lease.job_id.0, error = %self.error, fail_error = %e,
            "could not fail an undecodable job; it is tried again once its lease expires");
    }
}

/// A history row as the SQL stores decode it from [`Statements::finished`] and
/// [`Statements::history`].
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub struct FinishedRow {
    pub id: i64,
    pub queue: String,
    pub payload: String,
    pub key: Option<String>,
    pub cursor: bool,
    pub priority: i32,
    pub attempts: i32,
    pub result: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub keep_until: DateTime<Utc>,
}

impl FinishedRow {
    /// Converts the row into a [`FinishedJob`].
    pub fn into_finished(self) -> Result<FinishedJob> {
        let (serial_key, cursor_key) = split_key(self.key, self.cursor);
        let mut job = Job::new(
            JobId(self.id),
            self.queue,
            serde_json::from_str::<Value>(&self.payload)?,
            self.created_at,
        );
        job.serial_key = serial_key;
        job.cursor_key = cursor_key;
        job.priority = self.priority;
        job.attempts = u32::try_from(self.attempts).unwrap_or(0);
        let result = match self.result {
            Some(text) => Some(serde_json::from_str(&text)?),
            None => None,
        };
        Ok(FinishedJob::new(
            job,
            result,
            self.finished_at,
            self.keep_until,
        ))
    }
}

/// The column arrays [`Statements::complete`] takes.
#[derive(Debug, Default)]
#[allow(missing_docs)]
pub struct DoneArrays {
    pub id: Vec<i64>,
    pub token: Vec<i64>,
    pub result: Vec<Option<String>>,
    pub key_state: Vec<Option<String>>,
}

impl DoneArrays {
    /// Splits completions into columns, JSON as text.
    pub fn new(done: &[Done]) -> Result<Self> {
        let mut a = DoneArrays::default();
        let text = |v: &Option<Value>| v.as_ref().map(serde_json::to_string).transpose();
        for d in done {
            a.id.push(d.lease.job_id.0);
            a.token.push(d.lease.token);
            a.result.push(text(&d.result)?);
            a.key_state.push(text(&d.key_state)?);
        }
        Ok(a)
    }
}

/// Parses a state name returned by a statement.
pub fn parse_state(s: &str) -> Result<JobState> {
    JobState::parse(s).ok_or_else(|| Error::Backend(format!("unknown job state {s:?}").into()))
}

/// Splits jobs into the column arrays [`Statements::insert`] takes.
///
/// Jobs with a cursor key already pending earlier in the same call are not sent: they take
/// the id of that earlier job ([`InsertArrays::ids`]).
#[derive(Debug, Default)]
#[allow(missing_docs)]
pub struct InsertArrays {
    pub queue: Vec<String>,
    pub payload: Vec<String>,
    pub priority: Vec<i32>,
    pub run_at: Vec<Option<DateTime<Utc>>>,
    pub run_in: Vec<Option<i64>>,
    pub expected_at: Vec<Option<DateTime<Utc>>>,
    pub expected_in: Vec<Option<i64>>,
    pub max_attempts: Vec<i32>,
    pub key: Vec<Option<String>>,
    pub cursor: Vec<bool>,
    pub keep_for: Vec<Option<i64>>,
    /// For each job given, the row sent for it.
    pub slots: Vec<usize>,
}

impl InsertArrays {
    /// Validates every job, then splits them; an invalid job fails the whole batch.
    pub fn new(jobs: &[crate::NewJob]) -> Result<Self> {
        use crate::When;
        let mut a = InsertArrays::default();
        let mut cursor_rows: HashMap<(&str, &str), usize> = HashMap::new();
        for job in jobs {
            job.validate()?;
            if let Some((key, true)) = job.key() {
                if let Some(&row) = cursor_rows.get(&(job.queue.as_str(), key)) {
                    a.slots.push(row);
                    continue;
                }
                cursor_rows.insert((&job.queue, key), a.queue.len());
            }
            a.slots.push(a.queue.len());
            a.queue.push(job.queue.clone());
            a.payload.push(serde_json::to_string(&job.payload)?);
            a.priority.push(job.priority);
            let (at, within) = match job.run_at {
                Some(When::At(at)) => (Some(at), None),
                Some(When::In(d)) => (None, Some(crate::micros(d))),
                None => (None, Some(0)),
            };
            a.run_at.push(at);
            a.run_in.push(within);
            let (at, within) = match job.expected_at {
                Some(When::At(at)) => (Some(at), None),
                Some(When::In(d)) => (None, Some(crate::micros(d))),
                None => (None, None),
            };
            a.expected_at.push(at);
            a.expected_in.push(within);
            a.max_attempts.push(
                i32::try_from(job.max_attempts)
                    .map_err(|_| Error::invalid("max_attempts", "too large"))?,
            );
            let key = job.key();
            a.key.push(key.map(|(k, _)| k.to_owned()));
            a.cursor.push(key.is_some_and(|(_, cursor)| cursor));
            a.keep_for.push(job.keep_history.map(crate::micros));
        }
        Ok(a)
    }

    /// The id of every job given, in order, from the rows [`Statements::insert`] returned
    /// (`id, cursor, queue, key`; queue and key are given for cursor rows only, null on the
    /// others, so that a batch of plain jobs returns no text). Cursor rows are matched by
    /// queue and key (unique among the rows sent); every other row was inserted, and ids come
    /// from one sequence in the order the rows were sent.
    pub fn ids(
        &self,
        rows: impl IntoIterator<Item = (i64, bool, Option<String>, Option<String>)>,
    ) -> Result<Vec<JobId>> {
        let mut by_key: HashMap<(String, String), i64> = HashMap::new();
        let mut plain: Vec<i64> = Vec::with_capacity(self.queue.len());
        for (id, cursor, queue, key) in rows {
            match (queue, key) {
                (Some(queue), Some(key)) if cursor => {
                    by_key.insert((queue, key), id);
                }
                _ => plain.push(id),
            }
        }
        plain.sort_unstable();
        let mut plain = plain.into_iter();
        let mut row_ids = Vec::with_capacity(self.queue.len());
        for row in 0..self.queue.len() {
            let id = match (&self.key[row], self.cursor[row]) {
                (Some(key), true) => by_key.get(&(self.queue[row].clone(), key.clone())).copied(),
                _ => plain.next(),
            };
            row_ids
                .push(id.ok_or_else(|| Error::Backend("the insert returned too few rows".into()))?);
        }
        Ok(self.slots.iter().map(|&row| JobId(row_ids[row])).collect())
    }
}

/// Runs `statement`, freeing `garbage` while the server works on it: the statement is polled
/// first (it sends its messages), then this task yields once (a store whose connection is a
/// task of its own, as diesel-async's is, sends them then), and only then is `garbage`
/// dropped. A store's `put_many` hands it the jobs it was given, once their rows are
/// encoded: freeing a thousand payloads was a fifth of the client's time in `put_many`.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let jobs = vec![serde_json::json!({"n": 1}); 1000];
/// let sent = async { 7 };
/// assert_eq!(pq_api::sql::freeing(sent, jobs).await, 7);
/// # });
/// ```
pub async fn freeing<T, G>(statement: impl std::future::Future<Output = T>, garbage: G) -> T {
    let free = async move {
        tokio::task::yield_now().await;
        drop(garbage);
    };
    let (out, ()) = tokio::join!(statement, free);
    out
}

/// The ids of [`Statements::complete`]'s result, in the order the leases were given (the
/// statement returns them in no particular order). Linear in the batch size.
pub fn completed_in_order(given: &[Done], done: impl IntoIterator<Item = i64>) -> Vec<JobId> {
    let done: std::collections::HashSet<i64> = done.into_iter().collect();
    given
        .iter()
        .map(|d| d.lease.job_id)
        .filter(|id| done.contains(&id.0))
        .collect()
}

/// Splits a [`crate::Failure`]'s retry time into the `$3`/`$4` parameters of [`Statements::fail`].
pub fn retry_params(failure: &crate::Failure) -> (Option<DateTime<Utc>>, i64) {
    match failure.retry_at {
        Some(crate::When::At(at)) => (Some(at), 0),
        Some(crate::When::In(d)) => (None, crate::micros(d)),
        None => (None, 0),
    }
}

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
/// the claims before it left: measured on the development machine, a claim of 32 took
/// 1.1 ms with a freshly vacuumed table and 5.4 ms after 384,000 jobs, growing in a straight
/// line, and autovacuum had not come round in that minute (it visits each database once per
/// `autovacuum_naptime`, 1 min by default, while a busy queue claims hundreds of thousands of
/// jobs a minute). Vacuumed every 10,000 jobs, the claim stayed at ~1 ms; a vacuum took ~20 ms on a
/// table of 100,000 jobs and ~120–260 ms on one of a million.
///
/// The vacuum needs the table's owner: without that, PostgreSQL skips it with a warning. So
/// before its first vacuum a store asks whether its role owns the table
/// ([`Statements::may_vacuum`]), and if it does not, it says so once (an `info` event) and
/// leaves the table to autovacuum from then on; if the question fails, it asks again at the
/// next vacuum due. (Other roles PostgreSQL lets vacuum a table, such as the database's owner,
/// are left to autovacuum too, as with the statistics check.)
///
/// ```
/// use pq_api::sql::Vacuuming;
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
/// scan of the whole backlog and a sort.
/// Measured on the development machine, a worker on a new table filled with 100,000 jobs
/// (autovacuum off for it, as if its workers were busy elsewhere): 45 ms per claim of 32 (a
/// bitmap scan of 99,776 rows and a sort spilling to disk), 1,375 jobs/s without the check,
/// 35,304 with it, 38,587 with the table analyzed before the worker started; with 300,000
/// jobs, 757 jobs/s without it and 35,821 with it. The check is one catalog query; the
/// `ANALYZE` it may run samples at most 30,000 rows (0.2–0.3 s with a million queued).
///
/// ```
/// use pq_api::sql::Analyzing;
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

/// A SQL store's background upkeep of its jobs table, started after its claims: the vacuum
/// ([`Vacuuming`]) and the statistics check ([`Analyzing`]).
#[derive(Debug, Default)]
pub struct Upkeep {
    /// When the store vacuums the table.
    pub vacuuming: Arc<Vacuuming>,
    /// When the store checks the table's statistics.
    pub analyzing: Arc<Analyzing>,
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
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a test's verdict

    use super::*;

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

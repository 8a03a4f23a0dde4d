//! The statements both SQL stores run, rendered once per configured table.
//!
//! Every statement is parameterised text with `$n` placeholders; identifiers come only from
//! a validated [`QueueTable`] and are quoted in one place. `pq-sqlx` and `pq-diesel` send
//! these exact strings, so the two stores run byte-identical SQL.

#[cfg(doc)]
use super::upkeep::{Analyzing, Vacuuming};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::rows::InsertArrays;
use super::table::QueueTable;

/// How many rendered claim texts [`Statements::claim`] keeps; past that it renders each
/// new one on every call.
pub const CLAIM_TEXTS_KEPT: usize = 256;
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
    /// use pq_api::postgres::{QueueTable, Statements};
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
    /// use pq_api::postgres::{QueueTable, Statements};
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

    /// Every statement by name, rendered: both inserts, the claims for one and two queues
    /// (asynchronous and in a transaction, limit 32), the wait for one and two queues, and
    /// the rest. What the golden file (`pq-api/tests/golden/statements.sql`) holds for the
    /// default table, so that a change to any text shows in review.
    pub fn all(&self) -> Vec<(String, Arc<str>)> {
        let mut all: Vec<(String, Arc<str>)> = vec![
            ("insert".into(), self.insert_plain.clone()),
            ("insert, cursor keys".into(), self.insert_cursor.clone()),
        ];
        for queues in [1, 2] {
            all.push((
                format!("claim, {queues} queue(s), limit 32"),
                self.claim(queues, 32),
            ));
            all.push((
                format!("claim in a transaction, {queues} queue(s), limit 32"),
                self.claim_in_transaction(queues, 32),
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
            ("retry", &self.retry),
            ("job", &self.job),
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
/// let sql = pq_api::postgres::begin_bounded(std::time::Duration::from_secs(30));
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

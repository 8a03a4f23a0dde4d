//! The PostgreSQL statements both SQL stores run, rendered once per configured table.
//!
//! Every statement is parameterised text with `$n` placeholders; identifiers come only from
//! a validated [`QueueTable`] and are quoted here, in one place. `pq-sqlx` and `pq-diesel`
//! send these exact strings, so the two stores run byte-identical SQL.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::job::{ClaimedJob, Job, JobId, JobState, Lease};

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
        if schema.starts_with("pg_") {
            return Err(Error::invalid(
                "schema name",
                "names starting with pg_ are reserved",
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
     {state} AS state, attempts, max_attempts, last_error, created_at, lease_token";

/// Every statement pq runs against one [`QueueTable`]. Cheap to clone.
///
/// Parameters (all typed explicitly in the text, so the drivers need no inference):
/// see each field's doc.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Statements {
    /// `$1 text[]` queue, `$2 text[]` payload, `$3 int4[]` priority, `$4 timestamptz[]` run_at,
    /// `$5 int8[]` run_in µs, `$6 timestamptz[]` expected_at, `$7 int8[]` expected_in µs,
    /// `$8 int4[]` max_attempts → `id` per row.
    pub insert: Arc<str>,
    /// `$1 text[]` queues, `$2 int4` limit, `$3 int8` lease µs, `$4 int8` token → job rows.
    pub claim: Arc<str>,
    /// `$1 int8[]` ids, `$2 int8[]` tokens → `id` of each completed job.
    pub complete: Arc<str>,
    /// `$1 int8` id, `$2 int8` token, `$3 timestamptz` retry_at, `$4 int8` retry_in µs,
    /// `$5 text` error, `$6 bool` retry (false: give up) → `state`.
    pub fail: Arc<str>,
    /// `$1 int8` id, `$2 int8` token, `$3 int8` lease µs → `run_at`.
    pub extend: Arc<str>,
    /// `$1 int8` id, `$2 int8` token → `id`.
    pub release: Arc<str>,
    /// `$1 int8` id → `state` (row absent: unknown id); removes the job unless running.
    pub cancel: Arc<str>,
    /// `$1 int8` id → `state` (row absent: unknown id); restarts the job if failed.
    pub retry: Arc<str>,
    /// `$1 int8` id → a job row.
    pub job: Arc<str>,
    /// `$1 text` queue → `state`, `n int8` per state present.
    pub stats: Arc<str>,
    /// `$1 text` queue; the affected row count is the number purged.
    pub purge: Arc<str>,
    /// `$1 text[]` queues → `next_at timestamptz` (null: nothing pending), `now timestamptz`.
    pub next_run: Arc<str>,
    /// `LISTEN` on this table's channel (no parameters).
    pub listen: Arc<str>,
}

impl Statements {
    /// Renders every statement for `table`.
    pub fn new(table: &QueueTable) -> Self {
        let t = table.qualified();
        let cols = JOB_COLUMNS.replace("{state}", STATE_EXPR);
        let claim_cols = JOB_COLUMNS.replace("{state}", "'running'");
        let ready =
            "state <> 'failed' AND run_at <= statement_timestamp() AND attempts < max_attempts";
        let order = "priority DESC, expected_at ASC NULLS LAST, run_at ASC, id ASC";
        let s = |text: String| -> Arc<str> { Arc::from(text) };
        Statements {
            insert: s(format!(
                "INSERT INTO {t} (queue, payload, priority, run_at, expected_at, max_attempts) \
                 SELECT j.queue, j.payload::jsonb, j.priority, \
                 COALESCE(j.run_at, statement_timestamp() + j.run_in * interval '1 microsecond'), \
                 COALESCE(j.expected_at, statement_timestamp() + j.expected_in * interval '1 microsecond'), \
                 j.max_attempts \
                 FROM unnest($1::text[], $2::text[], $3::int4[], $4::timestamptz[], $5::int8[], \
                 $6::timestamptz[], $7::int8[], $8::int4[]) WITH ORDINALITY \
                 AS j(queue, payload, priority, run_at, run_in, expected_at, expected_in, max_attempts, ord) \
                 ORDER BY j.ord RETURNING id"
            )),
            claim: s(format!(
                "WITH picked AS (\
                 SELECT c.id, c.run_at AS prev_run_at FROM unnest($1::text[]) AS q(name) \
                 CROSS JOIN LATERAL (SELECT id, priority, expected_at, run_at FROM {t} \
                 WHERE queue = q.name AND {ready} ORDER BY {order} LIMIT $2::int4 \
                 FOR UPDATE SKIP LOCKED) AS c \
                 ORDER BY c.priority DESC, c.expected_at ASC NULLS LAST, c.run_at ASC, c.id ASC \
                 LIMIT $2::int4), \
                 claimed AS (UPDATE {t} AS t SET state = 'running', attempts = t.attempts + 1, \
                 lease_token = $4::int8, \
                 run_at = statement_timestamp() + $3::int8 * interval '1 microsecond' \
                 FROM picked WHERE t.id = picked.id RETURNING t.*, picked.prev_run_at) \
                 SELECT {claim_cols} FROM claimed \
                 ORDER BY priority DESC, expected_at ASC NULLS LAST, prev_run_at ASC, id ASC"
            )),
            complete: s(format!(
                "DELETE FROM {t} AS t USING unnest($1::int8[], $2::int8[]) AS l(id, token) \
                 WHERE t.id = l.id AND t.lease_token = l.token AND t.state = 'running' \
                 RETURNING t.id"
            )),
            fail: s(format!(
                "UPDATE {t} SET \
                 state = CASE WHEN $6::bool AND attempts < max_attempts THEN 'queued' ELSE 'failed' END, \
                 run_at = CASE WHEN $6::bool AND attempts < max_attempts THEN COALESCE($3::timestamptz, \
                 statement_timestamp() + $4::int8 * interval '1 microsecond') \
                 ELSE statement_timestamp() END, \
                 lease_token = NULL, last_error = $5::text \
                 WHERE id = $1::int8 AND lease_token = $2::int8 AND state = 'running' \
                 RETURNING {STATE_EXPR} AS state"
            )),
            extend: s(format!(
                "UPDATE {t} SET run_at = statement_timestamp() + $3::int8 * interval '1 microsecond' \
                 WHERE id = $1::int8 AND lease_token = $2::int8 AND state = 'running' \
                 RETURNING run_at"
            )),
            release: s(format!(
                "UPDATE {t} SET state = 'queued', attempts = GREATEST(attempts - 1, 0), \
                 run_at = statement_timestamp(), lease_token = NULL \
                 WHERE id = $1::int8 AND lease_token = $2::int8 AND state = 'running' \
                 RETURNING id"
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
                 run_at = statement_timestamp(), lease_token = NULL FROM target \
                 WHERE t.id = target.id AND target.state = 'failed' RETURNING t.id) \
                 SELECT state FROM target"
            )),
            job: s(format!("SELECT {cols} FROM {t} WHERE id = $1::int8")),
            stats: s(format!(
                "SELECT {STATE_EXPR} AS state, count(*)::int8 AS n FROM {t} \
                 WHERE queue = $1::text GROUP BY 1"
            )),
            purge: s(format!("DELETE FROM {t} WHERE queue = $1::text")),
            next_run: s(format!(
                "SELECT (SELECT min(n.run_at) FROM unnest($1::text[]) AS q(name) \
                 CROSS JOIN LATERAL (SELECT run_at FROM {t} WHERE queue = q.name \
                 AND state <> 'failed' AND attempts < max_attempts ORDER BY run_at LIMIT 1) AS n) \
                 AS next_at, statement_timestamp() AS now"
            )),
            listen: s(format!("LISTEN \"{}\"", table.channel())),
        }
    }
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
    }]
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
/// plain column values, converted to a [`Job`] in one place.
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub struct JobRow {
    pub id: i64,
    pub queue: String,
    pub payload: String,
    pub priority: i32,
    pub expected_at: Option<DateTime<Utc>>,
    pub run_at: DateTime<Utc>,
    pub state: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub lease_token: Option<i64>,
}

impl JobRow {
    /// Converts the row into a [`Job`].
    pub fn into_job(self) -> Result<Job> {
        let state = parse_state(&self.state)?;
        let payload: Value = serde_json::from_str(&self.payload)?;
        Ok(Job {
            id: JobId(self.id),
            queue: self.queue,
            payload,
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
    pub fn into_claimed(self) -> Result<ClaimedJob> {
        let token = self
            .lease_token
            .ok_or_else(|| Error::Backend("claimed row carries no lease token".into()))?;
        let job = self.into_job()?;
        let lease = Lease {
            job_id: job.id,
            token,
        };
        Ok(ClaimedJob::new(job, lease))
    }
}

/// Parses a state name returned by a statement.
pub fn parse_state(s: &str) -> Result<JobState> {
    JobState::parse(s).ok_or_else(|| Error::Backend(format!("unknown job state {s:?}").into()))
}

/// Splits jobs into the column arrays [`Statements::insert`] takes.
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
}

impl InsertArrays {
    /// Validates every job, then splits them; an invalid job fails the whole batch.
    pub fn new(jobs: &[crate::NewJob]) -> Result<Self> {
        use crate::When;
        let mut a = InsertArrays::default();
        for job in jobs {
            job.validate()?;
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
        }
        Ok(a)
    }
}

/// The ids of [`Statements::complete`]'s result, in the order the leases were given (the
/// statement returns them in no particular order). Linear in the batch size.
pub fn completed_in_order(leases: &[Lease], done: impl IntoIterator<Item = i64>) -> Vec<JobId> {
    let done: std::collections::HashSet<i64> = done.into_iter().collect();
    leases
        .iter()
        .map(|l| l.job_id)
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

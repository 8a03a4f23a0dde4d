//! The versioned schema: migrations, the statements that apply them, and the whole DDL.

use super::table::{quote, QueueTable};

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
/// let ddl = pq_api::postgres::schema_ddl(&pq_api::postgres::QueueTable::default());
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

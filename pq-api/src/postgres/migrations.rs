//! The versioned schema: migrations, the statements that apply them, and the whole DDL.

use super::render::script;
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

/// The migrations for `table`, oldest first, from the files `postgres/sql/migration_*.sql`.
pub fn migrations(table: &QueueTable) -> Vec<Migration> {
    rendered(table).0
}

/// The script that splits `table`'s jobs into partitions (`postgres/sql/partition.sql`), for a
/// table migrated to version 11 and not yet split: see [`PgStore::partition`](super::PgStore).
///
/// ```
/// let sql = pq_api::postgres::partition_script(&pq_api::postgres::QueueTable::default());
/// assert!(sql.contains("PARTITION BY LIST (part)"));
/// ```
pub fn partition_script(table: &QueueTable) -> String {
    rendered(table).1
}

/// The migrations and the partitioning script, rendered for `table`.
fn rendered(table: &QueueTable) -> (Vec<Migration>, String) {
    let name = |suffix: &str| format!("{}_{suffix}", table.table());
    let jobs = table.qualified();
    let keys = table.object(&name("keys"));
    let history = table.object(&name("history"));
    let channel = table.channel();
    let claim_idx = quote(&name("claim"));
    let claim_idx_qualified = table.object(&name("claim"));
    let run_idx = quote(&name("run_at"));
    let run_idx_qualified = table.object(&name("run_at"));
    let notify_fn = table.object(&name("notify"));
    let key_idx = quote(&name("key"));
    let key_run_idx = quote(&name("key_run_at"));
    let key_run_idx_qualified = table.object(&name("key_run_at"));
    let key_deadline_idx = quote(&name("key_deadline"));
    let pending_idx = quote(&name("cursor_pending"));
    let history_idx = quote(&name("history_queue"));
    let history_keep_idx = quote(&name("history_keep"));
    let key_notify_fn = table.object(&name("key_freed"));
    let jobs_finite = quote(&name("finite_times"));
    let history_finite = quote(&name("history_finite_times"));
    let unique = table.object(&name("unique"));
    let unique_idx = quote(&name("unique_key"));
    let unique_fn = table.object(&name("unique_holders"));
    let unique_lock = table.unique_lock().to_string();
    let ended_idx = quote(&name("ended"));
    let queues_table = table.object(&name("queues"));
    let slots = table.object(&name("slots"));
    let slot_notify_fn = table.object(&name("slot_freed"));
    let sweep_keys_fn = table.object(&name("sweep_keys"));
    let throughput = table.object(&name("throughput"));
    let rotation = table.object(&name("rotation"));
    let part_fn = table.object(&name("current_part"));
    let rotate_fn = table.object(&name("rotate"));
    let unpartitioned = quote(&name("unpartitioned"));
    let unpartitioned_qualified = table.object(&name("unpartitioned"));
    let pkey = quote(&name("pkey"));
    let key_idx_qualified = table.object(&name("key"));
    let pending_idx_qualified = table.object(&name("cursor_pending"));
    let key_deadline_idx_qualified = table.object(&name("key_deadline"));
    let unique_idx_qualified = table.object(&name("unique_key"));
    let ended_idx_qualified = table.object(&name("ended"));
    let parts: Vec<String> = ["part_0", "part_1", "part_cursor"]
        .iter()
        .map(|p| table.object(&name(p)))
        .collect();
    let vars = [
        ("jobs", jobs.as_str()),
        ("keys", keys.as_str()),
        ("history", history.as_str()),
        ("channel", channel.as_str()),
        ("claim_idx", claim_idx.as_str()),
        ("claim_idx_qualified", claim_idx_qualified.as_str()),
        ("run_idx", run_idx.as_str()),
        ("run_idx_qualified", run_idx_qualified.as_str()),
        ("notify_fn", notify_fn.as_str()),
        ("key_idx", key_idx.as_str()),
        ("key_run_idx", key_run_idx.as_str()),
        ("key_run_idx_qualified", key_run_idx_qualified.as_str()),
        ("key_deadline_idx", key_deadline_idx.as_str()),
        ("pending_idx", pending_idx.as_str()),
        ("history_idx", history_idx.as_str()),
        ("history_keep_idx", history_keep_idx.as_str()),
        ("key_notify_fn", key_notify_fn.as_str()),
        ("jobs_finite", jobs_finite.as_str()),
        ("history_finite", history_finite.as_str()),
        ("unique", unique.as_str()),
        ("unique_idx", unique_idx.as_str()),
        ("unique_fn", unique_fn.as_str()),
        ("unique_lock", unique_lock.as_str()),
        ("ended_idx", ended_idx.as_str()),
        ("queues_table", queues_table.as_str()),
        ("slots", slots.as_str()),
        ("slot_notify_fn", slot_notify_fn.as_str()),
        ("sweep_keys_fn", sweep_keys_fn.as_str()),
        ("throughput", throughput.as_str()),
        ("rotation", rotation.as_str()),
        ("part_fn", part_fn.as_str()),
        ("rotate_fn", rotate_fn.as_str()),
        ("unpartitioned", unpartitioned.as_str()),
        ("unpartitioned_qualified", unpartitioned_qualified.as_str()),
        ("pkey", pkey.as_str()),
        ("key_idx_qualified", key_idx_qualified.as_str()),
        ("pending_idx_qualified", pending_idx_qualified.as_str()),
        (
            "key_deadline_idx_qualified",
            key_deadline_idx_qualified.as_str(),
        ),
        ("unique_idx_qualified", unique_idx_qualified.as_str()),
        ("ended_idx_qualified", ended_idx_qualified.as_str()),
        ("part_0", parts[0].as_str()),
        ("part_1", parts[1].as_str()),
        ("part_cursor", parts[2].as_str()),
    ];
    let step = |version, description, file| Migration {
        version,
        description,
        sql: script(file, &vars),
    };
    let partition = script(include_str!("sql/partition.sql"), &vars);
    let steps = vec![
        step(
            1,
            "jobs table, claim index, notify trigger",
            include_str!("sql/migration_1.sql"),
        ),
        step(
            2,
            "serial and cursor keys, key states, job history",
            include_str!("sql/migration_2.sql"),
        ),
        step(
            3,
            "finite timestamps only",
            include_str!("sql/migration_3.sql"),
        ),
        step(
            4,
            "per-job time limits, unique jobs",
            include_str!("sql/migration_4.sql"),
        ),
        step(
            5,
            "cancelled jobs, progress, queue settings and limits, pruning",
            include_str!("sql/migration_5.sql"),
        ),
        step(
            6,
            "per-minute throughput records",
            include_str!("sql/migration_6.sql"),
        ),
        step(
            7,
            "keyed jobs behind another of their key left out of the claim index",
            include_str!("sql/migration_7.sql"),
        ),
        step(
            8,
            "freed keys notified by the statements that free them",
            include_str!("sql/migration_8.sql"),
        ),
        step(
            9,
            "one key index fewer: next run times from the key index",
            include_str!("sql/migration_9.sql"),
        ),
        step(
            10,
            "rows from before the finite-times checks failed, the checks validated",
            include_str!("sql/migration_10.sql"),
        ),
        step(
            11,
            "a partition number on every job, the rotation of partitions",
            include_str!("sql/migration_11.sql"),
        ),
    ];
    (steps, partition)
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
            prepare: script(
                include_str!("sql/migrations_prepare.sql"),
                &[("schema", &quote(table.schema())), ("migrations", &m)],
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

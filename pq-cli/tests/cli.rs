//! The `pq` command against PostgreSQL: every subcommand, its help, and its errors.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a test's verdict

use std::process::{Command, Output};
use std::time::Duration;

use pq_api::postgres::QueueTable;
use pq_api::{Claim, Failure, JobId, JobState, NewJob, QueueStore, QueueStoreExt};
use pq_conformance::postgres::{database_url, fresh_schema};
use pq_sqlx::SqlxStore;
use serde_json::{json, Value};

/// Runs `pq` with `args` on the test database's `schema`.
fn pq(url: &str, schema: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pq"))
        .args(args)
        .args(["--schema", schema])
        .env("DATABASE_URL", url)
        .output()
        .expect("pq runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `pq` and returns what it printed, asserting that it succeeded.
fn ok(url: &str, schema: &str, args: &[&str]) -> String {
    let o = pq(url, schema, args);
    assert!(
        o.status.success(),
        "pq {args:?} failed: {}{}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A store on a fresh schema, migrated by `pq migrate`.
async fn migrated() -> (String, String, SqlxStore) {
    let url = database_url().await;
    let schema = fresh_schema();
    let out = ok(&url, &schema, &["migrate"]);
    assert!(out.contains("is up to date"), "{out}");
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let table = QueueTable::new(&schema, "pq_jobs").unwrap();
    (url, schema, SqlxStore::without_migrating(pool, table))
}

/// `pq partition` splits the queue table once, keeping its jobs; a second run says so.
#[tokio::test]
async fn partition_splits_the_table_once_and_keeps_its_jobs() {
    let (url, schema, store) = migrated().await;
    let id = store
        .put("emails", &json!({"to": "a@example.com"}))
        .await
        .unwrap();
    let out = ok(&url, &schema, &["partition"]);
    assert!(out.contains("is split into partitions"), "{out}");
    let out = ok(&url, &schema, &["partition"]);
    assert!(out.contains("already"), "{out}");
    let kind: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT relkind::text FROM pg_class WHERE oid = '\"{schema}\".pq_jobs'::regclass"
    )))
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(kind, "p");
    assert_eq!(store.job(id).await.unwrap().state, JobState::Ready);
}

/// Puts a job in `queue` and fails it for good with `error`.
async fn failed_job(store: &SqlxStore, queue: &str, error: &str) -> JobId {
    let id = store
        .put(queue, &json!({"to": "a@example.com"}))
        .await
        .unwrap();
    let claimed = store
        .claim(&Claim::new([queue]).lease(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(claimed[0].job.id, id);
    let failure = Failure::new(error).give_up();
    store.fail(&claimed[0].lease, failure).await.unwrap();
    id
}

#[test]
fn help_covers_every_subcommand() {
    let o = Command::new(env!("CARGO_BIN_EXE_pq"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(o.status.success());
    let help = stdout(&o);
    let subcommands = [
        "migrate",
        "partition",
        "ddl",
        "queues",
        "jobs",
        "show",
        "retry",
        "cancel",
        "purge",
        "pause",
        "resume",
        "health",
        "serve",
    ];
    for sub in subcommands {
        assert!(
            help.contains(&format!("  {sub} ")),
            "--help lacks {sub}:\n{help}"
        );
        let o = Command::new(env!("CARGO_BIN_EXE_pq"))
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert!(o.status.success(), "pq {sub} --help failed");
        let text = stdout(&o);
        assert!(
            text.contains("Usage: pq") && text.contains("--database-url"),
            "{text}"
        );
    }
}

#[test]
fn ddl_prints_the_tables_sql_without_a_database() {
    let o = Command::new(env!("CARGO_BIN_EXE_pq"))
        .args(["ddl", "--schema", "billing", "--table", "jobs"])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let ddl = stdout(&o);
    assert!(ddl.contains("CREATE TABLE \"billing\".\"jobs\" ("), "{ddl}");
}

#[test]
fn usage_errors_exit_with_two_and_say_why() {
    let o = Command::new(env!("CARGO_BIN_EXE_pq"))
        .args(["jobs", "--state", "sleeping"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("not a state: sleeping"),
        "{}",
        stderr(&o)
    );
    let o = Command::new(env!("CARGO_BIN_EXE_pq"))
        .args(["queues"])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no database given"), "{}", stderr(&o));
}

#[tokio::test]
async fn connection_and_table_errors_are_plain() {
    let o = pq("postgres://nobody@127.0.0.1:1/none", "public", &["queues"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("pq: cannot connect to the database"),
        "{}",
        stderr(&o)
    );
    let o = pq("not a url", "public", &["queues"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("pq: cannot connect"),
        "{}",
        stderr(&o)
    );

    let url = database_url().await;
    let o = pq(&url, &fresh_schema(), &["queues"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("there is no queue table") && err.contains("pq migrate"),
        "{err}"
    );
    let o = pq(&url, "bad schema!", &["queues"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("schema name"), "{}", stderr(&o));
}

#[tokio::test]
async fn queues_and_jobs_are_listed_as_tables_and_json() {
    let (url, schema, store) = migrated().await;
    let failed = failed_job(&store, "emails", "smtp: 550 no such user").await;
    store.put("emails", &json!(1)).await.unwrap();
    store
        .put_many(vec![
            NewJob::from_json("reports", json!(2)).run_at(Duration::from_secs(600))
        ])
        .await
        .unwrap();
    store.pause("reports").await.unwrap();

    let table = ok(&url, &schema, &["queues"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("QUEUE") && lines[0].contains("OLDEST READY"),
        "{table}"
    );
    assert!(lines[1].starts_with("emails"), "{table}");
    assert!(
        lines[2].starts_with("reports") && lines[2].ends_with("paused"),
        "{table}"
    );

    let queues = json_of(&ok(&url, &schema, &["queues", "--json"]));
    assert_eq!(queues[0]["queue"], "emails");
    assert_eq!(
        (queues[0]["ready"].as_u64(), queues[0]["failed"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(queues[0]["oldest_ready_secs"].as_f64().is_some());
    assert_eq!(queues[1]["scheduled"], 1);
    assert_eq!(queues[1]["paused"], true);
    assert_eq!(queues[1]["oldest_ready_secs"], Value::Null);

    let jobs = json_of(&ok(
        &url,
        &schema,
        &["jobs", "--queue", "emails", "--state", "failed", "--json"],
    ));
    assert_eq!(jobs.as_array().map(Vec::len), Some(1));
    assert_eq!(jobs[0]["id"], failed.0);
    assert_eq!(jobs[0]["last_error"], "smtp: 550 no such user");
    let listed = ok(&url, &schema, &["jobs", "--limit", "2"]);
    let rows: Vec<&str> = listed.lines().collect();
    assert_eq!(
        rows.len(),
        3,
        "a header and two jobs, newest first:\n{listed}"
    );
    assert!(
        rows[1].contains("reports") && rows[2].contains("ready"),
        "{listed}"
    );
    let before = rows[2].split_whitespace().next().unwrap();
    let older = ok(&url, &schema, &["jobs", "--before", before]);
    let rows: Vec<&str> = older.lines().collect();
    assert_eq!(
        rows.len(),
        2,
        "the next page holds the failed job:\n{older}"
    );
    assert!(
        rows[1].contains("failed") && rows[1].contains("smtp: 550 no such user"),
        "{older}"
    );

    let shown = ok(&url, &schema, &["show", &failed.0.to_string()]);
    assert!(
        shown.starts_with(&format!("job {} in emails: failed", failed.0)),
        "{shown}"
    );
    assert!(
        shown.contains("last error     smtp: 550 no such user"),
        "{shown}"
    );
    assert!(shown.contains("\"to\": \"a@example.com\""), "{shown}");
    let o = pq(&url, &schema, &["show", "999999"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no job 999999"), "{}", stderr(&o));
}

#[tokio::test]
async fn retry_cancel_pause_resume_and_purge_change_the_store() {
    let (url, schema, store) = migrated().await;
    let failed = failed_job(&store, "emails", "boom").await;
    let waiting = store.put("emails", &json!(2)).await.unwrap();

    let out = ok(&url, &schema, &["retry", &failed.0.to_string()]);
    assert_eq!(out.trim(), format!("retried {}", failed.0));
    assert_eq!(store.job(failed).await.unwrap().state, JobState::Ready);
    let o = pq(&url, &schema, &["retry", &waiting.0.to_string(), "424242"]);
    assert_eq!(o.status.code(), Some(1), "a ready job is not retried");
    let err = stderr(&o);
    assert!(
        err.contains("no job 424242") && err.contains("2 of 2 jobs not retried"),
        "{err}"
    );

    ok(&url, &schema, &["cancel", &waiting.0.to_string()]);
    assert!(matches!(
        store.job(waiting).await,
        Err(pq_api::Error::NotFound(_))
    ));

    ok(&url, &schema, &["pause", "emails"]);
    let paused = |queues: Vec<pq_api::QueueInfo>| queues.iter().any(|q| q.config.paused);
    assert!(paused(store.queues().await.unwrap()));
    let claim = Claim::new(["emails"]).lease(Duration::from_secs(60));
    assert!(
        store.claim(&claim).await.unwrap().is_empty(),
        "a paused queue is not claimed"
    );
    ok(&url, &schema, &["resume", "emails"]);
    assert!(!paused(store.queues().await.unwrap()));

    let o = pq(&url, &schema, &["purge", "emails"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--yes"), "{}", stderr(&o));
    assert_eq!(
        store.stats("emails").await.unwrap().total(),
        1,
        "nothing purged without --yes"
    );
    let out = ok(&url, &schema, &["purge", "emails", "--yes"]);
    assert_eq!(out.trim(), "removed 1 jobs of emails");
    assert_eq!(store.stats("emails").await.unwrap().total(), 0);
}

#[tokio::test]
async fn health_fails_only_while_a_ready_job_waits_too_long() {
    let (url, schema, store) = migrated().await;
    let o = pq(&url, &schema, &["health"]);
    assert!(
        o.status.success(),
        "no queues, nothing stuck: {}",
        stdout(&o)
    );

    let hour_ago = chrono::Utc::now() - chrono::TimeDelta::hours(1);
    store
        .put_many(vec![NewJob::from_json("stale", json!(1)).run_at(hour_ago)])
        .await
        .unwrap();
    store.put("fresh", &json!(2)).await.unwrap();
    let o = pq(&url, &schema, &["health", "--max-wait", "5m"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let report = stdout(&o);
    assert!(
        report.contains("STUCK  stale: oldest ready job waited 1h"),
        "{report}"
    );
    assert!(report.contains("ok     fresh"), "{report}");
    assert!(
        report.ends_with("unhealthy: 2 queues, longest allowed wait 5m\n"),
        "{report}"
    );

    let o = pq(
        &url,
        &schema,
        &["health", "--queue", "fresh", "--queue", "idle"],
    );
    assert!(o.status.success(), "{}", stdout(&o));
    let o = pq(&url, &schema, &["health", "--max-wait", "2h", "--json"]);
    assert!(o.status.success());
    let report = json_of(&stdout(&o));
    assert_eq!(report["healthy"], true);
    assert_eq!(report["queues"][1]["queue"], "stale");
    assert!(report["queues"][1]["oldest_ready_secs"].as_f64().unwrap() >= 3600.0);

    let claim = Claim::new(["stale"]).lease(Duration::from_secs(60));
    assert_eq!(store.claim(&claim).await.unwrap().len(), 1);
    let o = pq(&url, &schema, &["health", "--max-wait", "5m"]);
    assert!(
        o.status.success(),
        "a running job is not stuck: {}",
        stdout(&o)
    );
}

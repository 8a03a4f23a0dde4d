//! Keyed backlogs on both SQL stores: a key's jobs put together wait outside the claim index
//! behind the first of them (the `hidden` marker), and every way the first one leaves shows
//! the next, so each job still runs, in its key's order.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a test's verdict

use std::sync::Arc;

use chrono::{DateTime, Utc};
use pq_api::postgres::QueueTable;
use pq_api::{Claim, ClaimedJob, NewJob, QueueStore, QueueStoreExt};
use serde_json::json;
use sqlx::{AssertSqlSafe, PgPool};

mod support;

async fn pool() -> PgPool {
    support::pool(4).await
}

/// A store of each driver, each on a fresh schema.
async fn stores() -> Vec<(Arc<dyn QueueStore>, QueueTable)> {
    let stores = support::stores(4).await;
    stores.into_iter().map(|(_, s, t)| (s, t)).collect()
}

fn job(key: &str, n: u32) -> NewJob {
    NewJob::from_json("q", json!({ "key": key, "n": n })).serial_key(key)
}

/// A claim of everything claimable in queue `q`.
fn claim() -> Claim {
    Claim::new(["q"]).limit(100)
}

fn names(jobs: &[ClaimedJob]) -> Vec<String> {
    let mut out: Vec<String> = jobs
        .iter()
        .map(|j| {
            format!(
                "{}{}",
                j.job.payload["key"].as_str().unwrap_or("-"),
                j.job.payload["n"]
            )
        })
        .collect();
    out.sort();
    out
}

async fn hidden(pool: &PgPool, table: &QueueTable) -> i64 {
    let sql = format!("SELECT count(*) FROM {} WHERE hidden", table.qualified());
    sqlx::query_scalar(AssertSqlSafe(sql))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Claims and completes until nothing is claimable; the names claimed, claim by claim.
async fn drain(store: &Arc<dyn QueueStore>) -> Vec<Vec<String>> {
    let mut rounds = Vec::new();
    loop {
        let got = store.claim(&claim()).await.unwrap();
        if got.is_empty() {
            return rounds;
        }
        rounds.push(names(&got));
        for j in &got {
            store.complete(&j.lease).await.unwrap();
        }
    }
}

#[tokio::test]
async fn a_keys_jobs_put_together_wait_hidden_and_run_in_order() {
    let check = pool().await;
    for (store, table) in stores().await {
        let mut jobs = Vec::new();
        for key in ["a", "b", "c"] {
            jobs.extend((0..4).map(|n| job(key, n)));
        }
        jobs.push(NewJob::from_json("q", json!({ "n": 9 })));
        store.put_many(jobs).await.unwrap();
        assert_eq!(hidden(&check, &table).await, 9, "all but each key's first");
        let got = store.claim(&claim()).await.unwrap();
        assert_eq!(names(&got), ["-9", "a0", "b0", "c0"]);
        assert_eq!(
            hidden(&check, &table).await,
            9,
            "a claim leaves its key's next hidden"
        );
        for j in &got {
            store.complete(&j.lease).await.unwrap();
        }
        assert_eq!(
            hidden(&check, &table).await,
            6,
            "each completion shows its key's next"
        );
        let rest = drain(&store).await;
        assert_eq!(
            rest,
            [["a1", "b1", "c1"], ["a2", "b2", "c2"], ["a3", "b3", "c3"]]
        );
        assert_eq!(store.stats("q").await.unwrap().ready, 0);
    }
}

#[tokio::test]
async fn a_job_put_later_among_a_keys_hidden_jobs_runs_in_its_place() {
    for (store, _) in stores().await {
        let ago = |s: i64| Utc::now() - chrono::Duration::seconds(s);
        // a1 shown, a2 and a3 hidden behind it; b, put alone, runs between a2 and a3.
        store
            .put_many(vec![
                job("k", 1).run_at(ago(30)),
                job("k", 2).run_at(ago(20)),
                job("k", 3).run_at(ago(10)),
            ])
            .await
            .unwrap();
        store
            .put_job(
                NewJob::from_json("q", json!({ "key": "k", "n": 25 }))
                    .serial_key("k")
                    .run_at(ago(15)),
            )
            .await
            .unwrap();
        let order: Vec<String> = drain(&store).await.into_iter().flatten().collect();
        assert_eq!(order, ["k1", "k2", "k25", "k3"]);
    }
}

#[tokio::test]
async fn cancelling_a_keys_first_job_shows_the_next() {
    for (store, _) in stores().await {
        let ids = store
            .put_many(vec![job("k", 0), job("k", 1), job("k", 2)])
            .await
            .unwrap();
        store.cancel(ids[0]).await.unwrap();
        let order: Vec<String> = drain(&store).await.into_iter().flatten().collect();
        assert_eq!(order, ["k1", "k2"]);
    }
}

#[tokio::test]
async fn prune_shows_the_jobs_of_a_key_whose_first_job_plain_sql_removed() {
    let check = pool().await;
    for (store, table) in stores().await {
        let ids = store
            .put_many(vec![job("k", 0), job("k", 1), job("k", 2)])
            .await
            .unwrap();
        let sql = format!("DELETE FROM {} WHERE id = {}", table.qualified(), ids[0].0);
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&check)
            .await
            .unwrap();
        assert!(
            store.claim(&claim()).await.unwrap().is_empty(),
            "the rest wait hidden until shown"
        );
        store.prune().await.unwrap();
        let order: Vec<String> = drain(&store).await.into_iter().flatten().collect();
        assert_eq!(order, ["k1", "k2"]);
    }
}

#[tokio::test]
async fn prune_leaves_hidden_the_next_jobs_of_a_key_whose_first_job_runs() {
    let check = pool().await;
    for (store, table) in stores().await {
        store
            .put_many(vec![job("k", 0), job("k", 1), job("k", 2)])
            .await
            .unwrap();
        let running = store.claim(&claim()).await.unwrap();
        assert_eq!(names(&running), ["k0"]);
        store.prune().await.unwrap();
        assert_eq!(
            hidden(&check, &table).await,
            2,
            "the running job shows the next when it ends"
        );
        store.complete(&running[0].lease).await.unwrap();
        let order: Vec<String> = drain(&store).await.into_iter().flatten().collect();
        assert_eq!(order, ["k1", "k2"]);
    }
}

/// What the wait statement answers for queue `q` of `table` (when a job may next be
/// claimable), and its plan, run.
async fn next_run(pool: &PgPool, table: &QueueTable) -> (Option<DateTime<Utc>>, String) {
    let sql = pq_api::postgres::Statements::new(table).next_run(1);
    let queues = vec!["q".to_string()];
    let at: Option<DateTime<Utc>> = sqlx::query_scalar(AssertSqlSafe(sql.clone()))
        .bind(&queues)
        .fetch_one(pool)
        .await
        .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}"
    )))
    .bind(&queues)
    .fetch_all(pool)
    .await
    .unwrap();
    (at, plan.join("\n"))
}

/// Runs `statement`, with `base` as `$1` if it has one.
async fn run_at_base(pool: &PgPool, statement: &str, base: DateTime<Utc>) {
    let q = sqlx::query(AssertSqlSafe(statement.to_string()));
    let q = if statement.contains("$1") {
        q.bind(base)
    } else {
        q
    };
    q.execute(pool).await.unwrap();
}

/// The pages a plan read, from its top node's `Buffers:` line.
fn pages_read(plan: &str) -> u64 {
    let line = plan
        .lines()
        .find(|l| l.trim_start().starts_with("Buffers:"))
        .unwrap_or_else(|| panic!("no buffers in\n{plan}"));
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(_, n)| n.parse::<u64>().unwrap())
        .sum()
}

#[tokio::test]
async fn a_keys_next_run_counts_every_priority_deadline_and_lease_and_reads_few_pages() {
    let check = pool().await;
    let (_store, table) = stores().await.remove(0);
    let t = table.qualified();
    let keys = t.replace("\"jobs\"", "\"jobs_keys\"");
    let base: DateTime<Utc> = "2100-01-01T00:00:00Z".parse().unwrap();
    let at = |minutes: i64| base + chrono::Duration::minutes(minutes);
    // Key `big`: 20,000 jobs from 60 minutes on, of two priorities, one in ten with a
    // deadline. Key `a`: its first job in claim order (priority 9) is due later than its
    // other one. Key `d`: its earliest job has a deadline.
    let fill = format!(
        "INSERT INTO {t} (queue, payload, key, priority, run_at, expected_at) \
         SELECT 'q', '{{}}', 'big', (i % 2) * 5, $1 + interval '1 hour' + i * interval '1 second', \
                CASE WHEN i % 10 = 0 THEN $1 + interval '5 hours' + i * interval '1 second' END \
         FROM generate_series(1, 20000) AS i; \
         INSERT INTO {t} (queue, payload, key, priority, run_at, expected_at) VALUES \
           ('q', '{{}}', 'a', 9, $1 + interval '3 hours', NULL), \
           ('q', '{{}}', 'a', 0, $1 + interval '40 minutes', NULL), \
           ('q', '{{}}', 'd', 0, $1 + interval '20 minutes', $1 + interval '6 hours'), \
           ('q', '{{}}', 'd', 0, $1 + interval '2 hours', NULL); \
         INSERT INTO {keys} (queue, key) VALUES ('q', 'big'), ('q', 'a'), ('q', 'd'); \
         ANALYZE {t}; ANALYZE {keys};"
    );
    for statement in fill.split("; ") {
        run_at_base(&check, statement, base).await;
    }
    let (next, plan) = next_run(&check, &table).await;
    assert_eq!(next, Some(at(20)), "a job with a deadline");
    assert!(
        !plan.contains(&format!("Seq Scan on {} ", table.table())),
        "{plan}"
    );
    // Two probes to step from one (key, priority) to the next, two for each one's earliest
    // job: a handful of pages a key, however long its backlog.
    assert!(pages_read(&plan) < 150, "{plan}");

    // Each change in turn, with what the wait statement must then answer.
    let steps = [
        (
            format!("DELETE FROM {t} WHERE key = 'd' AND expected_at IS NOT NULL"),
            at(40),
            "a job behind one of a higher priority due later",
        ),
        (
            format!(
                "UPDATE {keys} SET running_id = 1, running_until = $1 + interval '50 minutes' \
                 WHERE key = 'a'"
            ),
            at(50),
            "not before the key's lease runs out",
        ),
        (
            format!("DELETE FROM {t} WHERE key = 'a'"),
            at(60) + chrono::Duration::seconds(1),
            "the earliest of a long backlog",
        ),
    ];
    for (change, expected, what) in steps {
        run_at_base(&check, &change, base).await;
        assert_eq!(next_run(&check, &table).await.0, Some(expected), "{what}");
    }
}

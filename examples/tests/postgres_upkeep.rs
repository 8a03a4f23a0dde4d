//! Both SQL stores' upkeep of their table: vacuums after so many claims, only by the table's
//! owner, and an analyze of a table filled without statistics.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a test's verdict

use std::time::Duration;

use pq_api::postgres::QueueTable;
use pq_api::{Claim, NewJob, QueueStore};
use pq_conformance::postgres::{database_url, fresh_schema};
use pq_diesel::DieselStore;
use pq_sqlx::SqlxStore;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};

mod support;

async fn pool() -> PgPool {
    PgPoolOptions::new()
        .max_connections(8)
        .connect(&database_url().await)
        .await
        .expect("connect")
}

async fn store() -> SqlxStore {
    let table = QueueTable::new(&fresh_schema(), "pq_jobs").unwrap();
    SqlxStore::with_table(pool().await, table).await.unwrap()
}

/// How many times the table was vacuumed by a `VACUUM` statement (autovacuum not counted).
async fn vacuum_count(pool: &PgPool, table: &QueueTable) -> i64 {
    table_stat(pool, table, "vacuum_count").await
}

/// `column` of `table`'s row in `pg_stat_user_tables`.
async fn table_stat(pool: &PgPool, table: &QueueTable, column: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT {column} FROM pg_stat_user_tables WHERE relid = $1::regclass"
    )))
    .bind(table.qualified())
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Four stores, each on a fresh table: sqlx built as `sqlx[0]` makes it (on) and as `sqlx[1]`
/// makes it (off), then diesel the same.
async fn on_and_off(
    pool: &PgPool,
    sqlx: [fn(SqlxStore) -> SqlxStore; 2],
    diesel: [fn(DieselStore) -> DieselStore; 2],
) -> Vec<(Box<dyn QueueStore>, QueueTable)> {
    let url = database_url().await;
    let mut stores: Vec<(Box<dyn QueueStore>, QueueTable)> = Vec::new();
    for build in sqlx {
        let table = QueueTable::new(&fresh_schema(), "pq_jobs").unwrap();
        let store = SqlxStore::with_table(pool.clone(), table.clone());
        stores.push((Box::new(build(store.await.unwrap())), table));
    }
    for build in diesel {
        let table = QueueTable::new(&fresh_schema(), "pq_jobs").unwrap();
        let store = DieselStore::with_table(DieselStore::pool(&url, 4).unwrap(), table.clone());
        stores.push((Box::new(build(store.await.unwrap())), table));
    }
    stores
}

/// Works 128 jobs through `store` in claims of 32.
async fn claim_and_complete_128(store: &dyn QueueStore) {
    let jobs = (0..128).map(|n| NewJob::new("q", &json!(n)).unwrap());
    store.put_many(jobs.collect()).await.unwrap();
    for _ in 0..4 {
        let claimed = store.claim(&Claim::new(["q"]).limit(32)).await.unwrap();
        assert_eq!(claimed.len(), 32);
        let done: Vec<pq_api::Done> = claimed.iter().map(|c| (&c.lease).into()).collect();
        assert_eq!(store.complete_many(&done).await.unwrap().len(), 32);
    }
}

/// Every claim leaves an index entry at the head of the claim index that only a vacuum
/// removes, so each store vacuums its table after so many claimed jobs (here 64), unless told
/// not to (0).
#[tokio::test]
async fn both_stores_vacuum_their_table_after_so_many_claimed_jobs_unless_told_not_to() {
    let pool = pool().await;
    let stores = on_and_off(
        &pool,
        [|s| s.vacuum_every(64), |s| s.vacuum_every(0)],
        [|s| s.vacuum_every(64), |s| s.vacuum_every(0)],
    )
    .await;
    let [sqlx_on, sqlx_off, diesel_on, diesel_off] = [0, 1, 2, 3].map(|i| stores[i].1.clone());
    for (store, _) in &stores {
        claim_and_complete_128(&**store).await;
    }
    // The vacuums run in the background, and PostgreSQL reports them a little later.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while vacuum_count(&pool, &sqlx_on).await == 0 || vacuum_count(&pool, &diesel_on).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a store with vacuum_every(64) did not vacuum after 128 claimed jobs"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(vacuum_count(&pool, &sqlx_off).await, 0);
    assert_eq!(vacuum_count(&pool, &diesel_off).await, 0);
    for (store, _) in &stores {
        assert_eq!(store.stats("q").await.unwrap().ready, 0);
    }
}

/// PostgreSQL skips a `VACUUM` by a role that does not own the table (with a warning), so
/// before its first vacuum a store asks [`Statements::may_vacuum`](pq_api::postgres::Statements),
/// and leaves the table to autovacuum if the answer is no: the owner may, a role with every
/// privilege on the table but not its owner may not.
#[tokio::test]
async fn only_the_tables_owner_may_vacuum_it() {
    let store = store().await;
    let sql = pq_api::postgres::Statements::new(store.table());
    let schema = store.table().schema();
    let role = format!("{schema}_app");
    let mut conn = store.pool().acquire().await.unwrap();
    let run = |text: String| sqlx::raw_sql(AssertSqlSafe(text));
    run(format!(
        "CREATE ROLE {role} NOLOGIN; GRANT USAGE ON SCHEMA \"{schema}\" TO {role}; \
         GRANT ALL ON ALL TABLES IN SCHEMA \"{schema}\" TO {role}"
    ))
    .execute(&mut *conn)
    .await
    .unwrap();
    let may = || sqlx::query_scalar::<_, bool>(AssertSqlSafe(sql.may_vacuum.clone()));
    assert!(may().fetch_one(&mut *conn).await.unwrap(), "the owner may");
    run(format!("SET ROLE {role}"))
        .execute(&mut *conn)
        .await
        .unwrap();
    let app = may().fetch_one(&mut *conn).await;
    run(format!(
        "RESET ROLE; DROP OWNED BY {role}; DROP ROLE {role}"
    ))
    .execute(&mut *conn)
    .await
    .unwrap();
    assert!(!app.unwrap(), "a role that does not own the table may not");
}

/// A table filled after it was created has no planner statistics until autovacuum analyzes
/// it, and the claim is planned as a scan of the whole backlog meanwhile; so each store
/// checks while it claims, and analyzes such a table itself, unless told not to.
#[tokio::test]
async fn both_stores_analyze_a_table_filled_without_statistics_unless_told_not_to() {
    let pool = pool().await;
    let stores = on_and_off(
        &pool,
        [|s| s, |s| s.analyze_when_stale(false)],
        [|s| s, |s| s.analyze_when_stale(false)],
    )
    .await;
    let [sqlx_on, sqlx_off, diesel_on, diesel_off] = [0, 1, 2, 3].map(|i| stores[i].1.clone());
    for (store, table) in &stores {
        // Only the store may analyze it here.
        sqlx::query(AssertSqlSafe(format!(
            "ALTER TABLE {} SET (autovacuum_enabled = false)",
            table.qualified()
        )))
        .execute(&pool)
        .await
        .unwrap();
        let jobs = (0..5000).map(|n| NewJob::new("q", &json!(n)).unwrap());
        store.put_many(jobs.collect()).await.unwrap();
    }
    let analyzed = |t| table_stat(&pool, t, "analyze_count");
    // The server reports the inserted rows within a second or so, and each store checks at
    // most once a second: claim, a batch per store, until both checking stores have analyzed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (mut rounds, mut rounds_after) = (0, 0);
    while rounds_after < 8 {
        rounds += 1;
        for (store, _) in &stores {
            let claimed = store.claim(&Claim::new(["q"]).limit(32)).await.unwrap();
            assert_eq!(claimed.len(), 32);
        }
        if analyzed(&sqlx_on).await > 0 && analyzed(&diesel_on).await > 0 {
            // Claims for a few seconds more: the other two had as long to analyze, and more.
            rounds_after += 1;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a checking store did not analyze a table of 5,000 jobs without statistics"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(analyzed(&sqlx_off).await, 0);
    assert_eq!(analyzed(&diesel_off).await, 0);
    for (store, table) in &stores {
        assert_eq!(table_stat(&pool, table, "autoanalyze_count").await, 0);
        assert_eq!(store.stats("q").await.unwrap().running, 32 * rounds);
    }
}

/// Throughput records come back only from the minutes asked for, oldest first, and `prune`
/// removes those older than a day (`THROUGHPUT_KEPT`), keeping the rest: on both stores.
#[tokio::test]
async fn throughput_records_are_read_by_minute_and_pruned_after_a_day() {
    let pool = pool().await;
    for (driver, store, table) in support::stores(4).await {
        let records = format!("\"{}\".\"{}_throughput\"", table.schema(), table.table());
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {records} (queue, minute, completed, failed) VALUES \
             ('q', date_trunc('minute', now()) - interval '10 minutes', 10, 0), \
             ('q', date_trunc('minute', now()) - interval '25 hours', 25, 0)"
        )))
        .execute(&pool)
        .await
        .unwrap();
        store
            .record_throughput(&[pq_api::Tally::new("q", 1, 2)])
            .await
            .unwrap();
        let completed = |records: Vec<pq_api::Throughput>| {
            records.iter().map(|r| r.completed).collect::<Vec<_>>()
        };
        let two_days = Duration::from_secs(2 * 24 * 3600);
        let recent = store.throughput(Duration::from_secs(120)).await.unwrap();
        assert_eq!(
            recent
                .iter()
                .map(|r| (r.completed, r.failed))
                .collect::<Vec<_>>(),
            [(1, 2)],
            "{driver:?}"
        );
        assert_eq!(
            completed(store.throughput(two_days).await.unwrap()),
            [25, 10, 1],
            "{driver:?}"
        );
        store.prune().await.unwrap();
        assert_eq!(
            completed(store.throughput(two_days).await.unwrap()),
            [10, 1],
            "{driver:?}"
        );
    }
}

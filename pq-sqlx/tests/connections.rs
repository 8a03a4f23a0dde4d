//! The sqlx store's connections: the listener comes back after its connection dies, and a
//! busy store keeps a warm connection that it gives back when idle.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a test's verdict

use std::time::Duration;

use pq_api::postgres::QueueTable;
use pq_api::{Claim, NewJob, QueueStore, QueueStoreExt};
use pq_conformance::postgres::{database_url, fresh_schema};
use pq_sqlx::SqlxStore;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};

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

/// Kills the store's LISTEN connection, puts a job from elsewhere, and expects `wait` to be
/// woken all the same once the listener has reconnected.
async fn wait_survives_a_killed_listener(
    store: &dyn QueueStore,
    pool: &PgPool,
    table: &QueueTable,
) {
    // Start the listener and let it connect.
    assert!(!store
        .wait(&["k".to_string()], Duration::from_millis(200))
        .await
        .unwrap());
    let listen = format!("LISTEN \"{}\"", table.channel());
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&listen)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        killed,
        vec![true],
        "exactly one listener connection was killed"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sql = format!(
        "INSERT INTO {} (queue, payload) VALUES ('k', '1')",
        table.qualified()
    );
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(pool)
        .await
        .unwrap();
    let start = tokio::time::Instant::now();
    let mut woke = false;
    while !woke && start.elapsed() < Duration::from_secs(10) {
        woke = store
            .wait(&["k".to_string()], Duration::from_secs(10))
            .await
            .unwrap();
    }
    assert!(woke, "wait was never woken after the listener died");
    assert_eq!(store.claim(&Claim::new(["k"])).await.unwrap().len(), 1);
}

#[tokio::test]
async fn sqlx_listener_is_reestablished_after_its_connection_dies() {
    let store = store().await;
    let table = store.table().clone();
    wait_survives_a_killed_listener(&store, store.pool(), &table).await;
}

#[tokio::test]
async fn a_busy_store_keeps_one_warm_connection_and_gives_it_back_when_idle() {
    // The pool opens four connections up front; handed out oldest first, sequential
    // statements would go round all four server processes.
    let app = format!("pq-warm-{}", fastrand::u32(..));
    let options: sqlx::postgres::PgConnectOptions = database_url().await.parse().unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .min_connections(4)
        .connect_with(options.application_name(&app))
        .await
        .unwrap();
    let table = QueueTable::new(&fresh_schema(), "pq_jobs").unwrap();
    let store = SqlxStore::with_table(pool.clone(), table).await.unwrap();
    let jobs = (0..20).map(|n| NewJob::new("q", &json!(n)).unwrap());
    store.put_many(jobs.collect()).await.unwrap();
    for _ in 0..20 {
        let job = store.claim(&Claim::new(["q"])).await.unwrap().remove(0);
        store.complete(&job.lease).await.unwrap();
    }
    let observer = self::pool().await;
    let claimed_on: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
         AND (query LIKE 'WITH lease AS%' OR query LIKE 'WITH done AS%')",
    )
    .bind(&app)
    .fetch_one(&observer)
    .await
    .unwrap();
    assert_eq!(
        claimed_on, 1,
        "server processes that ran the claims and completions"
    );

    // Idle, the store holds nothing: every connection is the application's again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pool.num_idle(), usize::try_from(pool.size()).unwrap());
    let mut held = Vec::new();
    for _ in 0..4 {
        let conn = tokio::time::timeout(Duration::from_millis(200), pool.acquire()).await;
        held.push(conn.expect("a connection the store still holds").unwrap());
    }
}

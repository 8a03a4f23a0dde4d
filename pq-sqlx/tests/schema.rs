//! The sqlx store's schema: hostile names refused before any SQL, migrations safe to run
//! concurrently, and a missing table or closed pool reported as such.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a test's verdict

use pq_api::postgres::QueueTable;
use pq_api::{Error, QueueStoreExt};
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

#[tokio::test]
async fn hostile_schema_and_table_names_are_rejected_before_any_sql() {
    for (schema, table) in [
        ("public", "jobs; DROP TABLE users"),
        ("public\"", "jobs"),
        ("Public", "jobs"),
        ("pg_catalog", "jobs"),
        ("", "jobs"),
        ("public", &"t".repeat(49)),
    ] {
        let err = QueueTable::new(schema, table).unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { .. }),
            "{schema}.{table}: {err:?}"
        );
    }
}

#[tokio::test]
async fn migrating_is_idempotent_and_safe_when_concurrent() {
    let table = QueueTable::new(&fresh_schema(), "jobs").unwrap();
    let pool = pool().await;
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (pool, table) = (pool.clone(), table.clone());
            tokio::spawn(async move { SqlxStore::with_table(pool, table).await.map(|_| ()) })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let store = SqlxStore::with_table(pool.clone(), table.clone())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let versions: Vec<i32> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT version FROM \"{}\".jobs_migrations",
        table.schema()
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    let all: Vec<i32> = pq_api::postgres::migrations(&table)
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(versions, all);
}

#[tokio::test]
async fn a_missing_table_is_a_schema_error_and_a_closed_pool_is_retryable() {
    let table = QueueTable::new(&fresh_schema(), "never_migrated").unwrap();
    let pool = pool().await;
    let store = SqlxStore::without_migrating(pool.clone(), table);
    let err = store.put("q", &json!(1)).await.unwrap_err();
    assert!(matches!(err, Error::Schema(_)), "{err:?}");
    assert!(!err.is_retryable());

    let store = self::store().await;
    store.pool().close().await;
    let err = store.put("q", &json!(1)).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(err.is_retryable());
}

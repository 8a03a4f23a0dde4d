//! The whole conformance suite on `SqlxStore`, against real PostgreSQL: each case in a fresh
//! schema of its own, with the default table name.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a test's verdict

use std::sync::Arc;

use pq_api::postgres::QueueTable;
use pq_api::QueueStore;
use pq_conformance::postgres::{database_url, fresh_schema};
use pq_sqlx::SqlxStore;
use sqlx::postgres::PgPoolOptions;

async fn new_store() -> Arc<dyn QueueStore> {
    let pool = PgPoolOptions::new()
        .max_connections(12)
        .connect(&database_url().await)
        .await
        .expect("connect to the test database");
    let table = QueueTable::new(&fresh_schema(), "pq_jobs").expect("valid names");
    Arc::new(SqlxStore::with_table(pool, table).await.expect("migrate"))
}

pq_conformance::suite!(new_store);

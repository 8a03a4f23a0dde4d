//! The whole conformance suite on `DieselStore`, against real PostgreSQL: each case in a fresh
//! schema of its own, with a custom table name.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a test's verdict

use std::sync::Arc;

use pq_api::postgres::QueueTable;
use pq_api::QueueStore;
use pq_conformance::postgres::{database_url, fresh_schema};
use pq_diesel::DieselStore;

async fn new_store() -> Arc<dyn QueueStore> {
    let pool = DieselStore::pool(&database_url().await, 12).expect("pool");
    let table = QueueTable::new(&fresh_schema(), "app_jobs").expect("valid names");
    Arc::new(DieselStore::with_table(pool, table).await.expect("migrate"))
}

pq_conformance::suite!(new_store);

//! The one fixture of the PostgreSQL behaviour tests: a store of each driver on a fresh
//! table, and a plain connection pool for what a test does behind the store's back. A test
//! that holds for every SQL store loops over [`DRIVERS`].
#![allow(dead_code, unreachable_pub)] // each test file uses its own part of it

use std::sync::Arc;

use pq_api::postgres::QueueTable;
use pq_api::QueueStore;
use pq_conformance::postgres::{database_url, fresh_schema};
use pq_diesel::DieselStore;
use pq_sqlx::SqlxStore;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};

/// A driver of the one PostgreSQL store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// `pq-sqlx`.
    Sqlx,
    /// `pq-diesel`.
    Diesel,
}

/// Every driver: a behaviour of the SQL stores is checked on each.
pub const DRIVERS: [Driver; 2] = [Driver::Sqlx, Driver::Diesel];

impl Driver {
    /// Opens (creating or upgrading) `table` through this driver, on a pool of `connections`.
    pub async fn open(self, table: &QueueTable, connections: u32) -> Arc<dyn QueueStore> {
        match self {
            Driver::Sqlx => Arc::new(sqlx_store(table, connections).await),
            Driver::Diesel => {
                let size = usize::try_from(connections).unwrap();
                let pool = DieselStore::pool(&database_url().await, size).unwrap();
                Arc::new(DieselStore::with_table(pool, table.clone()).await.unwrap())
            }
        }
    }

    /// Its name, as [`Driver::named`] reads it (a child process learns its driver so).
    pub fn name(self) -> &'static str {
        match self {
            Driver::Sqlx => "sqlx",
            Driver::Diesel => "diesel",
        }
    }

    /// The driver named `name`.
    pub fn named(name: &str) -> Driver {
        DRIVERS
            .into_iter()
            .find(|d| d.name() == name)
            .unwrap_or_else(|| panic!("no driver {name:?}"))
    }
}

/// The sqlx store on `table`, for what only it has (its pool, its `claim_in`).
pub async fn sqlx_store(table: &QueueTable, connections: u32) -> SqlxStore {
    SqlxStore::with_table(pool(connections).await, table.clone())
        .await
        .unwrap()
}

/// A table of `name` in a fresh schema of its own.
pub fn fresh_table(name: &str) -> QueueTable {
    QueueTable::new(&fresh_schema(), name).unwrap()
}

/// A store of each driver, each on a fresh table named `jobs`, each with `connections`.
pub async fn stores(connections: u32) -> Vec<(Driver, Arc<dyn QueueStore>, QueueTable)> {
    let mut out = Vec::new();
    for driver in DRIVERS {
        let table = fresh_table("jobs");
        out.push((driver, driver.open(&table, connections).await, table));
    }
    out
}

/// A plain pool on the test database, for what a test does behind a store's back.
pub async fn pool(connections: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(connections)
        .connect(&database_url().await)
        .await
        .expect("connect to the test database")
}

/// Runs `sql` (one or more statements) on `pool`.
pub async fn exec(pool: &PgPool, sql: String) {
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(pool)
        .await
        .unwrap();
}

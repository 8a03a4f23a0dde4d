//! The PostgreSQL machinery both SQL stores (`pq-sqlx`, `pq-diesel`) are built from: the
//! table's names ([`table`]), the statements they send ([`statements`]), the schema and its
//! migrations ([`migrations`](mod@migrations)), the rows they decode and the arrays they bind
//! ([`rows`]), the upkeep of the table ([`upkeep`]), the connections a store keeps while busy ([`conn`]), the single puts it sends together
//! ([`group`]), the
//! wakeups behind `wait` ([`listen`]), and the store itself ([`store`]), written once over the
//! [`driver`] seam that `pq-sqlx` and `pq-diesel` each implement.
//!
//! This is the stores' machinery, not an API to build an application on: it changes whenever
//! the stores need it to, without notice. What an application needs of it is
//! [`QueueTable`] (where the jobs live) and [`schema_ddl`] (the schema, for your own
//! migration tool); both stores re-export [`QueueTable`].

pub mod conn;
pub mod driver;
pub mod group;
pub mod listen;
pub mod migrations;
mod render;
pub mod rows;
pub mod statements;
pub mod store;
pub mod table;
pub mod upkeep;

pub use crate::job::micros;
pub use migrations::{migrations, partition_script, schema_ddl, Migration, MigrationStatements};
pub use rows::{
    completed_in_order, freeing, parse_state, pg_time, retry_params, DoneArrays, FinishedRow,
    InsertArrays, JobRow, Undecodable,
};
pub use statements::{begin_bounded, Statements, CLAIM_TEXTS_KEPT, HANDLER_IDLE_TIMEOUT};
pub use store::{PgStore, RunIn, Transactional};
pub use table::{QueueTable, MAX_SCHEMA_LEN, MAX_TABLE_LEN};
pub use upkeep::{Analyzing, Rotating, Upkeep, Vacuuming};

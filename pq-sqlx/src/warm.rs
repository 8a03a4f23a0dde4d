//! The few connections the store keeps checked out of its pool while it is busy
//! ([`pq_api::postgres::conn`]).
//!
//! sqlx's pool hands idle connections out oldest first and, on every release, spawns a task
//! that pings the connection before it is idle again: a query run on the pool costs a second
//! round trip and a task, and a busy worker cycles through every connection the pool has ever
//! opened (each a server process with cold caches and its own prepared statements); the
//! figures are in `docs/design.md`, "Kept connections".

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use pq_api::postgres::conn::{self as warm, Lane};
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};

use pq_api::Result;

use crate::map_err;

/// The store's kept connections, and the pool they come from.
#[derive(Debug)]
pub(crate) struct Warm {
    pool: PgPool,
    kept: Arc<warm::Warm<PoolConnection<Postgres>>>,
}

/// A connection from [`Warm::get`]: kept again by [`Warm::keep`], otherwise returned to
/// the pool when dropped (as after an error or a cancelled statement, when the pool's check
/// of the connection is wanted).
pub(crate) struct WarmConn(warm::WarmConn<PoolConnection<Postgres>>);

impl Deref for WarmConn {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.0
    }
}

impl DerefMut for WarmConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.0
    }
}

impl Warm {
    pub(crate) fn new(pool: PgPool) -> Arc<Self> {
        Arc::new(Warm {
            pool,
            kept: warm::Warm::new(),
        })
    }

    /// A kept connection for a statement of `lane` ([`warm::Warm::take`]), else one from the
    /// pool.
    pub(crate) async fn get(&self, lane: Lane) -> Result<WarmConn> {
        if self.pool.is_closed() {
            self.kept.clear();
        } else if let Some(c) = self.kept.take(lane) {
            return Ok(WarmConn(c));
        }
        let conn = self.pool.acquire().await.map_err(map_err)?;
        Ok(WarmConn(warm::WarmConn::new(conn, lane)))
    }

    /// Keeps `conn` for the next statement, after the statement on it succeeded.
    pub(crate) fn keep(&self, conn: WarmConn) {
        if !self.pool.is_closed() {
            let size = self.pool.options().get_max_connections();
            self.kept
                .keep_from(conn.0, usize::try_from(size).unwrap_or(usize::MAX));
        }
    }
}

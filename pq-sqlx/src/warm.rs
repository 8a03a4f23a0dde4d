//! The few connections the store keeps checked out of its pool while it is busy.
//!
//! sqlx's pool hands idle connections out oldest first and, on every release, spawns a task
//! that pings the connection before it is idle again: a query run on the pool costs a second
//! round trip and a task, and a busy worker cycles through every connection the pool has ever
//! opened (each a server process with cold caches and its own prepared statements). Measured
//! on the benchmark's bare claim+complete loop: 13,000 jobs/s on two held connections against
//! 8,500 on the pool. So the store keeps up to [`MAX_WARM`] connections after its statements
//! succeed, claims on one and other statements on another ([`Lane`]), most recently used
//! first, and gives each back to the pool once it has gone
//! unused for [`KEEP_IDLE`], or has been kept for [`KEEP_AT_MOST`] (the pool's own checks,
//! lifetime and release hooks then run on it).

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};
use tokio::time::Instant;

use pq_api::Result;

use crate::map_err;

/// Connections kept at most: the worker claims and completes at once, on two.
pub(crate) const MAX_WARM: usize = 2;
/// A kept connection unused for this long goes back to the pool.
pub(crate) const KEEP_IDLE: Duration = Duration::from_millis(100);
/// A connection goes back to the pool after this long kept, however busy.
pub(crate) const KEEP_AT_MOST: Duration = Duration::from_secs(30);

/// Which statements a connection serves: claims keep to one kept connection and the rest to
/// another, as the benchmark's bare loop does. Measured on that loop (100,000 jobs, claim and
/// complete pipelined on two connections): the two swapping roles every round ran 24,200
/// jobs/s, each keeping to its own 29,400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Claims.
    Claim,
    /// Every other statement.
    Rest,
}

/// Which of the kept connections, oldest first, serves a statement of `lane`: the most
/// recently used of its lane, else the most recently used.
fn pick<I>(mut kept: I, lane: Lane) -> Option<usize>
where
    I: ExactSizeIterator<Item = Lane> + DoubleEndedIterator,
{
    let latest = kept.len().checked_sub(1);
    kept.rposition(|k| k == lane).or(latest)
}

struct Kept {
    conn: PoolConnection<Postgres>,
    lane: Lane,
    since: Instant,
    used: Instant,
}

#[derive(Default)]
struct Idle {
    kept: Vec<Kept>,
    reaping: bool,
}

/// The store's kept connections.
pub(crate) struct Warm {
    pool: PgPool,
    idle: Mutex<Idle>,
}

impl std::fmt::Debug for Warm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warm")
            .field("kept", &self.lock().kept.len())
            .finish_non_exhaustive()
    }
}

/// A connection from [`Warm::get`]: kept again by [`Warm::keep`], otherwise returned to
/// the pool when dropped (as after an error or a cancelled statement, when the pool's check
/// of the connection is wanted).
pub(crate) struct WarmConn {
    conn: PoolConnection<Postgres>,
    lane: Lane,
    since: Instant,
}

impl Deref for WarmConn {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for WarmConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

impl Warm {
    pub(crate) fn new(pool: PgPool) -> Arc<Self> {
        Arc::new(Warm {
            pool,
            idle: Mutex::new(Idle::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Idle> {
        // The lock guards plain pushes and pops: a panic cannot leave it inconsistent.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The most recently used kept connection of `lane`, else the most recently used kept
    /// one, else one from the pool.
    pub(crate) async fn get(&self, lane: Lane) -> Result<WarmConn> {
        if !self.pool.is_closed() {
            let kept = {
                let mut idle = self.lock();
                pick(idle.kept.iter().map(|k| k.lane), lane).map(|i| idle.kept.remove(i))
            };
            if let Some(k) = kept {
                return Ok(WarmConn {
                    conn: k.conn,
                    lane,
                    since: k.since,
                });
            }
        }
        let conn = self.pool.acquire().await.map_err(map_err)?;
        Ok(WarmConn {
            conn,
            lane,
            since: Instant::now(),
        })
    }

    /// Keeps `conn` for the next statement, after the statement on it succeeded.
    pub(crate) fn keep(self: &Arc<Self>, conn: WarmConn) {
        let WarmConn {
            conn: c,
            lane,
            since,
        } = conn;
        let now = Instant::now();
        if self.pool.is_closed() || now.duration_since(since) >= KEEP_AT_MOST {
            return;
        }
        let (surplus, start_reaper) = {
            let mut idle = self.lock();
            idle.kept.push(Kept {
                conn: c,
                lane,
                since,
                used: now,
            });
            let surplus = if idle.kept.len() > MAX_WARM {
                Some(idle.kept.remove(0))
            } else {
                None
            };
            (surplus, !std::mem::replace(&mut idle.reaping, true))
        };
        drop(surplus);
        if start_reaper {
            tokio::spawn(self.clone().reap());
        }
    }

    /// Gives back what has gone unused for [`KEEP_IDLE`]; ends once nothing is kept.
    async fn reap(self: Arc<Self>) {
        loop {
            tokio::time::sleep(KEEP_IDLE).await;
            let (stale, finished) = {
                let mut idle = self.lock();
                let now = Instant::now();
                let (stale, fresh): (Vec<Kept>, Vec<Kept>) = std::mem::take(&mut idle.kept)
                    .into_iter()
                    .partition(|k| now.duration_since(k.used) >= KEEP_IDLE);
                idle.kept = fresh;
                idle.reaping = !idle.kept.is_empty();
                (stale, !idle.reaping)
            };
            // Dropped outside the lock: each goes back to the pool through its own task.
            drop(stale);
            if finished {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{pick, Lane};

    #[test]
    fn a_statement_takes_the_latest_connection_of_its_lane_else_the_latest() {
        use Lane::{Claim, Rest};
        assert_eq!(pick([].into_iter(), Claim), None);
        assert_eq!(pick([Claim, Rest].into_iter(), Claim), Some(0));
        assert_eq!(pick([Claim, Rest].into_iter(), Rest), Some(1));
        assert_eq!(pick([Rest, Claim, Rest].into_iter(), Rest), Some(2));
        assert_eq!(pick([Rest, Rest].into_iter(), Claim), Some(1));
    }
}

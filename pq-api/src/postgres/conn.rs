//! The few connections a SQL store keeps checked out of its pool while it is busy, shared by
//! the SQL stores.
//!
//! A worker claims and completes at once, round after round. Run on a pool, those statements
//! land on whichever connection the pool hands out, and a statement that moves to another
//! server process than its predecessor ran on is slower there (the figures are in
//! `docs/design.md`, "Kept connections"). So a store keeps up to [`MAX_WARM`] connections after its
//! statements succeed, claims on one and other statements on another ([`Lane`]), most recently
//! used first, and gives each back to the pool once it has gone unused for [`KEEP_IDLE`], or
//! has been kept for [`KEEP_AT_MOST`] (the pool's own checks, lifetime and release hooks then
//! run on it). A connection is kept only after its statement succeeded: after an error, or a
//! cancelled statement, the store drops it and the pool checks it.
//!
//! [`Warm`] holds the kept connections of any driver (`C`: sqlx's `PoolConnection`, a
//! deadpool `Object`, …); the store takes one with [`Warm::take`] before it goes to its pool
//! and hands it back with [`Warm::keep`].

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// Connections kept at most: the worker claims and completes at once, on two.
pub const MAX_WARM: usize = 2;
/// A kept connection unused for this long goes back to the pool.
pub const KEEP_IDLE: Duration = Duration::from_millis(100);
/// A connection goes back to the pool after this long kept, however busy.
pub const KEEP_AT_MOST: Duration = Duration::from_secs(30);

/// Which statements a connection serves: claims keep to one kept connection and the rest to
/// another, as the benchmark's bare loop does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
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

struct Kept<C> {
    conn: C,
    lane: Lane,
    since: Instant,
    used: Instant,
}

struct Idle<C> {
    kept: Vec<Kept<C>>,
    reaping: bool,
}

/// A store's kept connections.
pub struct Warm<C> {
    idle: Mutex<Idle<C>>,
}

impl<C> std::fmt::Debug for Warm<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warm")
            .field("kept", &self.lock().kept.len())
            .finish_non_exhaustive()
    }
}

/// A connection serving a statement of one [`Lane`]: kept again by [`Warm::keep`], otherwise
/// returned to the pool when dropped.
#[derive(Debug)]
pub struct WarmConn<C> {
    conn: C,
    lane: Lane,
    since: Instant,
}

impl<C> WarmConn<C> {
    /// `conn`, just taken from the pool, for a statement of `lane`.
    pub fn new(conn: C, lane: Lane) -> Self {
        WarmConn {
            conn,
            lane,
            since: Instant::now(),
        }
    }

    /// The pooled connection itself, not to be kept again.
    pub fn into_inner(self) -> C {
        self.conn
    }
}

impl<C> Deref for WarmConn<C> {
    type Target = C;
    fn deref(&self) -> &C {
        &self.conn
    }
}

impl<C> DerefMut for WarmConn<C> {
    fn deref_mut(&mut self) -> &mut C {
        &mut self.conn
    }
}

impl<C> Warm<C> {
    fn lock(&self) -> MutexGuard<'_, Idle<C>> {
        // The lock guards plain pushes and pops: a panic cannot leave it inconsistent.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<C: Send + 'static> Warm<C> {
    /// Nothing kept yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Warm {
            idle: Mutex::new(Idle {
                kept: Vec::new(),
                reaping: false,
            }),
        })
    }

    /// The most recently used kept connection of `lane`, else the most recently used kept
    /// one, if any is kept (else the store takes one from its pool: [`WarmConn::new`]).
    pub fn take(&self, lane: Lane) -> Option<WarmConn<C>> {
        let mut idle = self.lock();
        let i = pick(idle.kept.iter().map(|k| k.lane), lane)?;
        let k = idle.kept.remove(i);
        Some(WarmConn {
            conn: k.conn,
            lane,
            since: k.since,
        })
    }

    /// Keeps `conn` for the next statement, after the statement on it succeeded, unless it has
    /// been kept for [`KEEP_AT_MOST`] already; beyond [`MAX_WARM`], the least recently used
    /// goes back to the pool. Call it on a Tokio runtime: it starts the task that gives back
    /// what goes unused.
    pub fn keep(self: &Arc<Self>, conn: WarmConn<C>) {
        self.keep_from(conn, usize::MAX);
    }

    /// [`Warm::keep`] for a pool of at most `pool_size` connections: it keeps no more than
    /// leave one for everyone else (none, on a pool of one), so a small pool is never held
    /// by a store that is not using it.
    pub fn keep_from(self: &Arc<Self>, conn: WarmConn<C>, pool_size: usize) {
        let WarmConn { conn, lane, since } = conn;
        let limit = MAX_WARM.min(pool_size.saturating_sub(1));
        let now = Instant::now();
        if now.duration_since(since) >= KEEP_AT_MOST {
            return;
        }
        let (surplus, start_reaper) = {
            let mut idle = self.lock();
            idle.kept.push(Kept {
                conn,
                lane,
                since,
                used: now,
            });
            let surplus = if idle.kept.len() > limit {
                Some(idle.kept.remove(0))
            } else {
                None
            };
            let start_reaper = !idle.kept.is_empty() && !std::mem::replace(&mut idle.reaping, true);
            (surplus, start_reaper)
        };
        drop(surplus);
        if start_reaper {
            tokio::spawn(self.clone().reap());
        }
    }

    /// Gives every kept connection back to the pool (as when the pool closes).
    pub fn clear(&self) {
        let kept = std::mem::take(&mut self.lock().kept);
        drop(kept);
    }

    /// Gives back what has gone unused for [`KEEP_IDLE`]; ends once nothing is kept.
    async fn reap(self: Arc<Self>) {
        loop {
            tokio::time::sleep(KEEP_IDLE).await;
            let (stale, finished) = {
                let mut idle = self.lock();
                let now = Instant::now();
                let (stale, fresh): (Vec<Kept<C>>, Vec<Kept<C>>) = std::mem::take(&mut idle.kept)
                    .into_iter()
                    .partition(|k| now.duration_since(k.used) >= KEEP_IDLE);
                idle.kept = fresh;
                idle.reaping = !idle.kept.is_empty();
                (stale, !idle.reaping)
            };
            // Dropped outside the lock: each goes back to its pool.
            drop(stale);
            if finished {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{pick, Lane, Warm, WarmConn, KEEP_IDLE, MAX_WARM};

    #[test]
    fn a_statement_takes_the_latest_connection_of_its_lane_else_the_latest() {
        use Lane::{Claim, Rest};
        assert_eq!(pick([].into_iter(), Claim), None);
        assert_eq!(pick([Claim, Rest].into_iter(), Claim), Some(0));
        assert_eq!(pick([Claim, Rest].into_iter(), Rest), Some(1));
        assert_eq!(pick([Rest, Claim, Rest].into_iter(), Rest), Some(2));
        assert_eq!(pick([Rest, Rest].into_iter(), Claim), Some(1));
    }

    #[tokio::test]
    async fn kept_connections_serve_their_lane_and_go_back_once_unused() {
        let warm = Warm::<&'static str>::new();
        assert!(warm.take(Lane::Claim).is_none());
        warm.keep(WarmConn::new("a", Lane::Claim));
        warm.keep(WarmConn::new("b", Lane::Rest));
        assert_eq!(warm.take(Lane::Rest).map(WarmConn::into_inner), Some("b"));
        assert_eq!(warm.take(Lane::Rest).map(WarmConn::into_inner), Some("a"));
        assert!(warm.take(Lane::Claim).is_none());

        for name in ["a", "b", "c"] {
            warm.keep(WarmConn::new(name, Lane::Rest));
        }
        assert_eq!(
            format!("{warm:?}"),
            format!("Warm {{ kept: {MAX_WARM}, .. }}")
        );
        assert_eq!(warm.take(Lane::Claim).map(WarmConn::into_inner), Some("c"));
        warm.keep(WarmConn::new("c", Lane::Claim));

        tokio::time::sleep(KEEP_IDLE * 3).await;
        assert!(warm.take(Lane::Claim).is_none(), "unused ones go back");
    }

    #[tokio::test]
    async fn a_small_pool_keeps_one_connection_for_everyone_else() {
        let warm = Warm::<&'static str>::new();
        warm.keep_from(WarmConn::new("only", Lane::Claim), 1);
        assert!(
            warm.take(Lane::Claim).is_none(),
            "a pool of one keeps nothing"
        );
        warm.keep_from(WarmConn::new("a", Lane::Claim), 2);
        warm.keep_from(WarmConn::new("b", Lane::Rest), 2);
        assert_eq!(format!("{warm:?}"), "Warm { kept: 1, .. }");
        assert_eq!(warm.take(Lane::Claim).map(WarmConn::into_inner), Some("b"));
    }
}

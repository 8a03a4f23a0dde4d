//! Waking waiters from LISTEN/NOTIFY, shared by the SQL stores.
//!
//! A store runs one listener task per store (on its own connection) that feeds
//! [`Wakeups`]; [`Wakeups::wait`] implements [`QueueStore::wait`](crate::QueueStore::wait) on
//! top of it: it returns at once when the store reports a claimable job, sleeps until the next
//! scheduled time or lease expiry otherwise, wakes on a notification for one of its queues, and
//! falls back to polling every `poll` while the listener is down (so no job waits forever).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use crate::error::Result;

/// How often `wait` looks at the table while the listener connection is down.
pub const FALLBACK_POLL: Duration = Duration::from_secs(5);

/// What starts the payload of a notification that a running job was cancelled (its id
/// follows): a control character, which no queue name holds.
pub const CANCEL_MARK: char = '\u{1}';

/// How long a first `wait` gives the listener to connect before it relies on polling.
const CONNECT_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
enum Wake {
    Queue(Arc<str>),
    All,
}

/// The wake-up hub of one store.
#[derive(Debug)]
pub struct Wakeups {
    tx: broadcast::Sender<Wake>,
    /// Cancellations of running jobs heard: `Some(id)`, or `None` when some may have been
    /// missed (every holder should look).
    cancels: broadcast::Sender<Option<i64>>,
    connected: watch::Sender<bool>,
    started: AtomicBool,
}

impl Default for Wakeups {
    fn default() -> Self {
        Wakeups {
            tx: broadcast::channel(1024).0,
            cancels: broadcast::channel(256).0,
            connected: watch::channel(false).0,
            started: AtomicBool::new(false),
        }
    }
}

impl Wakeups {
    /// True exactly once: the caller must then start the listener task.
    pub fn claim_start(&self) -> bool {
        !self.started.swap(true, Ordering::AcqRel)
    }

    /// A notification arrived: a queue's name, or [`CANCEL_MARK`] and the id of a running job
    /// that was cancelled.
    pub fn notify(&self, payload: &str) {
        match payload.strip_prefix(CANCEL_MARK) {
            Some(id) => {
                let _ = self.cancels.send(id.parse().ok());
            }
            None => {
                let _ = self.tx.send(Wake::Queue(Arc::from(payload)));
            }
        }
    }

    /// Wake every waiter, and every holder of a running job: notifications may have been
    /// missed (listener reconnected).
    pub fn notify_all(&self) {
        let _ = self.tx.send(Wake::All);
        let _ = self.cancels.send(None);
    }

    /// Tells every holder of a running job to look whether it was cancelled: cancellations
    /// may have gone unheard (before the listener first listened).
    pub fn recheck_cancels(&self) {
        let _ = self.cancels.send(None);
    }

    /// Resolves when a cancellation of job `id` may have been heard (see
    /// [`QueueStore::cancel_requested`](crate::QueueStore::cancel_requested)).
    pub async fn cancelled(&self, id: i64) {
        let mut rx = self.cancels.subscribe();
        loop {
            match rx.recv().await {
                Ok(Some(heard)) if heard != id => continue,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        }
    }

    /// The listener is (or is no longer) listening. On a reconnection the listener should
    /// also [`notify_all`](Self::notify_all): notifications sent meanwhile were lost.
    pub fn set_connected(&self, connected: bool) {
        self.connected.send_replace(connected);
    }

    /// Waits as [`QueueStore::wait`](crate::QueueStore::wait) specifies. `next_run` asks the
    /// store for the earliest `run_at` of a pending job in `queues` and the store's clock.
    pub async fn wait<F, Fut>(
        &self,
        queues: &[String],
        timeout: Duration,
        poll: Duration,
        next_run: F,
    ) -> Result<bool>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(Option<DateTime<Utc>>, DateTime<Utc>)>>,
    {
        let deadline = Instant::now() + timeout;
        let mut rx = self.tx.subscribe();
        let mut connected = self.connected.subscribe();
        if !*connected.borrow() {
            let grace = (Instant::now() + CONNECT_GRACE).min(deadline);
            let _ = tokio::time::timeout_at(grace, connected.wait_for(|c| *c)).await;
        }
        loop {
            let (next, now) = next_run().await?;
            let mut until = deadline;
            if let Some(next) = next {
                match (next - now).to_std() {
                    Ok(d) if !d.is_zero() => until = until.min(Instant::now() + d),
                    _ => return Ok(true),
                }
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            if !*self.connected.borrow() {
                until = until.min(Instant::now() + poll);
            }
            loop {
                tokio::select! {
                    msg = rx.recv() => match msg {
                        Ok(Wake::Queue(q)) if !queues.iter().any(|w| **w == *q) => continue,
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => return Ok(true),
                        Err(broadcast::error::RecvError::Closed) => {
                            tokio::time::sleep_until(until).await;
                            break;
                        }
                    },
                    () = tokio::time::sleep_until(until) => break,
                }
            }
        }
    }
}

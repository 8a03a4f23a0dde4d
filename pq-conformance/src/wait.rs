//! Waiting for work: [`QueueStore::wait`], the blocking get and the job stream.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use pq_api::{Claim, Failure, NewJob, QueueStore, QueueStoreExt};
use serde_json::json;
use tokio::time::Instant;

use crate::LONG_LEASE;

/// A timeout no case reaches unless the store fails to wake it.
const LONG_WAIT: Duration = Duration::from_secs(30);
/// Comfortably under [`LONG_WAIT`]: a wake-up arriving later than this was not a wake-up.
const PROMPT: Duration = Duration::from_secs(10);

fn queues() -> Vec<String> {
    vec!["q".to_string()]
}

/// wait returns true at once when a job is already claimable.
pub async fn wait_returns_at_once_when_a_job_is_ready(store: Arc<dyn QueueStore>) {
    store.put("q", &json!(1)).await.unwrap();
    let start = Instant::now();
    assert!(store.wait(&queues(), LONG_WAIT).await.unwrap());
    assert!(start.elapsed() < PROMPT);
}

/// wait wakes when a job is put into a waited queue.
pub async fn wait_wakes_when_a_job_is_put(store: Arc<dyn QueueStore>) {
    let put = async {
        store.put("q", &json!(1)).await.unwrap();
    };
    let (woken, took) = woken_by(&store, put).await;
    assert!(woken);
    assert!(took < PROMPT, "woke after {took:?}");
}

/// wait returns false once its timeout passes with nothing claimable.
pub async fn wait_times_out_with_false_when_nothing_arrives(store: Arc<dyn QueueStore>) {
    store
        .put_job(NewJob::from_json("q", json!(1)).run_at(crate::HOUR))
        .await
        .unwrap();
    let start = Instant::now();
    assert!(!store
        .wait(&queues(), Duration::from_millis(300))
        .await
        .unwrap());
    assert!(start.elapsed() >= Duration::from_millis(300));
}

/// wait wakes when a scheduled job comes due, and the job is then claimable.
pub async fn wait_wakes_when_a_scheduled_job_comes_due(store: Arc<dyn QueueStore>) {
    store
        .put_job(NewJob::from_json("q", json!(1)).run_at(Duration::from_millis(500)))
        .await
        .unwrap();
    let start = Instant::now();
    let mut claimed = Vec::new();
    while claimed.is_empty() && start.elapsed() < PROMPT {
        assert!(store.wait(&queues(), LONG_WAIT).await.unwrap());
        claimed = store.claim(&Claim::new(["q"])).await.unwrap();
    }
    assert_eq!(claimed.len(), 1);
    assert!(
        start.elapsed() >= Duration::from_millis(400),
        "claimed early"
    );
}

/// wait wakes when a failed attempt is put back for a retry.
pub async fn wait_wakes_when_a_failed_attempt_is_retried(store: Arc<dyn QueueStore>) {
    store.put("q", &json!(1)).await.unwrap();
    let job = store
        .claim(&Claim::new(["q"]).lease(LONG_LEASE))
        .await
        .unwrap()
        .remove(0);
    let fail = async {
        store
            .fail(&job.lease, Failure::new("retry me"))
            .await
            .unwrap();
    };
    let (woken, took) = woken_by(&store, fail).await;
    assert!(woken && took < PROMPT, "woke {woken} after {took:?}");
}

/// The blocking get returns None after its timeout, and a job as soon as one is put.
pub async fn blocking_get_returns_a_job_or_none(store: Arc<dyn QueueStore>) {
    let claim = Claim::new(["q"]).lease(LONG_LEASE);
    assert!(store
        .get(&claim, Duration::from_millis(200))
        .await
        .unwrap()
        .is_none());
    let putter = {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            store.put("q", &json!("hi")).await.unwrap()
        })
    };
    let got = store.get(&claim, LONG_WAIT).await.unwrap().expect("a job");
    assert_eq!(got.id(), putter.await.unwrap());
    store.complete(&got.lease).await.unwrap();
}

/// The job stream yields every job put, claimed once each.
pub async fn job_stream_yields_every_job(store: Arc<dyn QueueStore>) {
    let jobs = (0..7).map(|i| NewJob::from_json("q", json!(i))).collect();
    let mut ids = store.put_many(jobs).await.unwrap();
    let mut stream = store.jobs(Claim::new(["q"]).limit(3).lease(LONG_LEASE));
    let mut seen = Vec::new();
    while seen.len() < 7 {
        let job = stream.next().await.unwrap().unwrap();
        store.complete(&job.lease).await.unwrap();
        seen.push(job.id());
    }
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids);
}

/// Waits on queue `q` in the background, then runs `action`; whether the wait was woken,
/// and after how long.
async fn woken_by<F: std::future::Future<Output = ()>>(
    store: &Arc<dyn QueueStore>,
    action: F,
) -> (bool, Duration) {
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            (
                store.wait(&queues(), LONG_WAIT).await.unwrap(),
                start.elapsed(),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    action.await;
    waiter.await.unwrap()
}

/// wait wakes when a running job is released, and when a failed job is retried by id.
pub async fn wait_wakes_when_a_job_is_released_or_retried(store: Arc<dyn QueueStore>) {
    let id = store.put("q", &json!(1)).await.unwrap();
    let claim = Claim::new(["q"]).lease(LONG_LEASE);
    let job = store.claim(&claim).await.unwrap().remove(0);
    let (woken, took) = woken_by(&store, async { store.release(&job.lease).await.unwrap() }).await;
    assert!(
        woken && took < PROMPT,
        "release: woke {woken} after {took:?}"
    );

    let job = store.claim(&claim).await.unwrap().remove(0);
    store
        .fail(&job.lease, Failure::new("no").give_up())
        .await
        .unwrap();
    let (woken, took) = woken_by(&store, async { store.retry(id).await.unwrap() }).await;
    assert!(woken && took < PROMPT, "retry: woke {woken} after {took:?}");
}

/// wait wakes when the lease of a running job runs out, the job claimable again.
pub async fn wait_wakes_when_a_lease_runs_out(store: Arc<dyn QueueStore>) {
    store.put("q", &json!(1)).await.unwrap();
    let lease = Duration::from_millis(600);
    store.claim(&Claim::new(["q"]).lease(lease)).await.unwrap();
    let start = Instant::now();
    let mut claimed = Vec::new();
    while claimed.is_empty() && start.elapsed() < PROMPT {
        assert!(store.wait(&queues(), LONG_WAIT).await.unwrap());
        claimed = store.claim(&Claim::new(["q"])).await.unwrap();
    }
    assert_eq!(
        claimed.len(),
        1,
        "claimed again after {:?}",
        start.elapsed()
    );
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "claimed early"
    );
}

/// A job out of attempts is failed, not claimable: wait does not wake for it, and times out
/// with false (it would otherwise return at once, again and again, and its worker spin).
pub async fn wait_does_not_wake_for_a_job_out_of_attempts(store: Arc<dyn QueueStore>) {
    store
        .put_job(NewJob::from_json("q", json!(1)).max_attempts(1))
        .await
        .unwrap();
    store
        .claim(&Claim::new(["q"]).lease(crate::SHORT_LEASE))
        .await
        .unwrap();
    crate::let_short_lease_expire().await;
    let start = Instant::now();
    assert!(!store
        .wait(&queues(), Duration::from_millis(300))
        .await
        .unwrap());
    assert!(start.elapsed() >= Duration::from_millis(300));
}

/// wait wakes for the earliest job coming due, whether it has a key or not, and in whichever of
/// the queues waited on, however late the others are.
pub async fn wait_wakes_for_the_earliest_job_keyed_or_not(store: Arc<dyn QueueStore>) {
    let soon = Duration::from_millis(500);
    for keyed_first in [false, true] {
        let queue = if keyed_first { "k" } else { "u" };
        let waited = vec![queue.to_string()];
        let keyed = |at| {
            NewJob::from_json(queue, json!(1))
                .serial_key("k")
                .run_at(at)
        };
        let plain = |at| NewJob::from_json(queue, json!(2)).run_at(at);
        let (first, later) = if keyed_first {
            (keyed(soon), plain(crate::HOUR))
        } else {
            (plain(soon), keyed(crate::HOUR))
        };
        store.put_many(vec![later, first]).await.unwrap();
        let start = Instant::now();
        assert!(store.wait(&waited, LONG_WAIT).await.unwrap());
        let took = start.elapsed();
        assert!(
            took < PROMPT,
            "keyed first {keyed_first}: woke after {took:?}"
        );
    }
    let jobs = vec![
        NewJob::from_json("late", json!(3)).run_at(crate::HOUR),
        NewJob::from_json("soon", json!(4)).run_at(soon),
    ];
    store.put_many(jobs).await.unwrap();
    let start = Instant::now();
    let both = vec!["late".to_string(), "soon".to_string()];
    assert!(store.wait(&both, LONG_WAIT).await.unwrap());
    let took = start.elapsed();
    assert!(took < PROMPT, "two queues: woke after {took:?}");
}

//! Inspection and housekeeping: job, cancel, stats, purge.

use std::sync::Arc;

use pq_api::{
    Claim, Error, Failure, JobId, JobState, NewJob, QueueStats, QueueStore, QueueStoreExt,
};
use serde_json::json;

use crate::{HOUR, LONG_LEASE};

/// Puts one job in each state into `queue` and returns (scheduled, ready, running, failed) ids.
async fn one_of_each(store: &dyn QueueStore, queue: &str) -> [JobId; 4] {
    let failed = store
        .put_job(
            NewJob::from_json(queue, json!("failed"))
                .max_attempts(1)
                .priority(3),
        )
        .await
        .unwrap();
    let running = store
        .put_job(NewJob::from_json(queue, json!("running")).priority(2))
        .await
        .unwrap();
    let claim = Claim::new([queue]).lease(LONG_LEASE);
    let job = store.claim(&claim).await.unwrap().remove(0);
    assert_eq!(job.id(), failed);
    store.fail(&job.lease, Failure::new("x")).await.unwrap();
    assert_eq!(store.claim(&claim).await.unwrap()[0].id(), running);
    let scheduled = store
        .put_job(NewJob::from_json(queue, json!("scheduled")).run_at(HOUR))
        .await
        .unwrap();
    let ready = store.put(queue, &json!("ready")).await.unwrap();
    [scheduled, ready, running, failed]
}

/// job() reports each job's state now.
pub async fn job_reports_every_state(store: Arc<dyn QueueStore>) {
    let ids = one_of_each(&*store, "q").await;
    let want = [
        JobState::Scheduled,
        JobState::Ready,
        JobState::Running,
        JobState::Failed,
    ];
    for (id, state) in ids.iter().zip(want) {
        assert_eq!(store.job(*id).await.unwrap().state, state, "job {id}");
    }
}

/// Unknown job ids are NotFound for job, cancel and retry.
pub async fn unknown_job_ids_are_not_found(store: Arc<dyn QueueStore>) {
    let id = store.put("q", &json!(1)).await.unwrap();
    let unknown = JobId(id.0 + 1_000_000);
    assert!(matches!(store.job(unknown).await, Err(Error::NotFound(x)) if x == unknown));
    assert!(matches!(store.cancel(unknown).await, Err(Error::NotFound(x)) if x == unknown));
    assert!(matches!(store.retry(unknown).await, Err(Error::NotFound(x)) if x == unknown));
    assert_eq!(store.stats("q").await.unwrap().ready, 1);
}

/// Cancel removes scheduled, ready and failed jobs; a running one it stops instead (see
/// `control::cancel_stops_a_running_job_and_keeps_it_cancelled`).
pub async fn cancel_removes_waiting_and_failed_jobs(store: Arc<dyn QueueStore>) {
    let [scheduled, ready, running, failed] = one_of_each(&*store, "q").await;
    for id in [scheduled, ready, failed] {
        store.cancel(id).await.unwrap();
        assert!(matches!(store.job(id).await, Err(Error::NotFound(_))));
    }
    let stats = store.stats("q").await.unwrap();
    assert_eq!((stats.running, stats.total()), (1, 1));
    store.cancel(running).await.unwrap();
    assert_eq!(store.job(running).await.unwrap().state, JobState::Cancelled);
}

/// stats counts each state, per queue.
pub async fn stats_count_each_state_per_queue(store: Arc<dyn QueueStore>) {
    one_of_each(&*store, "a").await;
    store.put("a", &json!("another")).await.unwrap();
    store.put("b", &json!("b")).await.unwrap();
    let a = store.stats("a").await.unwrap();
    assert_eq!((a.scheduled, a.ready, a.running, a.failed), (1, 2, 1, 1));
    let b = store.stats("b").await.unwrap();
    assert_eq!(
        (b.scheduled, b.ready, b.running, b.failed, b.total()),
        (0, 1, 0, 0, 1)
    );
    assert_eq!(store.stats("none").await.unwrap(), QueueStats::default());
}

/// purge removes every job of one queue, running ones included, and no other queue's.
pub async fn purge_empties_only_that_queue(store: Arc<dyn QueueStore>) {
    one_of_each(&*store, "a").await;
    let running = store
        .claim(&Claim::new(["a"]).lease(LONG_LEASE))
        .await
        .unwrap()
        .remove(0);
    let keep = store.put("b", &json!(1)).await.unwrap();
    assert_eq!(store.purge("a").await.unwrap(), 4);
    assert_eq!(store.stats("a").await.unwrap().total(), 0);
    assert!(matches!(
        store.complete(&running.lease).await,
        Err(Error::LeaseLost(_))
    ));
    assert_eq!(store.job(keep).await.unwrap().state, JobState::Ready);
    assert_eq!(store.purge("a").await.unwrap(), 0);
}

/// A job whose lease expired is no longer running: cancel removes it.
pub async fn cancel_removes_a_job_whose_lease_expired(store: Arc<dyn QueueStore>) {
    let id = store.put("q", &json!(1)).await.unwrap();
    store
        .claim(&Claim::new(["q"]).lease(crate::SHORT_LEASE))
        .await
        .unwrap();
    crate::let_short_lease_expire().await;
    assert_ne!(store.job(id).await.unwrap().state, JobState::Running);
    store.cancel(id).await.unwrap();
    assert!(matches!(store.job(id).await, Err(Error::NotFound(_))));
}

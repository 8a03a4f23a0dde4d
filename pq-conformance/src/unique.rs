//! Unique jobs: [`NewJob::unique`] and its scopes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use pq_api::{Claim, Done, Error, Failure, JobState, NewJob, QueueStore, QueueStoreExt, Unique};
use serde_json::json;

use crate::{HOUR, LONG_LEASE};

fn job(queue: &str, key: &str, scope: Unique) -> NewJob {
    NewJob::from_json(queue, json!({"key": key})).unique(key, scope)
}

/// Puts a job of queue `q` unique by `day` for an hour, claims and completes it: its id.
async fn completed_day_job(store: &dyn QueueStore) -> pq_api::JobId {
    let id = store
        .put_job(job("q", "day", Unique::For(HOUR)))
        .await
        .unwrap();
    let claimed = store.claim(&Claim::new(["q"])).await.unwrap().remove(0);
    assert_eq!(claimed.id(), id);
    store.complete(&claimed.lease).await.unwrap();
    id
}

/// A job unique while pending holds its key until it first starts: a put of the key meanwhile
/// adds nothing and returns its id; once it runs (and while it waits for a retry) the key is
/// free. Other keys, and the same key in another queue, are not held.
pub async fn a_unique_job_holds_its_key_while_pending(store: Arc<dyn QueueStore>) {
    let first = store
        .put_job(job("q", "k", Unique::WhilePending))
        .await
        .unwrap();
    let again = store
        .put_job(job("q", "k", Unique::WhileActive))
        .await
        .unwrap();
    assert_eq!(
        again, first,
        "held while pending, whatever the new job's scope"
    );
    let other = store
        .put_job(job("q", "other", Unique::WhilePending))
        .await
        .unwrap();
    let elsewhere = store
        .put_job(job("q2", "k", Unique::WhilePending))
        .await
        .unwrap();
    assert_eq!(
        HashSet::from([first, other, elsewhere]).len(),
        3,
        "other keys and queues are apart"
    );
    let stored = store.job(first).await.unwrap();
    assert_eq!(stored.unique, Some(("k".into(), Unique::WhilePending)));

    let claimed = store.claim(&Claim::new(["q"]).limit(2)).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let started = store
        .put_job(job("q", "k", Unique::WhilePending))
        .await
        .unwrap();
    assert_ne!(started, first, "a started job no longer holds its key");
    // Failed with a retry to come, the first job waits again: it has started, so it still
    // does not hold the key.
    let lease = claimed.iter().find(|c| c.id() == first).unwrap().lease;
    store.fail(&lease, Failure::new("x")).await.unwrap();
    assert_eq!(
        store
            .put_job(job("q", "k", Unique::WhilePending))
            .await
            .unwrap(),
        started
    );
}

/// A job unique while active holds its key while pending and while running, and frees it
/// once it completes or fails for good.
pub async fn a_unique_job_holds_its_key_while_active(store: Arc<dyn QueueStore>) {
    let put = |scope| store.put_job(job("q", "k", scope));
    let first = put(Unique::WhileActive).await.unwrap();
    let claimed = store
        .claim(&Claim::new(["q"]).lease(LONG_LEASE))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(claimed.id(), first);
    assert_eq!(
        put(Unique::WhilePending).await.unwrap(),
        first,
        "held while running"
    );
    store.complete(&claimed.lease).await.unwrap();
    let second = put(Unique::WhileActive).await.unwrap();
    assert_ne!(second, first, "freed once completed");

    let claimed = store
        .claim(&Claim::new(["q"]).lease(LONG_LEASE))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(claimed.id(), second);
    let state = store
        .fail(&claimed.lease, Failure::new("x").give_up())
        .await
        .unwrap();
    assert_eq!(state, JobState::Failed);
    let third = put(Unique::WhileActive).await.unwrap();
    assert_ne!(third, second, "freed once failed for good");
    store.cancel(third).await.unwrap();
    assert_ne!(
        put(Unique::WhileActive).await.unwrap(),
        third,
        "freed once cancelled"
    );
}

/// A job unique for a period holds its key for that long after it was put, whatever becomes
/// of it: completed, it still holds it; once the period ends, the key is free.
pub async fn a_unique_job_holds_its_key_for_its_period(store: Arc<dyn QueueStore>) {
    let first = completed_day_job(&*store).await;
    assert!(store.job(first).await.is_err(), "completed and gone");
    assert_eq!(
        store
            .put_job(job("q", "day", Unique::WhilePending))
            .await
            .unwrap(),
        first,
        "held for its period after it completed"
    );

    let period = Duration::from_millis(300);
    let short = store
        .put_job(job("q", "short", Unique::For(period)))
        .await
        .unwrap();
    assert_eq!(
        store
            .put_job(job("q", "short", Unique::For(period)))
            .await
            .unwrap(),
        short
    );
    tokio::time::sleep(period + Duration::from_millis(100)).await;
    let later = store
        .put_job(job("q", "short", Unique::For(period)))
        .await
        .unwrap();
    assert_ne!(
        later, short,
        "free once the period ended, the first job still pending"
    );
    assert_eq!(store.stats("q").await.unwrap().total(), 2);
}

/// Concurrent puts of one uniqueness key, from many callers and within one call, add one job:
/// every caller gets its id.
pub async fn racing_puts_of_a_unique_key_add_one_job(store: Arc<dyn QueueStore>) {
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let batch = vec![
                    job("q", "k", Unique::WhileActive),
                    NewJob::from_json("q", json!("plain")),
                    job("q", "k", Unique::WhileActive),
                ];
                store.put_many(batch).await.unwrap()
            })
        })
        .collect();
    let mut unique_ids = HashSet::new();
    for t in tasks {
        let ids = t.await.unwrap();
        assert_eq!(ids[0], ids[2], "one id for the key within a call");
        unique_ids.insert(ids[0]);
    }
    assert_eq!(unique_ids.len(), 1, "one job for the key across calls");
    let stats = store.stats("q").await.unwrap();
    assert_eq!(stats.total(), 1 + 8, "the key's job and every plain job");
}

/// A uniqueness key is checked as any key, its period must be at least a microsecond, and a
/// job has a cursor key or a uniqueness key, not both (a serial key and one are fine); a
/// refused job adds nothing.
pub async fn put_rejects_bad_uniqueness_keys(store: Arc<dyn QueueStore>) {
    let bad = [
        job("q", "", Unique::WhilePending),
        job("q", "k", Unique::For(Duration::ZERO)),
        job("q", "k", Unique::For(Duration::from_secs(u64::MAX))),
        job("q", "k", Unique::WhileActive).cursor_key("c"),
    ];
    for new in bad {
        let refused = store.put_job(new).await;
        assert!(
            matches!(refused, Err(Error::InvalidArgument { .. })),
            "{refused:?}"
        );
    }
    assert_eq!(store.stats("q").await.unwrap().total(), 0);
    let serial = store
        .put_job(job("q", "k", Unique::WhileActive).serial_key("s"))
        .await
        .unwrap();
    let claimed = store.claim(&Claim::new(["q"])).await.unwrap().remove(0);
    assert_eq!(claimed.id(), serial);
    let done: Done = claimed.lease.into();
    assert_eq!(store.complete_many(&[done]).await.unwrap(), vec![serial]);
}

/// A key put again once its period has ended starts a period of its own: the new job holds
/// the key from then on, as the first did.
pub async fn a_unique_key_put_after_its_period_ended_is_held_again(store: Arc<dyn QueueStore>) {
    // Long enough for the checks within the second period on a loaded machine.
    let period = Duration::from_millis(1500);
    let put = || store.put_job(job("q", "k", Unique::For(period)));
    let first = put().await.unwrap();
    tokio::time::sleep(period + Duration::from_millis(100)).await;
    let second = put().await.unwrap();
    assert_ne!(second, first, "the first period has ended");
    assert_eq!(
        put().await.unwrap(),
        second,
        "the second job holds the key for a period of its own"
    );
    let claimed = store.claim(&Claim::new(["q"]).limit(2)).await.unwrap();
    for c in &claimed {
        store.complete(&c.lease).await.unwrap();
    }
    assert_eq!(
        put().await.unwrap(),
        second,
        "completed, still within its period"
    );
}

/// A running job unique while active frees its key the moment it is cancelled, though its
/// lease runs on; so does one whose last lease ran out with no attempts left.
pub async fn a_cancelled_or_lapsed_unique_job_frees_its_key(store: Arc<dyn QueueStore>) {
    // The cancelled job has attempts left: only its cancellation frees its key.
    let put = |key: &'static str, attempts: u32| {
        store.put_job(job("q", key, Unique::WhileActive).max_attempts(attempts))
    };
    let first = put("k", 3).await.unwrap();
    let running = store
        .claim(&Claim::new(["q"]).lease(LONG_LEASE))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(running.id(), first);
    store.cancel(first).await.unwrap();
    assert_eq!(store.job(first).await.unwrap().state, JobState::Cancelled);
    assert_ne!(put("k", 3).await.unwrap(), first, "freed once cancelled");

    let lapsing = put("lapsed", 1).await.unwrap();
    let claimed = store
        .claim(&Claim::new(["q"]).limit(10).lease(crate::SHORT_LEASE))
        .await
        .unwrap();
    assert!(claimed.iter().any(|c| c.id() == lapsing));
    crate::let_short_lease_expire().await;
    assert_eq!(store.job(lapsing).await.unwrap().state, JobState::Failed);
    assert_ne!(
        put("lapsed", 1).await.unwrap(),
        lapsing,
        "freed once its last lease ran out"
    );
}

/// Pruning (which cleans up history too) forgets only periods that have ended: a key whose
/// period runs on stays held through it, its job long completed.
pub async fn pruning_keeps_unique_periods_that_run_on(store: Arc<dyn QueueStore>) {
    let first = completed_day_job(&*store).await;
    store.prune().await.unwrap();
    assert_eq!(
        store
            .put_job(job("q", "day", Unique::For(HOUR)))
            .await
            .unwrap(),
        first,
        "held for the rest of its hour"
    );
}

//! Claiming: [`QueueStore::claim`].

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use pq_api::{Claim, Error, JobId, JobState, NewJob, QueueStore, QueueStoreExt, MAX_CLAIM_LIMIT};
use serde_json::json;

use crate::{let_short_lease_expire, LONG_LEASE, SHORT_LEASE};

/// Puts six jobs whose contract order is E, D, C, A, B, F and returns their ids in that order.
async fn put_ordering_fixture(store: &dyn QueueStore) -> Vec<JobId> {
    let now = Utc::now();
    let h = |n: i64| now + TimeDelta::hours(n);
    let put = |job: NewJob| async move { store.put_job(job).await.unwrap() };
    // B goes in before A, which is due earlier: run_at decides, not the ids.
    let b = put(NewJob::from_json("q", json!("B")).run_at(h(-2))).await;
    let a = put(NewJob::from_json("q", json!("A")).run_at(h(-3))).await;
    let c = put(NewJob::from_json("q", json!("C"))
        .run_at(h(-1))
        .expected_at(h(2)))
    .await;
    let d = put(NewJob::from_json("q", json!("D"))
        .run_at(h(-1))
        .expected_at(h(1)))
    .await;
    let e = put(NewJob::from_json("q", json!("E")).run_at(h(-1)).priority(5)).await;
    let f = put(NewJob::from_json("q", json!("F")).run_at(h(-2))).await;
    // A scheduled job of the highest priority must not get in the way.
    put(NewJob::from_json("q", json!("later"))
        .run_at(h(1))
        .priority(9))
    .await;
    vec![e, d, c, a, b, f]
}

/// Claim order: priority desc, expected_at asc with none last, run_at asc, id asc.
pub async fn claim_follows_contract_order(store: Arc<dyn QueueStore>) {
    let want = put_ordering_fixture(&*store).await;
    let got = store.claim(&Claim::new(["q"]).limit(100)).await.unwrap();
    assert_eq!(got.iter().map(|j| j.id()).collect::<Vec<_>>(), want);
}

/// Claiming one at a time hands jobs out in the same contract order.
pub async fn claim_one_at_a_time_follows_contract_order(store: Arc<dyn QueueStore>) {
    let want = put_ordering_fixture(&*store).await;
    let mut got = Vec::new();
    while let Some(job) = store.claim(&Claim::new(["q"])).await.unwrap().pop() {
        got.push(job.id());
    }
    assert_eq!(got, want);
}

/// A claim returns at most `limit` jobs.
pub async fn claim_respects_the_limit(store: Arc<dyn QueueStore>) {
    let jobs = (0..5).map(|i| NewJob::from_json("q", json!(i))).collect();
    store.put_many(jobs).await.unwrap();
    let c = Claim::new(["q"]).limit(3);
    assert_eq!(store.claim(&c).await.unwrap().len(), 3);
    assert_eq!(store.claim(&c).await.unwrap().len(), 2);
    assert_eq!(store.claim(&c).await.unwrap().len(), 0);
}

/// Claiming from several queues orders all their jobs as one.
pub async fn claim_from_several_queues_uses_one_order(store: Arc<dyn QueueStore>) {
    let low = store
        .put_job(NewJob::from_json("a", json!(1)).priority(1))
        .await
        .unwrap();
    let high = store
        .put_job(NewJob::from_json("b", json!(2)).priority(2))
        .await
        .unwrap();
    let other = store
        .put_job(NewJob::from_json("c", json!(3)).priority(9))
        .await
        .unwrap();
    let got = store
        .claim(&Claim::new(["a", "b", "a"]).limit(10))
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|j| j.id()).collect::<Vec<_>>(),
        vec![high, low]
    );
    assert_eq!(store.job(other).await.unwrap().state, JobState::Ready);
}

/// Invalid claims (no queue, bad name, limit 0 or too high, zero lease) are rejected and claim nothing.
pub async fn claim_rejects_invalid_requests(store: Arc<dyn QueueStore>) {
    let id = store.put("q", &json!(1)).await.unwrap();
    let no_queue: [&str; 0] = [];
    let bad = [
        Claim::new(no_queue),
        Claim::new([""]),
        Claim::new(["q"]).limit(0),
        Claim::new(["q"]).limit(MAX_CLAIM_LIMIT + 1),
        Claim::new(["q"]).lease(Duration::ZERO),
    ];
    for claim in &bad {
        let err = store.claim(claim).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { .. }),
            "{claim:?}: {err:?}"
        );
    }
    let job = store.job(id).await.unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Ready, 0));
}

/// A claimed job is running and no one else can claim it while its lease is live.
pub async fn claimed_job_is_not_claimed_again_while_its_lease_is_live(store: Arc<dyn QueueStore>) {
    let id = store.put("q", &json!(1)).await.unwrap();
    let before = Utc::now();
    let got = store
        .claim(&Claim::new(["q"]).lease(LONG_LEASE))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].job.state, JobState::Running);
    assert_eq!(got[0].job.attempts, 1);
    let expiry = got[0].lease_expires_at() - before;
    assert!(
        expiry > TimeDelta::minutes(59) && expiry < TimeDelta::minutes(61),
        "{expiry}"
    );
    assert!(store.claim(&Claim::new(["q"])).await.unwrap().is_empty());
    let job = store.job(id).await.unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Running, 1));
}

/// A job whose lease expired is claimable again, as a new attempt with a new lease token.
pub async fn expired_lease_is_claimable_again_as_a_new_attempt(store: Arc<dyn QueueStore>) {
    let id = store.put("q", &json!(1)).await.unwrap();
    let first = store
        .claim(&Claim::new(["q"]).lease(SHORT_LEASE))
        .await
        .unwrap();
    let_short_lease_expire().await;
    assert_eq!(store.job(id).await.unwrap().state, JobState::Ready);
    let second = store
        .claim(&Claim::new(["q"]).lease(LONG_LEASE))
        .await
        .unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].id(), id);
    assert_eq!(second[0].job.attempts, 2);
    assert_ne!(second[0].lease, first[0].lease);
}

/// Jobs whose leases ran out are claimed in claim order with the waiting jobs (a store may
/// keep running jobs apart, but not order them apart), and only from the queues claimed.
pub async fn expired_jobs_are_claimed_in_order_with_waiting_ones(store: Arc<dyn QueueStore>) {
    let put = |queue: &'static str, priority: i32| {
        let store = store.clone();
        async move {
            let job = NewJob::from_json(queue, json!(priority)).priority(priority);
            store.put_job(job).await.unwrap()
        }
    };
    let low = put("q", 0).await;
    let high = put("q", 9).await;
    let elsewhere = put("other", 9).await;
    for queue in ["q", "other"] {
        let short = Claim::new([queue]).limit(10).lease(SHORT_LEASE);
        assert!(!store.claim(&short).await.unwrap().is_empty());
    }
    let_short_lease_expire().await;
    let mid = put("q", 5).await;
    let got = store
        .claim(&Claim::new(["q"]).limit(10).lease(LONG_LEASE))
        .await
        .unwrap();
    let ids: Vec<JobId> = got.iter().map(|j| j.id()).collect();
    assert_eq!(ids, [high, mid, low], "priority order, expired or not");
    let attempts: Vec<u32> = got.iter().map(|j| j.job.attempts).collect();
    assert_eq!(attempts, [2, 1, 2]);
    let other = store.claim(&Claim::new(["other"])).await.unwrap();
    assert_eq!(
        other.iter().map(|j| j.id()).collect::<Vec<_>>(),
        [elsewhere]
    );
}

/// Claiming when nothing is claimable returns an empty list, not an error.
pub async fn claim_of_nothing_returns_empty(store: Arc<dyn QueueStore>) {
    assert!(store
        .claim(&Claim::new(["empty"]).limit(10))
        .await
        .unwrap()
        .is_empty());
}

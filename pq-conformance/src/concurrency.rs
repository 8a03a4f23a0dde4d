//! Many handles at once.

use std::collections::HashSet;
use std::sync::Arc;

use pq_api::{Claim, NewJob, QueueStore, QueueStoreExt};
use serde_json::json;

use crate::{let_short_lease_expire, LONG_LEASE, SHORT_LEASE};

const JOBS: usize = 2_000;
const CLAIMERS: usize = 8;

/// Racing claimers over thousands of jobs claim each exactly once.
pub async fn racing_claimers_claim_every_job_exactly_once(store: Arc<dyn QueueStore>) {
    let mut all = Vec::new();
    for chunk in (0..JOBS).collect::<Vec<_>>().chunks(500) {
        let jobs = chunk
            .iter()
            .map(|i| NewJob::from_json("q", json!(i)))
            .collect();
        all.extend(store.put_many(jobs).await.unwrap());
    }
    let tasks: Vec<_> = (0..CLAIMERS)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let claim = Claim::new(["q"])
                    .limit(1 + 7 * u32::try_from(i).unwrap())
                    .lease(LONG_LEASE);
                let mut mine = Vec::new();
                loop {
                    let got = store.claim(&claim).await.unwrap();
                    if got.is_empty() {
                        return mine;
                    }
                    let leases: Vec<pq_api::Done> = got.iter().map(|j| j.lease.into()).collect();
                    let done = store.complete_many(&leases).await.unwrap();
                    assert_eq!(done.len(), got.len(), "a fresh lease was lost");
                    mine.extend(done);
                }
            })
        })
        .collect();
    let mut seen = HashSet::new();
    let mut total = 0;
    for t in tasks {
        for id in t.await.unwrap() {
            total += 1;
            assert!(seen.insert(id), "job {id} was claimed twice");
        }
    }
    assert_eq!(total, JOBS);
    assert_eq!(seen, all.into_iter().collect::<HashSet<_>>());
    assert_eq!(store.stats("q").await.unwrap().total(), 0);
}

/// Concurrent puts from many tasks all land, with distinct ids.
pub async fn concurrent_puts_all_land(store: Arc<dyn QueueStore>) {
    let tasks: Vec<_> = (0..CLAIMERS)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..100 {
                    ids.push(store.put("q", &json!([t, i])).await.unwrap());
                }
                ids
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for t in tasks {
        for id in t.await.unwrap() {
            assert!(seen.insert(id));
        }
    }
    assert_eq!(seen.len(), CLAIMERS * 100);
    assert_eq!(store.stats("q").await.unwrap().ready, 800);
}

/// When a lease expires, of many racing claimers exactly one gets the job.
pub async fn racing_reclaimers_of_an_expired_lease_get_it_once(store: Arc<dyn QueueStore>) {
    store.put("q", &json!(1)).await.unwrap();
    store
        .claim(&Claim::new(["q"]).lease(SHORT_LEASE))
        .await
        .unwrap();
    let_short_lease_expire().await;
    let tasks: Vec<_> = (0..CLAIMERS)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .claim(&Claim::new(["q"]).lease(LONG_LEASE))
                    .await
                    .unwrap()
                    .len()
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 1);
}

//! Serial and cursor keys: one running job per key, in order; one pending job per cursor key;
//! the key's persistent state.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pq_api::{
    Claim, Done, Error, Failure, JobId, JobState, NewJob, QueueStore, QueueStoreExt, StopMode,
    Task, Worker,
};
use serde_json::{json, Value};

use crate::worker::{registry, start, Work};
use crate::{let_short_lease_expire, HOUR, LONG_LEASE, SHORT_LEASE};

fn keyed(queue: &str, key: &str, n: u32) -> NewJob {
    NewJob::from_json(queue, json!({ "n": n })).serial_key(key)
}

fn cursor(queue: &str, key: &str, n: u32) -> NewJob {
    NewJob::from_json(queue, json!({ "n": n })).cursor_key(key)
}

fn ids(jobs: &[pq_api::ClaimedJob]) -> Vec<JobId> {
    jobs.iter().map(|j| j.id()).collect()
}

fn claim_all(queue: &str) -> Claim {
    Claim::new([queue]).limit(100).lease(LONG_LEASE)
}

/// Jobs sharing a serial key are claimed one at a time, in claim order; the next one only
/// once the running one is done.
pub async fn serial_key_runs_one_job_at_a_time_in_order(store: Arc<dyn QueueStore>) {
    let put = store
        .put_many(vec![
            keyed("q", "k", 0),
            keyed("q", "k", 1).priority(5),
            keyed("q", "k", 2),
        ])
        .await
        .unwrap();
    let (a, b, c) = (put[0], put[1], put[2]);
    let got = store.claim(&claim_all("q")).await.unwrap();
    assert_eq!(
        ids(&got),
        vec![b],
        "the highest priority job of the key, alone"
    );
    assert!(store.claim(&claim_all("q")).await.unwrap().is_empty());
    store.complete(&got[0].lease).await.unwrap();
    let got = store.claim(&claim_all("q")).await.unwrap();
    assert_eq!(ids(&got), vec![a]);
    assert!(store.claim(&claim_all("q")).await.unwrap().is_empty());
    store.complete(&got[0].lease).await.unwrap();
    let got = store.claim(&claim_all("q")).await.unwrap();
    assert_eq!(ids(&got), vec![c]);
    assert_eq!(got[0].job.serial_key.as_deref(), Some("k"));
    assert_eq!(got[0].job.cursor_key, None);
}

/// A key holds up only its own jobs: jobs without a key, other keys, and the same key in
/// another queue are claimed as usual.
pub async fn keys_do_not_hold_up_other_jobs(store: Arc<dyn QueueStore>) {
    let put = store
        .put_many(vec![
            keyed("q", "k1", 0),
            keyed("q", "k1", 1),
            keyed("q", "k1", 2),
            keyed("q", "k2", 3),
            keyed("q", "k2", 4),
            NewJob::from_json("q", json!({"n": 5})),
            NewJob::from_json("q", json!({"n": 6})),
            keyed("other", "k1", 7),
        ])
        .await
        .unwrap();
    let got = store.claim(&claim_all("q")).await.unwrap();
    assert_eq!(ids(&got), vec![put[0], put[3], put[5], put[6]]);
    let other = store.claim(&claim_all("other")).await.unwrap();
    assert_eq!(ids(&other), vec![put[7]], "keys are per queue");
    // One claim over both queues still hands out at most one job per key.
    assert!(store
        .claim(&Claim::new(["q", "other"]).limit(100))
        .await
        .unwrap()
        .is_empty());
}

/// Puts `first` and a second job of key `k` in one call, claims `first` on a short lease and
/// lets it run out; the ids put and the claim.
async fn first_of_two_expired(
    store: &dyn QueueStore,
    first: NewJob,
) -> (Vec<JobId>, Vec<pq_api::ClaimedJob>) {
    let put = store
        .put_many(vec![first, keyed("q", "k", 1)])
        .await
        .unwrap();
    let claimed = store
        .claim(&Claim::new(["q"]).limit(10).lease(SHORT_LEASE))
        .await
        .unwrap();
    assert_eq!(ids(&claimed), vec![put[0]]);
    let_short_lease_expire().await;
    (put, claimed)
}

/// A key is freed when its job's lease expires, fails or is released: the next job of the
/// key may then be claimed.
pub async fn expired_lease_frees_the_key(store: Arc<dyn QueueStore>) {
    let (put, first) = first_of_two_expired(&*store, keyed("q", "k", 0)).await;
    // The expired job's `run_at` is now its lease expiry, later than the other job's.
    let next = store.claim(&claim_all("q")).await.unwrap();
    assert_eq!(ids(&next), vec![put[1]]);
    assert!(store.claim(&claim_all("q")).await.unwrap().is_empty());

    // Failing frees the key (the retry waits an hour), releasing too.
    store
        .fail(&next[0].lease, Failure::new("later").retry_at(HOUR))
        .await
        .unwrap();
    let again = store.claim(&claim_all("q")).await.unwrap();
    assert_eq!(ids(&again), vec![put[0]], "the expired job, reclaimed");
    store.release(&again[0].lease).await.unwrap();
    let again = store.claim(&claim_all("q")).await.unwrap();
    assert_eq!(ids(&again), vec![put[0]]);
    // The stale holder of the first lease can no longer complete anything.
    assert!(matches!(
        store.complete(&first[0].lease).await,
        Err(Error::LeaseLost(_))
    ));
}

/// Claimers racing over many keyed jobs never run two jobs of one key at once, run each key's
/// jobs in order, and run every job exactly once.
pub async fn racing_claimers_never_run_two_jobs_of_one_key(store: Arc<dyn QueueStore>) {
    const KEYS: u32 = 5;
    const PER_KEY: u32 = 12;
    let jobs = (0..PER_KEY)
        .flat_map(|i| (0..KEYS).map(move |k| keyed("q", &format!("k{k}"), i)))
        .collect();
    let put = store.put_many(jobs).await.unwrap();
    let total = put.len();
    let running: Arc<Mutex<HashSet<String>>> = Arc::default();
    let runs: Arc<Mutex<HashMap<String, Vec<JobId>>>> = Arc::default();
    let mut claimers = Vec::new();
    for _ in 0..6 {
        let (store, running, runs) = (store.clone(), running.clone(), runs.clone());
        claimers.push(tokio::spawn(async move {
            let claim = Claim::new(["q"]).limit(3).lease(LONG_LEASE);
            let mut idle = 0;
            while idle < 50 {
                let got = store.claim(&claim).await.unwrap();
                if got.is_empty() {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                idle = 0;
                for job in &got {
                    let key = job.job.serial_key.clone().unwrap();
                    assert!(
                        running.lock().unwrap().insert(key.clone()),
                        "two jobs of key {key} ran at once"
                    );
                    runs.lock().unwrap().entry(key).or_default().push(job.id());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
                for job in &got {
                    running
                        .lock()
                        .unwrap()
                        .remove(job.job.serial_key.as_deref().unwrap());
                }
                let done: Vec<Done> = got.iter().map(|j| j.lease.into()).collect();
                assert_eq!(store.complete_many(&done).await.unwrap().len(), got.len());
            }
        }));
    }
    for c in claimers {
        c.await.unwrap();
    }
    let runs = runs.lock().unwrap();
    let mut seen: Vec<JobId> = runs.values().flatten().copied().collect();
    seen.sort_unstable();
    assert_eq!(seen.len(), total, "every job ran exactly once");
    seen.dedup();
    assert_eq!(seen.len(), total, "no job ran twice");
    for (key, order) in runs.iter() {
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(order, &sorted, "key {key} ran out of order");
    }
}

/// A cursor key keeps at most one pending job: putting another while one is pending returns
/// the pending job's id, also within one call; once it runs, a new one may be put.
pub async fn cursor_key_keeps_one_pending_job(store: Arc<dyn QueueStore>) {
    let first = store.put_job(cursor("q", "k", 0)).await.unwrap();
    assert_eq!(store.put_job(cursor("q", "k", 1)).await.unwrap(), first);
    let mixed = store
        .put_many(vec![
            cursor("q", "k", 2),
            NewJob::from_json("q", json!({"n": 3})),
            cursor("q", "k", 4),
            cursor("other", "k", 5),
        ])
        .await
        .unwrap();
    assert_eq!(mixed[0], first);
    assert_eq!(mixed[2], first);
    assert_ne!(mixed[1], first);
    assert_ne!(mixed[3], first, "cursor keys are per queue");
    assert_eq!(store.stats("q").await.unwrap().total(), 2);
    let job = store.job(first).await.unwrap();
    assert_eq!(job.payload["n"], 0, "the pending job is kept as it was");
    assert_eq!(job.cursor_key.as_deref(), Some("k"));

    let running = store.claim(&claim_all("q")).await.unwrap();
    assert_eq!(ids(&running), vec![first, mixed[1]]);
    let second = store.put_job(cursor("q", "k", 6)).await.unwrap();
    assert_ne!(second, first, "a running job is not pending");
    assert_eq!(store.put_job(cursor("q", "k", 7)).await.unwrap(), second);
    // The new pending job waits for the running one: one running per key.
    assert!(store.claim(&claim_all("q")).await.unwrap().is_empty());
    store.complete(&running[0].lease).await.unwrap();
    assert_eq!(
        ids(&store.claim(&claim_all("q")).await.unwrap()),
        vec![second]
    );
}

/// A cursor key's pending job stays its one pending job while another job of the key
/// completes; once it is cancelled, or its queue purged, the next put makes a new one.
pub async fn cursor_keys_pending_job_outlives_others_and_goes_with_cancel_and_purge(
    store: Arc<dyn QueueStore>,
) {
    let first = store.put_job(cursor("q", "k", 0)).await.unwrap();
    let running = store.claim(&claim_all("q")).await.unwrap();
    assert_eq!(ids(&running), vec![first]);
    let pending = store.put_job(cursor("q", "k", 1)).await.unwrap();
    assert_ne!(pending, first);
    store.complete(&running[0].lease).await.unwrap();
    assert_eq!(
        store.put_job(cursor("q", "k", 2)).await.unwrap(),
        pending,
        "still the one pending job"
    );
    store.cancel(pending).await.unwrap();
    let fresh = store.put_job(cursor("q", "k", 3)).await.unwrap();
    assert_ne!(fresh, pending, "the cancelled job is no longer pending");
    assert_eq!(store.job(fresh).await.unwrap().payload["n"], 3);
    assert_eq!(store.put_job(cursor("q", "k", 4)).await.unwrap(), fresh);
    assert_eq!(store.purge("q").await.unwrap(), 1);
    let after = store.put_job(cursor("q", "k", 5)).await.unwrap();
    assert_ne!(after, fresh, "the purged job is no longer pending");
    assert_eq!(store.job(after).await.unwrap().payload["n"], 5);
}

/// Concurrent puts with one cursor key make one job, and all get its id.
pub async fn concurrent_puts_with_one_cursor_key_make_one_job(store: Arc<dyn QueueStore>) {
    let mut puts = Vec::new();
    for n in 0..16 {
        let store = store.clone();
        puts.push(tokio::spawn(async move {
            store.put_job(cursor("q", "k", n)).await.unwrap()
        }));
    }
    let mut got = Vec::new();
    for p in puts {
        got.push(p.await.unwrap());
    }
    got.dedup();
    assert_eq!(got.len(), 1, "every put returned the one pending job");
    assert_eq!(store.stats("q").await.unwrap().total(), 1);
}

/// A key's state is handed to each job of the key when claimed, saved when a job completes
/// with a new state, and kept otherwise (a failure, a completion without a state).
pub async fn key_state_is_handed_on_and_saved_on_complete(store: Arc<dyn QueueStore>) {
    assert_eq!(store.key_state("q", "k").await.unwrap(), None);
    store.put_job(cursor("q", "k", 0)).await.unwrap();
    assert_eq!(store.key_state("q", "k").await.unwrap(), Some(Value::Null));
    let job = store.claim(&claim_all("q")).await.unwrap().remove(0);
    assert_eq!(job.key_state, Some(Value::Null));
    store
        .complete_with(Done::new(job.lease).key_state(json!({"seen": 1})))
        .await
        .unwrap();
    assert_eq!(
        store.key_state("q", "k").await.unwrap(),
        Some(json!({"seen": 1}))
    );

    store.put_job(cursor("q", "k", 1)).await.unwrap();
    let job = store.claim(&claim_all("q")).await.unwrap().remove(0);
    assert_eq!(job.key_state, Some(json!({"seen": 1})));
    store.complete(&job.lease).await.unwrap();
    store.put_job(cursor("q", "k", 2)).await.unwrap();
    let job = store.claim(&claim_all("q")).await.unwrap().remove(0);
    store
        .fail(&job.lease, Failure::new("no").give_up())
        .await
        .unwrap();
    assert_eq!(
        store.key_state("q", "k").await.unwrap(),
        Some(json!({"seen": 1}))
    );
    // Serial keys have a state too; jobs without a key have none.
    store.put_job(keyed("q", "s", 3)).await.unwrap();
    store
        .put_job(NewJob::from_json("q", json!({"n": 4})))
        .await
        .unwrap();
    let got = store.claim(&claim_all("q")).await.unwrap();
    assert_eq!(got[0].key_state, Some(Value::Null));
    assert_eq!(got[1].key_state, None);
}

/// A job held up by its key does not make `wait` return; the key being freed wakes it.
pub async fn wait_wakes_when_a_key_is_freed(store: Arc<dyn QueueStore>) {
    wakes_when_the_key_is_freed(store, Freeing::Complete).await;
}

/// A key freed by its job failing for good wakes `wait` too, and the next job of the key is
/// claimable at once.
pub async fn wait_wakes_when_a_failure_frees_a_key(store: Arc<dyn QueueStore>) {
    wakes_when_the_key_is_freed(store, Freeing::FailForGood).await;
}

/// How [`wakes_when_the_key_is_freed`] ends the job that holds the key.
#[derive(Clone, Copy)]
enum Freeing {
    Complete,
    FailForGood,
}

/// Puts two jobs of one key, claims the first, checks that `wait` is not woken by the other,
/// then ends the first (`how`) 200 ms into a `wait`, which must wake; the other job is then
/// claimable.
async fn wakes_when_the_key_is_freed(store: Arc<dyn QueueStore>, how: Freeing) {
    store
        .put_many(vec![keyed("q", "k", 0), keyed("q", "k", 1)])
        .await
        .unwrap();
    let running = store.claim(&claim_all("q")).await.unwrap().remove(0);
    let queues = vec!["q".to_string()];
    assert!(
        !store
            .wait(&queues, Duration::from_millis(300))
            .await
            .unwrap(),
        "the other job is held up by its key"
    );
    let ender = {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            match how {
                Freeing::Complete => store.complete(&running.lease).await.unwrap(),
                Freeing::FailForGood => {
                    let failed = Failure::new("no").give_up();
                    let state = store.fail(&running.lease, failed).await.unwrap();
                    assert_eq!(state, pq_api::JobState::Failed);
                }
            }
        })
    };
    let t = std::time::Instant::now();
    assert!(store.wait(&queues, Duration::from_secs(20)).await.unwrap());
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "woken, not timed out"
    );
    ender.await.unwrap();
    let next = store.claim(&claim_all("q")).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(*next[0].job.payload, json!({ "n": 1 }));
}

/// Keys are validated: empty, too long, control characters, or both kinds on one job are
/// rejected, and nothing of the call is stored.
pub async fn put_rejects_bad_keys(store: Arc<dyn QueueStore>) {
    let mut both = NewJob::from_json("q", json!(1)).serial_key("a");
    both.cursor_key = Some("b".into());
    let long = "k".repeat(pq_api::MAX_KEY_LEN + 1);
    for bad in [
        NewJob::from_json("q", json!(1)).serial_key(""),
        NewJob::from_json("q", json!(1)).cursor_key(long.as_str()),
        NewJob::from_json("q", json!(1)).serial_key("a\nb"),
        both,
    ] {
        let put = store
            .put_many(vec![NewJob::from_json("q", json!(0)), bad])
            .await;
        assert!(
            matches!(put, Err(Error::InvalidArgument { what: "key", .. })),
            "{put:?}"
        );
    }
    assert_eq!(store.stats("q").await.unwrap().total(), 0);
}

/// The worker runs a key's jobs one after another, handing each the state the previous one
/// saved through its context.
pub async fn worker_threads_key_state_through_a_keys_jobs(store: Arc<dyn QueueStore>) {
    let registry = registry::<Work, _, _>(|n, cx| async move {
        let count = cx
            .key_state()
            .and_then(|s| s["count"].as_u64())
            .unwrap_or(0);
        let order = cx.key_state().map_or(json!([]), |s| s["order"].clone());
        let mut order: Vec<Value> = order.as_array().cloned().unwrap_or_default();
        order.push(json!(n));
        cx.set_key_state(json!({"count": count + 1, "order": order}))?;
        Ok(())
    });
    let jobs = (0..6)
        .map(|n| Work { n }.to_job().unwrap().serial_key("tenant-1"))
        .collect();
    let put = store.put_many(jobs).await.unwrap();
    let worker = Worker::new(store.clone(), registry)
        .concurrency(4)
        .idle_wait(Duration::from_millis(200));
    let (handle, run) = start(worker);
    let mut done = 0;
    for _ in 0..400 {
        let left = store.stats("work").await.unwrap().total();
        done = put.len() - usize::try_from(left).unwrap();
        if done == put.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    handle.stop(StopMode::Finish);
    run.await.unwrap().unwrap();
    assert_eq!(done, put.len());
    assert_eq!(
        store.key_state("work", "tenant-1").await.unwrap(),
        Some(json!({"count": 6, "order": [0, 1, 2, 3, 4, 5]}))
    );
}

/// A draining worker runs every keyed job before it stops, although each job of a key becomes
/// claimable only once the one before it has completed.
pub async fn draining_worker_runs_every_keyed_job(store: Arc<dyn QueueStore>) {
    let registry = registry::<Work, _, _>(|_, _| async { Ok(()) });
    let jobs = (0..40)
        .map(|n| {
            Work { n }
                .to_job()
                .unwrap()
                .serial_key(format!("k{}", n % 3))
        })
        .collect();
    store.put_many(jobs).await.unwrap();
    let status = Worker::new(store.clone(), registry)
        .concurrency(8)
        .run_until_drained()
        .await
        .unwrap();
    assert_eq!(status.processed, 40);
    assert_eq!(store.stats("work").await.unwrap().total(), 0);
}

/// A key stays held while its job's lease is extended past the lease first given; releasing
/// the job frees it, and so does purging the queue of the job holding it.
pub async fn extend_keeps_a_key_held_and_release_and_purge_free_it(store: Arc<dyn QueueStore>) {
    let keyed = |n: u32| NewJob::from_json("q", json!(n)).serial_key("k");
    let ids = store.put_many(vec![keyed(1), keyed(2)]).await.unwrap();
    let short = Duration::from_millis(300);
    let first = store
        .claim(&Claim::new(["q"]).lease(short))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(first.id(), ids[0]);
    store.extend(&first.lease, LONG_LEASE).await.unwrap();
    tokio::time::sleep(short * 2).await;
    assert!(
        store.claim(&Claim::new(["q"])).await.unwrap().is_empty(),
        "the extended job still holds its key"
    );
    store.release(&first.lease).await.unwrap();
    let again = store
        .claim(&Claim::new(["q"]).lease(LONG_LEASE))
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "released, the key is free for its next job");

    assert_eq!(store.purge("q").await.unwrap(), 2);
    let fresh = store.put_job(keyed(3)).await.unwrap();
    let claimed = store.claim(&Claim::new(["q"])).await.unwrap();
    assert_eq!(claimed.len(), 1, "the purge freed the key");
    assert_eq!(claimed[0].id(), fresh);
}

/// A running job cancelled keeps its key until its lease runs out; then the key's next job
/// (put with it, in one call) runs.
pub async fn a_cancelled_running_jobs_key_passes_on_once_its_lease_ends(
    store: Arc<dyn QueueStore>,
) {
    let put = store
        .put_many(vec![keyed("q", "k", 0), keyed("q", "k", 1)])
        .await
        .unwrap();
    let lease = Duration::from_millis(300);
    let first = store
        .claim(&Claim::new(["q"]).limit(10).lease(lease))
        .await
        .unwrap();
    assert_eq!(ids(&first), vec![put[0]]);
    store.cancel(put[0]).await.unwrap();
    assert!(
        store.claim(&claim_all("q")).await.unwrap().is_empty(),
        "the cancelled job holds its key while its lease lasts"
    );
    tokio::time::sleep(lease * 2).await;
    let next = store.claim(&claim_all("q")).await.unwrap();
    assert_eq!(ids(&next), vec![put[1]]);
}

/// A job whose lease runs out with no attempts left holds its key no longer: the key's next
/// job (put with it, in one call) runs, and the expired one is not retried.
pub async fn an_expired_job_without_attempts_left_passes_its_key_on(store: Arc<dyn QueueStore>) {
    let (put, _) = first_of_two_expired(&*store, keyed("q", "k", 0).max_attempts(1)).await;
    let next = store.claim(&claim_all("q")).await.unwrap();
    assert_eq!(ids(&next), vec![put[1]]);
    store.complete(&next[0].lease).await.unwrap();
    assert!(store.claim(&claim_all("q")).await.unwrap().is_empty());
}

/// A job snoozed for a while frees its key and its place under the queue's concurrency limit
/// at once, as a release does: the key's next job runs while it waits.
pub async fn a_snoozed_job_frees_its_key_and_its_place(store: Arc<dyn QueueStore>) {
    let ids = store
        .put_many(vec![keyed("q", "k", 1), keyed("q", "k", 2)])
        .await
        .unwrap();
    store
        .configure_queue("q", pq_api::QueueSetting::Concurrency(Some(1)))
        .await
        .unwrap();
    let claim = Claim::new(["q"]).limit(10).lease(LONG_LEASE);
    let first = store.claim(&claim).await.unwrap().remove(0);
    assert_eq!(first.id(), ids[0]);
    store.snooze(&first.lease, HOUR).await.unwrap();
    let next = store.claim(&claim).await.unwrap();
    assert_eq!(
        next.iter().map(|j| j.id()).collect::<Vec<_>>(),
        [ids[1]],
        "the key and the place are free while the first job waits"
    );
    assert_eq!(store.job(ids[0]).await.unwrap().state, JobState::Scheduled);
}

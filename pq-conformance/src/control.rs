//! Steering a running system: paused queues, concurrency and rate limits, cancelling running
//! jobs, progress, and pruning ([`QueueStore::configure_queue`], [`QueueStore::cancel`],
//! [`QueueStore::set_progress`], [`QueueStore::prune`]).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pq_api::{
    Claim, Done, Error, Failure, JobState, NewJob, QueueConfig, QueueSetting, QueueStore,
    QueueStoreExt, Rate,
};
use serde_json::json;
use tokio::time::Instant;

use crate::{let_short_lease_expire, HOUR, LONG_LEASE, SHORT_LEASE};

async fn put_n(store: &dyn QueueStore, queue: &str, n: usize) -> Vec<pq_api::JobId> {
    let jobs = (0..n).map(|i| NewJob::from_json(queue, json!(i))).collect();
    store.put_many(jobs).await.unwrap()
}

async fn config(store: &dyn QueueStore, queue: &str) -> QueueConfig {
    let queues = store.queues().await.unwrap();
    queues
        .into_iter()
        .find(|q| q.name == queue)
        .map(|q| q.config)
        .unwrap_or_default()
}

/// Starts the store's notification listener, if it has one, and waits until it listens: a
/// `wait` on a queue with a ready job returns once the listener is up (or has had its grace).
async fn listening(store: &dyn QueueStore) {
    store.put("listening", &json!(0)).await.unwrap();
    let probe = vec!["listening".to_string()];
    assert!(store.wait(&probe, Duration::from_secs(10)).await.unwrap());
}

/// A paused queue's jobs are not claimed, nor wake waiters; a running job of it finishes;
/// resuming wakes a waiter at once and its jobs are claimed again. Other queues go on.
pub async fn a_paused_queue_is_not_claimed_until_resumed(store: Arc<dyn QueueStore>) {
    put_n(&*store, "q", 2).await;
    let running = store
        .claim(&Claim::new(["q"]).lease(LONG_LEASE))
        .await
        .unwrap()
        .remove(0);
    store.pause("q").await.unwrap();
    assert!(config(&*store, "q").await.paused);
    let other = store.put("other", &json!("o")).await.unwrap();
    let both = Claim::new(["q", "other"]).limit(10).lease(LONG_LEASE);
    let got = store.claim(&both).await.unwrap();
    assert_eq!(got.iter().map(|j| j.id()).collect::<Vec<_>>(), [other]);
    assert!(store.claim(&both).await.unwrap().is_empty());
    let q = vec!["q".to_string()];
    assert!(
        !store.wait(&q, Duration::from_millis(200)).await.unwrap(),
        "a paused queue's ready job wakes no one"
    );
    store.complete(&running.lease).await.unwrap();

    let waiter = {
        let store = store.clone();
        tokio::spawn(async move {
            let asked = Instant::now();
            let woke = store.wait(&q, Duration::from_secs(30)).await.unwrap();
            (woke, asked.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    store.resume("q").await.unwrap();
    let (woke, after) = waiter.await.unwrap();
    assert!(woke && after < Duration::from_secs(10), "{after:?}");
    assert!(!config(&*store, "q").await.paused);
    assert_eq!(store.claim(&both).await.unwrap().len(), 1);
}

/// With a concurrency limit, a queue runs at most that many jobs at once; completing,
/// failing or releasing one, or its lease running out, makes room (and wakes a waiter), and
/// extending its lease keeps its place; lifting the limit frees the rest.
pub async fn concurrency_limit_caps_running_jobs(store: Arc<dyn QueueStore>) {
    put_n(&*store, "q", 8).await;
    store
        .configure_queue("q", QueueSetting::Concurrency(Some(2)))
        .await
        .unwrap();
    assert_eq!(config(&*store, "q").await.concurrency, Some(2));
    let claim = Claim::new(["q"]).limit(10).lease(LONG_LEASE);
    let first = store.claim(&claim).await.unwrap();
    assert_eq!(first.len(), 2);
    assert!(store.claim(&claim).await.unwrap().is_empty(), "full");
    let q = vec!["q".to_string()];
    assert!(
        !store.wait(&q, Duration::from_millis(200)).await.unwrap(),
        "a full queue's ready jobs wake no one"
    );

    let waiter = {
        let (store, q) = (store.clone(), q.clone());
        tokio::spawn(async move { store.wait(&q, Duration::from_secs(30)).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    store.complete(&first[0].lease).await.unwrap();
    assert!(waiter.await.unwrap(), "a freed place wakes waiters");
    let second = store.claim(&claim).await.unwrap();
    assert_eq!(second.len(), 1);
    assert!(store.claim(&claim).await.unwrap().is_empty());

    store
        .fail(&second[0].lease, Failure::new("again"))
        .await
        .unwrap();
    let third = store.claim(&claim).await.unwrap();
    assert_eq!(third.len(), 1, "a failed attempt makes room");
    store.release(&third[0].lease).await.unwrap();
    let short = Claim::new(["q"]).limit(10).lease(SHORT_LEASE);
    assert_eq!(
        store.claim(&short).await.unwrap().len(),
        1,
        "so does a release"
    );
    let_short_lease_expire().await;
    let fourth = store.claim(&claim).await.unwrap();
    assert_eq!(fourth.len(), 1, "and a lease running out");

    // Extending a lease keeps its place: a short lease, extended, still holds it after the
    // short one would have run out.
    store
        .configure_queue("q", QueueSetting::Concurrency(Some(1)))
        .await
        .unwrap();
    let done: Vec<Done> = fourth
        .iter()
        .chain(&first[1..])
        .map(|j| j.lease.into())
        .collect();
    assert_eq!(store.complete_many(&done).await.unwrap().len(), 2);
    let brief = Claim::new(["q"]).lease(Duration::from_millis(300));
    let held = store.claim(&brief).await.unwrap().remove(0);
    store.extend(&held.lease, LONG_LEASE).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        store.claim(&claim).await.unwrap().is_empty(),
        "extended, it holds its place"
    );

    store
        .configure_queue("q", QueueSetting::Concurrency(None))
        .await
        .unwrap();
    assert_eq!(config(&*store, "q").await.concurrency, None);
    assert_eq!(store.claim(&claim).await.unwrap().len(), 4);
}

/// Racing claimers never run more of a limited queue's jobs at once than its limit, and
/// every job runs exactly once.
pub async fn racing_claimers_never_exceed_the_concurrency_limit(store: Arc<dyn QueueStore>) {
    const LIMIT: usize = 3;
    let all: HashSet<_> = put_n(&*store, "q", 120).await.into_iter().collect();
    store
        .configure_queue("q", QueueSetting::Concurrency(Some(3)))
        .await
        .unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..8u32)
        .map(|i| {
            let (store, running, peak) = (store.clone(), running.clone(), peak.clone());
            tokio::spawn(async move {
                let claim = Claim::new(["q"]).limit(1 + i % 3).lease(LONG_LEASE);
                let mut mine = Vec::new();
                let mut idle = 0;
                while idle < 50 {
                    let got = store.claim(&claim).await.unwrap();
                    if got.is_empty() {
                        idle += 1;
                        tokio::task::yield_now().await;
                        continue;
                    }
                    idle = 0;
                    let now = running.fetch_add(got.len(), Ordering::SeqCst) + got.len();
                    peak.fetch_max(now, Ordering::SeqCst);
                    // The store's own count, taken while these jobs are held: racing claims
                    // that shared a place would show here as more running than the limit.
                    let held = store.stats("q").await.unwrap().running;
                    peak.fetch_max(usize::try_from(held).unwrap(), Ordering::SeqCst);
                    // Counted down before the store frees the places, so the count never
                    // runs behind the store's.
                    running.fetch_sub(got.len(), Ordering::SeqCst);
                    let done: Vec<Done> = got.iter().map(|j| j.lease.into()).collect();
                    mine.extend(store.complete_many(&done).await.unwrap());
                }
                mine
            })
        })
        .collect();
    let mut seen = Vec::new();
    for t in tasks {
        seen.extend(t.await.unwrap());
    }
    let peak = peak.load(Ordering::SeqCst);
    assert!(
        peak <= LIMIT,
        "{peak} ran at once, over the limit of {LIMIT}"
    );
    assert_eq!(seen.len(), all.len(), "each job exactly once");
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), all);
}

/// With a rate limit, no more jobs start in a window than the limit allows, whether or not
/// they finished; once the window has passed a waiter is woken and more start.
pub async fn rate_limit_caps_starts_per_period(store: Arc<dyn QueueStore>) {
    put_n(&*store, "q", 10).await;
    let rate = Rate::new(3, Duration::from_secs(2));
    store
        .configure_queue("q", QueueSetting::Rate(Some(rate)))
        .await
        .unwrap();
    assert_eq!(config(&*store, "q").await.rate, Some(rate));
    let claim = Claim::new(["q"]).limit(10).lease(LONG_LEASE);
    let started = Instant::now();
    let first = store.claim(&claim).await.unwrap();
    assert_eq!(first.len(), 3);
    let done: Vec<Done> = first.iter().map(|j| j.lease.into()).collect();
    store.complete_many(&done).await.unwrap();
    assert!(
        store.claim(&claim).await.unwrap().is_empty(),
        "completed, they still count in the window"
    );
    let q = vec!["q".to_string()];
    assert!(store.wait(&q, Duration::from_secs(30)).await.unwrap());
    let second = store.claim(&claim).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "not before the window passed"
    );
    assert_eq!(second.len(), 3);
    store
        .configure_queue("q", QueueSetting::Rate(None))
        .await
        .unwrap();
    assert_eq!(store.claim(&claim).await.unwrap().len(), 4);
}

/// Cancelling a running job stops it: it is kept, cancelled, its holder can no longer
/// complete, fail, extend, release or report progress on it (extending says it was
/// cancelled), a hint reaches `cancel_requested` within a second, and it is never claimed
/// again nor retried; cancelling it again removes it.
pub async fn cancel_stops_a_running_job_and_keeps_it_cancelled(store: Arc<dyn QueueStore>) {
    listening(&*store).await;
    let id = store.put("q", &json!("long")).await.unwrap();
    let job = store
        .claim(&Claim::new(["q"]).lease(LONG_LEASE))
        .await
        .unwrap()
        .remove(0);
    let hint = {
        let store = store.clone();
        tokio::spawn(async move {
            store.cancel_requested(id).await;
            Instant::now()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let cancelling = Instant::now();
    store.cancel(id).await.unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(1), hint)
        .await
        .expect("cancel_requested resolved within a second")
        .unwrap();
    assert!(heard >= cancelling, "not before the cancel");

    let stored = store.job(id).await.unwrap();
    assert_eq!(stored.state, JobState::Cancelled);
    assert_eq!(store.stats("q").await.unwrap().cancelled, 1);
    let lease = job.lease;
    assert!(matches!(
        store.extend(&lease, LONG_LEASE).await,
        Err(Error::Cancelled(x)) if x == id
    ));
    assert!(store
        .complete_many(&[lease.into()])
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        store.fail(&lease, Failure::new("late")).await,
        Err(Error::Cancelled(_))
    ));
    assert!(matches!(
        store.release(&lease).await,
        Err(Error::Cancelled(_))
    ));
    assert!(matches!(
        store.set_progress(&lease, json!(1)).await,
        Err(Error::Cancelled(_))
    ));
    assert_eq!(store.job(id).await.unwrap().state, JobState::Cancelled);
    let_short_lease_expire().await;
    assert!(store
        .claim(&Claim::new(["q"]).lease(LONG_LEASE))
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        store.retry(id).await,
        Err(Error::InvalidState {
            state: JobState::Cancelled,
            ..
        })
    ));
    store.cancel(id).await.unwrap();
    assert!(matches!(store.job(id).await, Err(Error::NotFound(_))));
}

/// A running job's progress is returned by `job()`, replaced by each report, and kept for
/// later attempts, after a failure and after a release; a lost lease reports nothing.
pub async fn progress_is_kept_across_attempts(store: Arc<dyn QueueStore>) {
    let id = store.put("q", &json!("import")).await.unwrap();
    assert_eq!(store.job(id).await.unwrap().progress, None);
    let claim = Claim::new(["q"]).lease(LONG_LEASE);
    let first = store.claim(&claim).await.unwrap().remove(0);
    assert_eq!(first.job.progress, None);
    store
        .set_progress(&first.lease, json!({"rows": 10}))
        .await
        .unwrap();
    store
        .set_progress(&first.lease, json!({"rows": 20}))
        .await
        .unwrap();
    assert_eq!(
        store.job(id).await.unwrap().progress,
        Some(json!({"rows": 20}))
    );
    store.fail(&first.lease, Failure::new("cut")).await.unwrap();
    let second = store.claim(&claim).await.unwrap().remove(0);
    assert_eq!(second.job.progress, Some(json!({"rows": 20})));
    assert!(matches!(
        store.set_progress(&first.lease, json!("stale")).await,
        Err(Error::LeaseLost(_))
    ));
    store
        .set_progress(&second.lease, json!({"rows": 30}))
        .await
        .unwrap();
    store.release(&second.lease).await.unwrap();
    let third = store.claim(&claim).await.unwrap().remove(0);
    assert_eq!(third.job.progress, Some(json!({"rows": 30})));
}

/// `queues` lists every queue that holds jobs or has settings, with its settings and counts;
/// a setting set back to its default shows as the default.
pub async fn queues_lists_settings_and_counts(store: Arc<dyn QueueStore>) {
    put_n(&*store, "a", 2).await;
    put_n(&*store, "b", 1).await;
    store
        .claim(&Claim::new(["b"]).lease(LONG_LEASE))
        .await
        .unwrap();
    store.pause("c").await.unwrap();
    store
        .configure_queue("a", QueueSetting::Retention(Some(Duration::from_secs(60))))
        .await
        .unwrap();
    let queues = store.queues().await.unwrap();
    let names: Vec<&str> = queues.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!((queues[0].stats.ready, queues[0].stats.total()), (2, 2));
    assert_eq!(queues[0].config.retention, Some(Duration::from_secs(60)));
    assert_eq!(
        (queues[1].stats.running, queues[1].config),
        (1, QueueConfig::default())
    );
    assert!(queues[2].config.paused);
    assert_eq!(queues[2].stats.total(), 0);
    store.resume("c").await.unwrap();
    store
        .configure_queue("a", QueueSetting::Retention(None))
        .await
        .unwrap();
    let queues = store.queues().await.unwrap();
    assert!(queues.iter().all(|q| q.config == QueueConfig::default()));
}

/// Bad queue names and settings are rejected before anything changes.
pub async fn queue_settings_are_validated(store: Arc<dyn QueueStore>) {
    let bad = [
        ("", QueueSetting::Paused(true)),
        ("q", QueueSetting::Concurrency(Some(0))),
        (
            "q",
            QueueSetting::Concurrency(Some(pq_api::MAX_QUEUE_LIMIT + 1)),
        ),
        (
            "q",
            QueueSetting::Rate(Some(Rate::new(0, Duration::from_secs(1)))),
        ),
        ("q", QueueSetting::Rate(Some(Rate::new(1, Duration::ZERO)))),
        ("q", QueueSetting::Retention(Some(Duration::ZERO))),
    ];
    for (queue, setting) in bad {
        let err = store.configure_queue(queue, setting).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { .. }),
            "{setting:?}: {err:?}"
        );
    }
    assert!(store.queues().await.unwrap().is_empty());
}

/// Failed and cancelled jobs, and jobs whose last lease ran out, are pruned once their
/// queue's retention has passed, not before; other queues keep theirs (a week by default).
pub async fn prune_removes_ended_jobs_after_their_retention(store: Arc<dyn QueueStore>) {
    let keep = Duration::from_millis(600);
    store
        .configure_queue("q", QueueSetting::Retention(Some(keep)))
        .await
        .unwrap();
    let once = |queue: &str, what: &str| NewJob::from_json(queue, json!(what)).max_attempts(1);
    let ids = store
        .put_many(vec![
            once("q", "failed"),
            once("q", "cancelled"),
            once("q", "lapsed"),
            once("q", "waiting").run_at(HOUR),
            once("week", "failed"),
        ])
        .await
        .unwrap();
    let two = store
        .claim(&Claim::new(["q"]).limit(2).lease(LONG_LEASE))
        .await
        .unwrap();
    assert_eq!(two.iter().map(|j| j.id()).collect::<Vec<_>>(), ids[..2]);
    store.fail(&two[0].lease, Failure::new("x")).await.unwrap();
    store.cancel(ids[1]).await.unwrap();
    let week = store
        .claim(&Claim::new(["week"]).lease(LONG_LEASE))
        .await
        .unwrap();
    store.fail(&week[0].lease, Failure::new("x")).await.unwrap();
    let lapsed = store
        .claim(&Claim::new(["q"]).lease(SHORT_LEASE))
        .await
        .unwrap();
    assert_eq!(lapsed.iter().map(|j| j.id()).collect::<Vec<_>>(), [ids[2]]);
    let_short_lease_expire().await;
    assert_eq!(store.job(ids[2]).await.unwrap().state, JobState::Failed);

    assert_eq!(store.prune().await.unwrap().jobs, 0, "within the retention");
    tokio::time::sleep(keep + Duration::from_millis(100)).await;
    assert_eq!(store.prune().await.unwrap().jobs, 3);
    for id in &ids[..3] {
        assert!(
            matches!(store.job(*id).await, Err(Error::NotFound(_))),
            "{id}"
        );
    }
    assert_eq!(store.job(ids[3]).await.unwrap().state, JobState::Scheduled);
    assert_eq!(store.job(ids[4]).await.unwrap().state, JobState::Failed);
    assert_eq!(store.prune().await.unwrap().jobs, 0);
}

/// Pruning forgets a key's record once no job waits on or runs under the key and it holds no
/// state; a key with a waiting or running job, or a saved state, keeps it. A job put with a
/// forgotten key runs, and so does a failed job of one, retried.
pub async fn prune_forgets_idle_keys_only(store: Arc<dyn QueueStore>) {
    let keyed = |key: &str| NewJob::from_json("q", json!(key)).serial_key(key);
    store
        .put_many(vec![keyed("done"), keyed("stateful"), keyed("waiting")])
        .await
        .unwrap();
    let claim = Claim::new(["q"]).limit(10).lease(LONG_LEASE);
    let got = store.claim(&claim).await.unwrap();
    let by = |key: &str| {
        got.iter()
            .find(|j| j.job.serial_key.as_deref() == Some(key))
            .unwrap()
    };
    store.complete(&by("done").lease).await.unwrap();
    store
        .complete_with(Done::new(by("stateful").lease).key_state(json!({"n": 1})))
        .await
        .unwrap();
    store.release(&by("waiting").lease).await.unwrap();
    let failed = store
        .put_job(keyed("failed").max_attempts(1))
        .await
        .unwrap();
    let f = store.claim(&claim).await.unwrap();
    let f = f.iter().find(|j| j.id() == failed).unwrap();
    store.fail(&f.lease, Failure::new("x")).await.unwrap();

    let pruned = store.prune().await.unwrap();
    assert_eq!(pruned.keys, 2, "done and failed");
    assert_eq!(store.key_state("q", "done").await.unwrap(), None);
    assert_eq!(
        store.key_state("q", "stateful").await.unwrap(),
        Some(json!({"n": 1}))
    );
    assert_eq!(
        store.key_state("q", "waiting").await.unwrap(),
        Some(json!(null))
    );
    assert_eq!(store.key_state("q", "failed").await.unwrap(), None);

    let again = store.put_job(keyed("done")).await.unwrap();
    store.retry(failed).await.unwrap();
    let ids: HashSet<_> = store
        .claim(&claim)
        .await
        .unwrap()
        .iter()
        .map(|j| j.id())
        .collect();
    assert!(ids.contains(&again) && ids.contains(&failed), "{ids:?}");
}

/// Puts of a key racing prunes that would forget it lose nothing: every job put runs.
pub async fn racing_puts_and_prunes_lose_no_key(store: Arc<dyn QueueStore>) {
    const ROUNDS: usize = 40;
    let mut put = Vec::new();
    for round in 0..ROUNDS {
        let key = format!("k{}", round % 4);
        let first = store
            .put_job(NewJob::from_json("q", json!(round)).serial_key(&key))
            .await
            .unwrap();
        let job = store
            .claim(&Claim::new(["q"]).lease(LONG_LEASE))
            .await
            .unwrap()
            .remove(0);
        assert_eq!(job.id(), first);
        store.complete(&job.lease).await.unwrap();
        // The key is idle now: a prune may forget it while this put lands.
        let (id, pruned) = tokio::join!(
            store.put_job(NewJob::from_json("q", json!(round)).serial_key(&key)),
            store.prune()
        );
        pruned.unwrap();
        let id = id.unwrap();
        put.push(id);
        let job = store
            .claim(&Claim::new(["q"]).lease(LONG_LEASE))
            .await
            .unwrap();
        assert_eq!(
            job.iter().map(|j| j.id()).collect::<Vec<_>>(),
            [id],
            "round {round}: the job put beside a prune runs"
        );
        store.complete(&job[0].lease).await.unwrap();
    }
    assert_eq!(put.len(), ROUNDS);
}

/// A queue's oldest ready job tells how long it has been claimable, by the store's clock; a
/// queue with no ready job (only scheduled or running ones) tells none.
pub async fn queues_tell_how_long_the_oldest_ready_job_waited(store: Arc<dyn QueueStore>) {
    let hour_ago = chrono::Utc::now() - chrono::TimeDelta::hours(1);
    let jobs = vec![
        NewJob::from_json("a", json!(1)),
        NewJob::from_json("a", json!(2)).run_at(hour_ago),
        NewJob::from_json("b", json!(3)).run_at(Duration::from_secs(300)),
        NewJob::from_json("c", json!(4)),
    ];
    store.put_many(jobs).await.unwrap();
    store
        .claim(&Claim::new(["c"]).lease(LONG_LEASE))
        .await
        .unwrap();
    let queues = store.queues().await.unwrap();
    let age = |name: &str| queues.iter().find(|q| q.name == name).unwrap().oldest_ready;
    let a = age("a").expect("queue a has ready jobs");
    assert!(
        a >= Duration::from_secs(3600) && a < Duration::from_secs(3660),
        "the oldest of a's ready jobs became ready an hour ago, not {a:?} ago"
    );
    assert_eq!((age("b"), age("c")), (None, None));
}

/// `jobs` lists the jobs a filter admits, newest first, a page at a time, each as `job`
/// reports it; a bad filter is refused.
pub async fn list_jobs_lists_newest_first_by_queue_and_state(store: Arc<dyn QueueStore>) {
    let a = put_n(&*store, "a", 4).await;
    let b = put_n(&*store, "b", 1).await;
    let claimed = store
        .claim(&Claim::new(["a"]).lease(LONG_LEASE))
        .await
        .unwrap();
    let lease = &claimed[0].lease;
    store
        .fail(lease, Failure::new("boom").give_up())
        .await
        .unwrap();
    let ids = |jobs: Vec<pq_api::Job>| jobs.into_iter().map(|j| j.id).collect::<Vec<_>>();
    let all = store.list_jobs(&pq_api::JobFilter::new()).await.unwrap();
    assert_eq!(ids(all.clone()), [b[0], a[3], a[2], a[1], a[0]]);
    for job in all {
        assert_eq!(job, store.job(job.id).await.unwrap());
    }
    let of_a = pq_api::JobFilter::new().queue("a");
    let page = store.list_jobs(&of_a.clone().limit(2)).await.unwrap();
    assert_eq!(ids(page), [a[3], a[2]]);
    let next = store
        .list_jobs(&of_a.clone().before(a[2]).limit(2))
        .await
        .unwrap();
    assert_eq!(ids(next), [a[1], a[0]]);
    let failed = store
        .list_jobs(&of_a.clone().state(JobState::Failed))
        .await
        .unwrap();
    assert_eq!(ids(failed.clone()), [a[0]]);
    assert_eq!(failed[0].last_error.as_deref(), Some("boom"));
    let ready = store
        .list_jobs(&of_a.clone().state(JobState::Ready))
        .await
        .unwrap();
    assert_eq!(ids(ready), [a[3], a[2], a[1]]);
    let none = pq_api::JobFilter::new().queue("b").state(JobState::Failed);
    assert!(store.list_jobs(&none).await.unwrap().is_empty());
    for bad in [
        pq_api::JobFilter::new().limit(0),
        pq_api::JobFilter::new().limit(pq_api::MAX_LIST_LIMIT + 1),
        pq_api::JobFilter::new().queue(""),
    ] {
        let err = store.list_jobs(&bad).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { .. }),
            "{bad:?}: {err:?}"
        );
    }
}

/// What workers report finished adds up per queue in the store's per-minute record, which
/// lists it oldest first; a report with a bad queue name is refused and adds nothing.
pub async fn throughput_adds_up_what_workers_report(store: Arc<dyn QueueStore>) {
    use pq_api::Tally;
    let before = chrono::Utc::now();
    store
        .record_throughput(&[Tally::new("a", 3, 1), Tally::new("b", 2, 0)])
        .await
        .unwrap();
    store
        .record_throughput(&[Tally::new("a", 4, 0), Tally::new("a", 1, 1)])
        .await
        .unwrap();
    store.record_throughput(&[]).await.unwrap();
    let bad = store
        .record_throughput(&[Tally::new("a", 100, 0), Tally::new("", 1, 0)])
        .await
        .unwrap_err();
    assert!(matches!(bad, Error::InvalidArgument { .. }), "{bad:?}");
    let records = store.throughput(Duration::from_secs(120)).await.unwrap();
    let mut sums = std::collections::BTreeMap::new();
    for r in &records {
        let sum = sums.entry(r.queue.as_str()).or_insert((0, 0));
        *sum = (sum.0 + r.completed, sum.1 + r.failed);
        let minute_of_before = before - chrono::TimeDelta::minutes(1);
        assert!(
            r.minute > minute_of_before && r.minute <= chrono::Utc::now(),
            "{r:?} is not the minute of the reports"
        );
        assert_eq!(r.minute.timestamp() % 60, 0, "{r:?} starts no minute");
    }
    let sums: Vec<_> = sums.into_iter().collect();
    assert_eq!(sums, [("a", (8, 2)), ("b", (2, 0))]);
    let order: Vec<_> = records
        .iter()
        .map(|r| (r.minute, r.queue.clone()))
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "oldest first, then by queue");
}

/// A queue with a concurrency limit and a rate limit keeps to both: a claim takes no more
/// than the tighter of the two allows, whichever it is.
pub async fn a_queue_with_both_limits_keeps_to_the_tighter(store: Arc<dyn QueueStore>) {
    put_n(&*store, "conc", 6).await;
    put_n(&*store, "rate", 6).await;
    for (queue, concurrency, rate) in [("conc", 2, 3), ("rate", 3, 2)] {
        store
            .configure_queue(queue, QueueSetting::Concurrency(Some(concurrency)))
            .await
            .unwrap();
        store
            .configure_queue(queue, QueueSetting::Rate(Some(Rate::new(rate, HOUR))))
            .await
            .unwrap();
    }
    let both = config(&*store, "conc").await;
    assert_eq!(
        (both.concurrency, both.rate),
        (Some(2), Some(Rate::new(3, HOUR))),
        "the store keeps both"
    );
    let claim = |queue: &'static str| Claim::new([queue]).limit(10).lease(LONG_LEASE);
    let conc = store.claim(&claim("conc")).await.unwrap();
    assert_eq!(conc.len(), 2, "the concurrency limit is the tighter");
    let done: Vec<Done> = conc.iter().map(|j| j.lease.into()).collect();
    store.complete_many(&done).await.unwrap();
    let conc = store.claim(&claim("conc")).await.unwrap();
    assert_eq!(
        conc.len(),
        1,
        "room to run two, but one start left this hour"
    );
    store.complete(&conc[0].lease).await.unwrap();
    assert!(store.claim(&claim("conc")).await.unwrap().is_empty());

    let rate = store.claim(&claim("rate")).await.unwrap();
    assert_eq!(rate.len(), 2, "the rate limit is the tighter");
}

/// A cancelled running job keeps its place under its queue's concurrency limit until its
/// lease runs out, so nothing runs beside a handler still stopping; then the place is free.
pub async fn a_cancelled_running_job_keeps_its_place_until_its_lease_ends(
    store: Arc<dyn QueueStore>,
) {
    let ids = put_n(&*store, "q", 2).await;
    store
        .configure_queue("q", QueueSetting::Concurrency(Some(1)))
        .await
        .unwrap();
    // Long enough for the checks below on a loaded machine; short enough to wait out.
    let lease = Duration::from_millis(1500);
    let running = store
        .claim(&Claim::new(["q"]).lease(lease))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(running.id(), ids[0]);
    store.cancel(ids[0]).await.unwrap();
    let claim = Claim::new(["q"]).limit(10).lease(LONG_LEASE);
    assert!(
        store.claim(&claim).await.unwrap().is_empty(),
        "its place stays taken while its lease lasts"
    );
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let next = store.claim(&claim).await.unwrap();
    assert_eq!(next.iter().map(|j| j.id()).collect::<Vec<_>>(), [ids[1]]);
}

/// A paused queue keeps every job, its expired leases' included: none is claimed again until
/// the queue is resumed.
pub async fn a_paused_queue_holds_its_expired_jobs_too(store: Arc<dyn QueueStore>) {
    let id = store.put("q", &json!("lapses")).await.unwrap();
    store
        .claim(&Claim::new(["q"]).lease(SHORT_LEASE))
        .await
        .unwrap();
    store.pause("q").await.unwrap();
    let_short_lease_expire().await;
    let claim = Claim::new(["q"]).lease(LONG_LEASE);
    assert!(store.claim(&claim).await.unwrap().is_empty(), "paused");
    store.resume("q").await.unwrap();
    let again = store.claim(&claim).await.unwrap();
    assert_eq!(again.iter().map(|j| j.id()).collect::<Vec<_>>(), [id]);
    assert_eq!(again[0].job.attempts, 2);
}

/// A failed job's retention counts from when it failed, not from when it was put: one put
/// long before it failed is kept its whole retention after.
pub async fn prune_counts_retention_from_when_a_job_ended(store: Arc<dyn QueueStore>) {
    let keep = Duration::from_millis(1500);
    store
        .configure_queue("q", QueueSetting::Retention(Some(keep)))
        .await
        .unwrap();
    let id = store.put("q", &json!("old")).await.unwrap();
    tokio::time::sleep(keep + Duration::from_millis(100)).await;
    let job = store
        .claim(&Claim::new(["q"]).lease(LONG_LEASE))
        .await
        .unwrap()
        .remove(0);
    store
        .fail(&job.lease, Failure::new("late").give_up())
        .await
        .unwrap();
    assert_eq!(store.prune().await.unwrap().jobs, 0, "it failed just now");
    assert_eq!(store.job(id).await.unwrap().state, JobState::Failed);
    tokio::time::sleep(keep + Duration::from_millis(100)).await;
    assert_eq!(
        store.prune().await.unwrap().jobs,
        1,
        "its retention has passed"
    );
}

/// The records of the last `since` include the whole minute `since` ago: asked for the last
/// zero seconds, the store returns the current minute's record.
pub async fn throughput_includes_the_minute_since_ago(store: Arc<dyn QueueStore>) {
    use pq_api::Tally;
    // A minute may turn between a report and the read; two tries cannot both straddle one.
    let mut seen = Vec::new();
    for attempt in 0..2 {
        let queue = format!("edge{attempt}");
        store
            .record_throughput(&[Tally::new(&queue, 1, 0)])
            .await
            .unwrap();
        let records = store.throughput(Duration::ZERO).await.unwrap();
        seen.push(records.iter().any(|r| r.queue == queue));
    }
    assert!(
        seen.contains(&true),
        "the current minute is left out: {seen:?}"
    );
}

//! Finishing attempts: complete, fail, extend, release, retry.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use pq_api::{
    Claim, ClaimedJob, Done, Error, Failure, JobState, Lease, NewJob, QueueStore, QueueStoreExt,
};
use serde_json::json;

use crate::{let_short_lease_expire, HOUR, LONG_LEASE, SHORT_LEASE};

async fn claim_one(store: &dyn QueueStore, lease: Duration) -> ClaimedJob {
    let mut got = store.claim(&Claim::new(["q"]).lease(lease)).await.unwrap();
    assert_eq!(got.len(), 1, "expected one claimable job");
    got.remove(0)
}

/// A completed job is gone.
pub async fn complete_removes_the_job(store: Arc<dyn QueueStore>) {
    let id = store.put("q", &json!(1)).await.unwrap();
    let job = claim_one(&*store, LONG_LEASE).await;
    store.complete(&job.lease).await.unwrap();
    assert!(matches!(store.job(id).await, Err(Error::NotFound(x)) if x == id));
    assert_eq!(store.stats("q").await.unwrap().total(), 0);
    assert!(matches!(store.complete(&job.lease).await, Err(Error::LeaseLost(x)) if x == id));
}

/// complete_many completes the jobs whose leases are held and leaves the others alone.
pub async fn complete_many_completes_only_held_leases(store: Arc<dyn QueueStore>) {
    let jobs = (0..3).map(|i| NewJob::from_json("q", json!(i))).collect();
    let ids = store.put_many(jobs).await.unwrap();
    let got = store
        .claim(&Claim::new(["q"]).limit(3).lease(LONG_LEASE))
        .await
        .unwrap();
    let forged = Lease {
        job_id: got[2].id(),
        token: got[2].lease.token.wrapping_add(1),
    };
    let done = store
        .complete_many(&[got[0].lease.into(), got[1].lease.into(), forged.into()])
        .await
        .unwrap();
    assert_eq!(done, vec![ids[0], ids[1]]);
    assert_eq!(store.job(ids[2]).await.unwrap().state, JobState::Running);
    assert_eq!(
        store.complete_many(&[got[2].lease.into()]).await.unwrap(),
        vec![ids[2]]
    );
}

/// A lease fenced off by a newer claim can neither complete, fail, extend nor release the job.
pub async fn stale_lease_changes_nothing(store: Arc<dyn QueueStore>) {
    let id = store.put("q", &json!(1)).await.unwrap();
    let stale = claim_one(&*store, SHORT_LEASE).await;
    let_short_lease_expire().await;
    let fresh = claim_one(&*store, LONG_LEASE).await;
    let lost = |r: Result<(), Error>| matches!(r, Err(Error::LeaseLost(x)) if x == id);
    assert!(lost(store.complete(&stale.lease).await));
    assert!(lost(
        store
            .fail(&stale.lease, Failure::new("late"))
            .await
            .map(|_| ())
    ));
    assert!(lost(store.extend(&stale.lease, HOUR).await.map(|_| ())));
    assert!(lost(store.release(&stale.lease).await));
    let job = store.job(id).await.unwrap();
    assert_eq!(
        (job.state, job.attempts, job.last_error),
        (JobState::Running, 2, None)
    );
    assert_eq!(job.run_at, fresh.lease_expires_at());
    store.complete(&fresh.lease).await.unwrap();
}

/// Extend pushes the lease expiry out from now; a zero extension is rejected.
pub async fn extend_moves_the_lease_expiry(store: Arc<dyn QueueStore>) {
    let id = store.put("q", &json!(1)).await.unwrap();
    let job = claim_one(&*store, Duration::from_secs(1)).await;
    let before = Utc::now();
    let until = store.extend(&job.lease, HOUR).await.unwrap();
    let ahead = until - before;
    assert!(
        ahead > TimeDelta::minutes(59) && ahead < TimeDelta::minutes(61),
        "{ahead}"
    );
    assert_eq!(store.job(id).await.unwrap().run_at, until);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(store.claim(&Claim::new(["q"])).await.unwrap().is_empty());
    let err = store.extend(&job.lease, Duration::ZERO).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    store.complete(&job.lease).await.unwrap();
}

/// With attempts left a failed attempt is retried at the given time, recording the error.
pub async fn fail_with_attempts_left_schedules_a_retry(store: Arc<dyn QueueStore>) {
    let id = store
        .put_job(NewJob::from_json("q", json!(1)).max_attempts(3))
        .await
        .unwrap();
    let job = claim_one(&*store, LONG_LEASE).await;
    let state = store
        .fail(&job.lease, Failure::new("boom").retry_at(HOUR))
        .await
        .unwrap();
    assert_eq!(state, JobState::Scheduled);
    let seen = store.job(id).await.unwrap();
    assert_eq!(seen.state, JobState::Scheduled);
    assert_eq!(seen.last_error.as_deref(), Some("boom"));
    assert_eq!(seen.attempts, 1);
    assert!(store.claim(&Claim::new(["q"])).await.unwrap().is_empty());

    store.cancel(id).await.unwrap();
    let id = store
        .put_job(NewJob::from_json("q", json!(2)).max_attempts(3))
        .await
        .unwrap();
    let job = claim_one(&*store, LONG_LEASE).await;
    assert_eq!(
        store.fail(&job.lease, Failure::new("again")).await.unwrap(),
        JobState::Ready
    );
    let again = claim_one(&*store, LONG_LEASE).await;
    assert_eq!((again.id(), again.job.attempts), (id, 2));
    assert_eq!(again.job.last_error.as_deref(), Some("again"));
}

/// Out of attempts a failed job is left failed, never claimed, kept for inspection.
pub async fn fail_without_attempts_left_leaves_the_job_failed(store: Arc<dyn QueueStore>) {
    let id = store
        .put_job(NewJob::from_json("q", json!(1)).max_attempts(2))
        .await
        .unwrap();
    let job = claim_one(&*store, LONG_LEASE).await;
    assert_eq!(
        store.fail(&job.lease, Failure::new("one")).await.unwrap(),
        JobState::Ready
    );
    let job = claim_one(&*store, LONG_LEASE).await;
    let state = store
        .fail(&job.lease, Failure::new("two").retry_at(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(state, JobState::Failed);
    assert!(store.claim(&Claim::new(["q"])).await.unwrap().is_empty());
    let seen = store.job(id).await.unwrap();
    assert_eq!((seen.state, seen.attempts), (JobState::Failed, 2));
    assert_eq!(seen.last_error.as_deref(), Some("two"));
    assert_eq!(store.stats("q").await.unwrap().failed, 1);
}

/// A failure that gives up fails the job at once, attempts left or not; retry restarts it.
pub async fn failing_with_give_up_fails_the_job_at_once(store: Arc<dyn QueueStore>) {
    let id = store
        .put_job(NewJob::from_json("q", json!(1)).max_attempts(5))
        .await
        .unwrap();
    let job = claim_one(&*store, LONG_LEASE).await;
    let failure = Failure::new("cannot decode").retry_at(HOUR).give_up();
    assert_eq!(
        store.fail(&job.lease, failure).await.unwrap(),
        JobState::Failed
    );
    assert!(store.claim(&Claim::new(["q"])).await.unwrap().is_empty());
    let seen = store.job(id).await.unwrap();
    assert_eq!((seen.state, seen.attempts), (JobState::Failed, 1));
    assert_eq!(seen.last_error.as_deref(), Some("cannot decode"));
    store.retry(id).await.unwrap();
    assert_eq!(claim_one(&*store, LONG_LEASE).await.id(), id);
}

/// Only a failed job can be retried; it restarts ready with zero attempts.
pub async fn retry_restarts_only_failed_jobs(store: Arc<dyn QueueStore>) {
    let id = store
        .put_job(NewJob::from_json("q", json!(1)).max_attempts(1))
        .await
        .unwrap();
    let err = store.retry(id).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidState {
                state: JobState::Ready,
                ..
            }
        ),
        "{err:?}"
    );
    let job = claim_one(&*store, LONG_LEASE).await;
    let err = store.retry(id).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidState {
                state: JobState::Running,
                ..
            }
        ),
        "{err:?}"
    );
    store.fail(&job.lease, Failure::new("no")).await.unwrap();
    store.retry(id).await.unwrap();
    let seen = store.job(id).await.unwrap();
    assert_eq!((seen.state, seen.attempts), (JobState::Ready, 0));
    assert_eq!(seen.last_error.as_deref(), Some("no"));
    let again = claim_one(&*store, LONG_LEASE).await;
    assert_eq!((again.id(), again.job.attempts), (id, 1));
}

/// Release hands the job back, ready at once, without counting the attempt.
pub async fn release_hands_the_job_back_without_counting_the_attempt(store: Arc<dyn QueueStore>) {
    let id = store.put("q", &json!(1)).await.unwrap();
    let job = claim_one(&*store, LONG_LEASE).await;
    store.release(&job.lease).await.unwrap();
    let seen = store.job(id).await.unwrap();
    assert_eq!((seen.state, seen.attempts), (JobState::Ready, 0));
    let again = claim_one(&*store, LONG_LEASE).await;
    assert_eq!((again.id(), again.job.attempts), (id, 1));
    assert!(matches!(
        store.release(&job.lease).await,
        Err(Error::LeaseLost(_))
    ));
}

/// Snooze hands the job back without counting the attempt, scheduled `delay` ahead; a
/// snooze of zero is a release, and a lost lease is refused.
pub async fn snoozed_job_waits_without_counting_the_attempt(store: Arc<dyn QueueStore>) {
    let id = store
        .put_job(NewJob::from_json("q", json!(1)).max_attempts(1))
        .await
        .unwrap();
    let job = claim_one(&*store, LONG_LEASE).await;
    let before = Utc::now();
    store.snooze(&job.lease, HOUR).await.unwrap();
    let seen = store.job(id).await.unwrap();
    assert_eq!((seen.state, seen.attempts), (JobState::Scheduled, 0));
    assert!(
        seen.run_at >= before + TimeDelta::minutes(59),
        "{:?}",
        seen.run_at
    );
    assert!(store.claim(&Claim::new(["q"])).await.unwrap().is_empty());
    assert!(matches!(
        store.snooze(&job.lease, HOUR).await,
        Err(Error::LeaseLost(_))
    ));
    assert!(matches!(
        store.snooze(&job.lease, pq_api::MAX_DURATION * 2).await,
        Err(Error::InvalidArgument { .. })
    ));

    let other = store.put("q", &json!(2)).await.unwrap();
    let job = claim_one(&*store, LONG_LEASE).await;
    assert_eq!(job.id(), other);
    store.snooze(&job.lease, Duration::ZERO).await.unwrap();
    let seen = store.job(other).await.unwrap();
    assert_eq!((seen.state, seen.attempts), (JobState::Ready, 0));
}

/// A job whose lease expired on its last attempt is failed, not claimed again.
pub async fn expired_lease_without_attempts_left_is_failed(store: Arc<dyn QueueStore>) {
    let id = store
        .put_job(NewJob::from_json("q", json!(1)).max_attempts(1))
        .await
        .unwrap();
    claim_one(&*store, SHORT_LEASE).await;
    let_short_lease_expire().await;
    assert_eq!(store.job(id).await.unwrap().state, JobState::Failed);
    assert!(store.claim(&Claim::new(["q"])).await.unwrap().is_empty());
    assert_eq!(store.stats("q").await.unwrap().failed, 1);
    store.retry(id).await.unwrap();
    assert_eq!(claim_one(&*store, LONG_LEASE).await.id(), id);
}

/// A lease that expired, but whose job nobody has claimed since, still completes the job.
pub async fn expired_but_unreclaimed_lease_still_completes_its_job(store: Arc<dyn QueueStore>) {
    let id = store.put("q", &json!(1)).await.unwrap();
    let job = claim_one(&*store, SHORT_LEASE).await;
    let_short_lease_expire().await;
    let done = store.complete_many(&[job.lease.into()]).await.unwrap();
    assert_eq!(done, vec![id]);
    assert!(matches!(store.job(id).await, Err(Error::NotFound(_))));
}

/// A failure message holding NUL characters (PostgreSQL's `text` cannot store one) is
/// recorded with each replaced by U+FFFD, the replacement character: a handler's error
/// never leaves its failure unrecorded.
pub async fn a_failure_message_holding_nul_characters_is_recorded(store: Arc<dyn QueueStore>) {
    let id = store.put("q", &json!(1)).await.unwrap();
    let job = claim_one(&*store, LONG_LEASE).await;
    let state = store
        .fail(&job.lease, Failure::new("bad \u{0} byte\u{0}").give_up())
        .await
        .unwrap();
    assert_eq!(state, JobState::Failed);
    let failed = store.job(id).await.unwrap();
    assert_eq!(
        failed.last_error.as_deref(),
        Some("bad \u{fffd} byte\u{fffd}")
    );
}

/// A completion's result or key state, or a progress report, holding a NUL character
/// (PostgreSQL's `jsonb` cannot store one) is rejected before anything changes: no job of the
/// call is completed, and each can still be completed.
pub async fn completions_and_progress_holding_nul_characters_are_rejected(
    store: Arc<dyn QueueStore>,
) {
    let a = store.put("q", &json!(1)).await.unwrap();
    let b = store.put("q", &json!(2)).await.unwrap();
    let claimed = store
        .claim(&Claim::new(["q"]).limit(2).lease(LONG_LEASE))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    let (first, second) = (claimed[0].lease, claimed[1].lease);
    let bad = json!({"s": "a\u{0}b"});
    let bad_result = vec![
        Done::new(first).result(json!("ok")),
        Done::new(second).result(bad.clone()),
    ];
    let bad_state = vec![Done::new(first), Done::new(second).key_state(bad.clone())];
    for (done, what) in [(bad_result, "result"), (bad_state, "key_state")] {
        let err = store.complete_many(&done).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { what: w, .. } if w == what),
            "{err:?}"
        );
    }
    let err = store.set_progress(&second, bad).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidArgument {
                what: "progress",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(store.stats("q").await.unwrap().running, 2);
    let done = store
        .complete_many(&[Done::new(first), Done::new(second)])
        .await
        .unwrap();
    assert_eq!(done, vec![a, b]);
}

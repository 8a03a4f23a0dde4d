//! Enqueueing: [`QueueStore::put_many`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use pq_api::{
    Claim, Error, JobId, JobState, NewJob, QueueStore, QueueStoreExt, When, MAX_QUEUE_NAME_LEN,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::HOUR;

/// Put returns a distinct id per job, and each job is ready with no attempts.
pub async fn put_returns_distinct_ids_of_ready_jobs(store: Arc<dyn QueueStore>) {
    let a = store.put("q", &json!({"n": 1})).await.unwrap();
    let b = store.put("q", &json!({"n": 2})).await.unwrap();
    assert_ne!(a, b);
    let job = store.job(a).await.unwrap();
    assert_eq!(job.id, a);
    assert_eq!(job.queue, "q");
    assert_eq!(*job.payload, json!({"n": 1}));
    assert_eq!(job.state, JobState::Ready);
    assert_eq!(job.attempts, 0);
    assert_eq!(job.priority, 0);
    assert_eq!(job.max_attempts, pq_api::DEFAULT_MAX_ATTEMPTS);
    assert!(job.run_at <= Utc::now() + TimeDelta::seconds(5));
}

/// put_many returns the ids in the order the jobs were given.
pub async fn put_many_returns_ids_in_the_order_given(store: Arc<dyn QueueStore>) {
    let jobs: Vec<NewJob> = (0..50).map(|i| NewJob::from_json("q", json!(i))).collect();
    let ids = store.put_many(jobs).await.unwrap();
    assert_eq!(ids.len(), 50);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(*store.job(*id).await.unwrap().payload, json!(i));
    }
    assert!(store.put_many(vec![]).await.unwrap().is_empty());
}

/// put_many is atomic: one invalid job and none is stored.
pub async fn put_many_is_atomic(store: Arc<dyn QueueStore>) {
    let jobs = vec![
        NewJob::from_json("q", json!(1)),
        NewJob::from_json("", json!(2)),
        NewJob::from_json("q", json!(3)),
    ];
    let err = store.put_many(jobs).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    assert_eq!(store.stats("q").await.unwrap().total(), 0);
}

/// Empty, over-long and control-character queue names (a NUL among them) are rejected and
/// nothing is stored; asking after such a queue finds nothing.
pub async fn put_rejects_bad_queue_names(store: Arc<dyn QueueStore>) {
    let long = "x".repeat(MAX_QUEUE_NAME_LEN + 1);
    for name in ["", long.as_str(), "a\nb", "a\u{0}b"] {
        let err = store.put(name, &json!(1)).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidArgument {
                    what: "queue name",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(store.stats(name).await.unwrap().total(), 0);
        assert_eq!(store.purge(name).await.unwrap(), 0);
        assert_eq!(store.key_state(name, "k").await.unwrap(), None);
    }
    assert_eq!(store.key_state("q", "a\u{0}").await.unwrap(), None);
    let longest = "y".repeat(MAX_QUEUE_NAME_LEN);
    store.put(&longest, &json!(1)).await.unwrap();
    assert_eq!(store.stats(&longest).await.unwrap().ready, 1);
}

/// `max_attempts` 0 is rejected.
pub async fn put_rejects_zero_max_attempts(store: Arc<dyn QueueStore>) {
    let err = store
        .put_job(NewJob::from_json("q", json!(1)).max_attempts(0))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidArgument {
                what: "max_attempts",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(store.stats("q").await.unwrap().total(), 0);
}

/// A job keeps the time limit it was put with, to the microsecond, and claims hand it out;
/// a limit of nothing, past the longest a store records, or a string that is no duration is
/// refused, and nothing is added.
pub async fn a_job_keeps_its_time_limit(store: Arc<dyn QueueStore>) {
    let limit = Duration::from_nanos(1_500_000_999);
    let id = store
        .put_job(NewJob::from_json("q", json!(1)).timeout(limit))
        .await
        .unwrap();
    let kept = Some(Duration::from_micros(1_500_000));
    assert_eq!(store.job(id).await.unwrap().timeout, kept);
    let plain = store.put("q", &json!(2)).await.unwrap();
    assert_eq!(store.job(plain).await.unwrap().timeout, None);
    let claimed = store.claim(&Claim::new(["q"]).limit(2)).await.unwrap();
    let by_id: HashMap<JobId, Option<Duration>> =
        claimed.iter().map(|c| (c.id(), c.job.timeout)).collect();
    assert_eq!(by_id[&id], kept);
    assert_eq!(by_id[&plain], None);

    for bad in [
        NewJob::from_json("q", json!(3)).timeout(Duration::ZERO),
        NewJob::from_json("q", json!(3)).timeout(Duration::from_secs(u64::MAX)),
        NewJob::from_json("q", json!(3)).timeout("a while"),
    ] {
        let refused = store.put_job(bad).await;
        assert!(
            matches!(
                refused,
                Err(Error::InvalidArgument {
                    what: "timeout",
                    ..
                })
            ),
            "{refused:?}"
        );
    }
    assert_eq!(store.stats("q").await.unwrap().total(), 2);
}

/// A job scheduled an hour ahead is not claimable; one scheduled an hour behind is.
pub async fn scheduled_job_is_not_claimable_before_its_time(store: Arc<dyn QueueStore>) {
    let ahead = store
        .put_job(NewJob::from_json("q", json!("ahead")).run_at(HOUR))
        .await
        .unwrap();
    assert_eq!(store.job(ahead).await.unwrap().state, JobState::Scheduled);
    assert!(store
        .claim(&Claim::new(["q"]).limit(10))
        .await
        .unwrap()
        .is_empty());

    let past = Utc::now() - TimeDelta::hours(1);
    let behind = store
        .put_job(NewJob::from_json("q", json!("behind")).run_at(past))
        .await
        .unwrap();
    assert_eq!(store.job(behind).await.unwrap().state, JobState::Ready);
    let claimed = store.claim(&Claim::new(["q"]).limit(10)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id(), behind);
    let stats = store.stats("q").await.unwrap();
    assert_eq!((stats.scheduled, stats.running), (1, 1));
}

/// Delay strings ("1h30m") and datetimes schedule jobs that far ahead.
pub async fn delay_strings_schedule_jobs(store: Arc<dyn QueueStore>) {
    let before = Utc::now();
    let id = store
        .put_job(NewJob::from_json("q", json!(1)).delay("1h30m").unwrap())
        .await
        .unwrap();
    let job = store.job(id).await.unwrap();
    assert_eq!(job.state, JobState::Scheduled);
    let offset = job.run_at - before;
    assert!(
        offset > TimeDelta::minutes(89) && offset < TimeDelta::minutes(91),
        "{offset}"
    );

    let at = "2999-01-02T03:04:05Z".parse::<When>().unwrap();
    let id = store
        .put_job(NewJob::from_json("q", json!(2)).run_at(at))
        .await
        .unwrap();
    assert_eq!(
        store.job(id).await.unwrap().run_at.to_rfc3339(),
        "2999-01-02T03:04:05+00:00"
    );
    assert!(NewJob::from_json("q", json!(3)).delay("soon").is_err());
}

/// Every time option takes the same forms (a duration string, a datetime string, a
/// `Duration`); a string that is no time has the job refused when put, and nothing changes.
pub async fn time_options_take_the_same_forms(store: Arc<dyn QueueStore>) {
    let before = Utc::now();
    let id = store
        .put_job(
            NewJob::from_json("q", json!(1))
                .run_at("1h")
                .expected_at("2m"),
        )
        .await
        .unwrap();
    let job = store.job(id).await.unwrap();
    let minutes = |t: chrono::DateTime<Utc>| (t - before).num_seconds() as f64 / 60.0;
    assert!(
        (59.0..61.0).contains(&minutes(job.run_at)),
        "{}",
        job.run_at
    );
    let expected = job.expected_at.expect("an expected_at");
    assert!((1.0..3.0).contains(&minutes(expected)), "{expected}");

    let id = store
        .put_job(NewJob::from_json("q", json!(2)).expected_at("2999-01-02T03:04:05Z"))
        .await
        .unwrap();
    let expected = store.job(id).await.unwrap().expected_at;
    assert_eq!(
        expected.map(|t| t.to_rfc3339()).as_deref(),
        Some("2999-01-02T03:04:05+00:00")
    );

    for bad in [
        NewJob::from_json("q", json!(3)).expected_at("soon"),
        NewJob::from_json("q", json!(3)).run_at("whenever"),
    ] {
        let err = store.put_job(bad).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    }
    assert_eq!(
        store.stats("q").await.unwrap().scheduled + store.stats("q").await.unwrap().ready,
        2
    );
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Email {
    to: String,
    subject: String,
    attachments: Vec<u32>,
    urgent: bool,
}

/// Typed payloads come back as they went in.
pub async fn typed_payloads_round_trip(store: Arc<dyn QueueStore>) {
    let email = Email {
        to: "ada@example.com".into(),
        subject: "Ünïcode ✓ \"quoted\" \\ back".into(),
        attachments: vec![1, 2, 3],
        urgent: true,
    };
    store.put("mail", &email).await.unwrap();
    let claimed = store.claim(&Claim::new(["mail"])).await.unwrap();
    assert_eq!(claimed[0].payload::<Email>().unwrap(), email);
    assert!(matches!(claimed[0].payload::<u32>(), Err(Error::Codec(_))));
}

/// Jobs go only to claimers of their own queue.
pub async fn queues_are_isolated(store: Arc<dyn QueueStore>) {
    let a = store.put("a", &json!(1)).await.unwrap();
    let b = store.put("b", &json!(2)).await.unwrap();
    let got = store.claim(&Claim::new(["a"]).limit(10)).await.unwrap();
    assert_eq!(got.iter().map(|j| j.id()).collect::<Vec<_>>(), vec![a]);
    assert_eq!(store.stats("b").await.unwrap().ready, 1);
    let got = store.claim(&Claim::new(["b"]).limit(10)).await.unwrap();
    assert_eq!(got[0].id(), b);
    assert!(store.claim(&Claim::new(["c"])).await.unwrap().is_empty());
}

/// A payload nested deeper than a worker could decode is rejected at `put`; one nested to the
/// limit goes through and comes back whole.
pub async fn put_rejects_payloads_nested_past_the_limit(store: Arc<dyn QueueStore>) {
    let nest = |depth: usize| (0..depth).fold(json!(1), |inner, _| json!([inner]));
    let deepest = nest(pq_api::MAX_PAYLOAD_NESTING);
    let id = store
        .put_job(NewJob::from_json("q", deepest.clone()))
        .await
        .unwrap();
    let err = store
        .put_job(NewJob::from_json(
            "q",
            json!({"a": nest(pq_api::MAX_PAYLOAD_NESTING)}),
        ))
        .await
        .unwrap_err();
    assert!(refuses_the_payload(&err), "{err:?}");
    let claimed = store.claim(&Claim::new(["q"])).await.unwrap();
    assert_eq!(claimed.len(), 1, "only the job within the limit was put");
    assert_eq!((claimed[0].id(), &*claimed[0].job.payload), (id, &deepest));
}

/// Whether `err` refuses a job for its payload.
fn refuses_the_payload(err: &Error) -> bool {
    matches!(
        err,
        Error::InvalidArgument {
            what: "payload",
            ..
        }
    )
}

/// A payload holding a NUL character, in a string or an object's key (PostgreSQL's `jsonb`
/// cannot store one), is rejected before anything is stored, whatever else the call puts;
/// the escaped text `\u0000` is an ordinary string.
pub async fn put_rejects_payloads_holding_nul_characters(store: Arc<dyn QueueStore>) {
    let deep = (0..100).fold(json!("a\u{0}"), |inner, _| json!([inner]));
    for bad in [json!({"s": "a\u{0}b"}), json!({"a\u{0}": 1}), deep] {
        let jobs = vec![
            NewJob::from_json("q", json!(1)),
            NewJob::from_json("q", bad),
        ];
        let err = store.put_many(jobs).await.unwrap_err();
        assert!(refuses_the_payload(&err), "{err:?}");
    }
    assert_eq!(store.stats("q").await.unwrap().total(), 0);
    let escaped = json!({"s": "a\\u0000b"});
    let id = store.put("q", &escaped).await.unwrap();
    assert_eq!(*store.job(id).await.unwrap().payload, escaped);
}

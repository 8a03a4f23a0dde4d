//! Job history (opt-in records of completed jobs) and payload codecs through the store.

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use pq_api::{Claim, Done, Error, MessagePack, NewJob, Queue, QueueStore, QueueStoreExt};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{HOUR, LONG_LEASE};

async fn run_all(store: &dyn QueueStore, queue: &str) -> Vec<pq_api::ClaimedJob> {
    store
        .claim(&Claim::new([queue]).limit(100).lease(LONG_LEASE))
        .await
        .unwrap()
}

/// A completed job put with `keep_history` leaves a record with its result, found by id and in
/// its queue's history; other jobs leave none.
pub async fn completed_job_is_kept_in_history_when_asked(store: Arc<dyn QueueStore>) {
    let put = store
        .put_many(vec![
            NewJob::from_json("q", json!({"to": "ada"}))
                .serial_key("user-1")
                .priority(3)
                .keep_history(HOUR),
            NewJob::from_json("q", json!({"to": "bob"})),
        ])
        .await
        .unwrap();
    let jobs = run_all(&*store, "q").await;
    assert_eq!(jobs[0].job.keep_history, Some(HOUR));
    assert!(
        matches!(store.finished(put[0]).await, Err(Error::NotFound(_))),
        "not done yet"
    );
    store
        .complete_many(&[
            Done::new(jobs[0].lease).result(json!({"sent": true})),
            Done::new(jobs[1].lease).result(json!({"sent": true})),
        ])
        .await
        .unwrap();
    let record = store.finished(put[0]).await.unwrap();
    assert_eq!(record.id, put[0]);
    assert_eq!(record.queue, "q");
    assert_eq!(*record.payload, json!({"to": "ada"}));
    assert_eq!(record.result, Some(json!({"sent": true})));
    assert_eq!(record.serial_key.as_deref(), Some("user-1"));
    assert_eq!((record.priority, record.attempts), (3, 1));
    assert!(record.finished_at >= record.created_at);
    let kept_for = record.keep_until - record.finished_at;
    assert_eq!(kept_for, TimeDelta::hours(1));
    assert!(
        matches!(store.job(put[0]).await, Err(Error::NotFound(_))),
        "gone from the queue"
    );
    assert!(matches!(
        store.finished(put[1]).await,
        Err(Error::NotFound(_))
    ));
    let history = store.history("q", 10).await.unwrap();
    assert_eq!(history, vec![record]);
    assert!(store.history("other", 10).await.unwrap().is_empty());
}

/// `cleanup_history` removes the records whose retention has passed and keeps the others;
/// history lists the most recently finished first.
pub async fn cleanup_history_removes_expired_records(store: Arc<dyn QueueStore>) {
    let put = store
        .put_many(vec![
            NewJob::from_json("q", json!(1)).keep_history(Duration::from_millis(1)),
            NewJob::from_json("q", json!(2)).keep_history(HOUR),
        ])
        .await
        .unwrap();
    for job in run_all(&*store, "q").await {
        store.complete(&job.lease).await.unwrap();
    }
    let later = store
        .put_job(NewJob::from_json("q", json!(3)).keep_history(HOUR))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let job = run_all(&*store, "q").await.remove(0);
    store.complete(&job.lease).await.unwrap();
    assert_eq!(store.cleanup_history().await.unwrap(), 1);
    assert!(matches!(
        store.finished(put[0]).await,
        Err(Error::NotFound(_))
    ));
    let history: Vec<_> = store
        .history("q", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(history, vec![later, put[1]]);
    assert_eq!(store.history("q", 1).await.unwrap().len(), 1);
    assert_eq!(store.cleanup_history().await.unwrap(), 0);
}

/// `keep_history` is validated: zero or over 100 years is rejected.
pub async fn put_rejects_bad_history_retention(store: Arc<dyn QueueStore>) {
    for bad in [
        Duration::ZERO,
        pq_api::MAX_DURATION + Duration::from_secs(1),
    ] {
        let put = store
            .put_job(NewJob::from_json("q", json!(1)).keep_history(bad))
            .await;
        assert!(matches!(
            put,
            Err(Error::InvalidArgument {
                what: "keep_history",
                ..
            })
        ));
    }
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Thumbnail {
    name: String,
    pixels: Vec<u8>,
}

/// A queue's codec carries its payloads through the store: a MessagePack job comes back as it
/// went in, and reading it with the wrong codec is an error, not a wrong value.
pub async fn encoded_payloads_round_trip_through_the_store(store: Arc<dyn QueueStore>) {
    let thumbs: Queue<MessagePack> = Queue::new("thumbs").unwrap();
    let sent = Thumbnail {
        name: "cat.png".into(),
        pixels: vec![0, 127, 255],
    };
    store
        .put_job(thumbs.job(&sent).unwrap().priority(1))
        .await
        .unwrap();
    let job = run_all(&*store, thumbs.name()).await.remove(0);
    assert_eq!(job.job.payload["codec"], "msgpack");
    assert_eq!(thumbs.decode::<Thumbnail>(&job.job).unwrap(), sent);
    let as_json: Queue = Queue::new("thumbs").unwrap();
    assert!(matches!(
        as_json.decode::<Thumbnail>(&job.job),
        Err(Error::Format { .. })
    ));
}

/// A handler's result ([`TaskContext::set_result`](pq_api::TaskContext::set_result)) is kept
/// in the history record of a job put with `keep_history`, with the job's key.
pub async fn worker_keeps_the_handlers_result_in_history(store: Arc<dyn QueueStore>) {
    use crate::worker::{registry, Work};
    use pq_api::{Task, Worker};
    let registry = registry::<Work, _, _>(|n, cx| async move {
        cx.set_result(json!({"n": n}));
        Ok(())
    });
    let job = Work { n: 7 }
        .to_job()
        .unwrap()
        .serial_key("tenant-1")
        .keep_history(HOUR);
    let id = store.put_job(job).await.unwrap();
    let status = Worker::new(store.clone(), registry)
        .run_until_drained()
        .await
        .unwrap();
    assert_eq!(status.processed, 1);
    let record = store.finished(id).await.unwrap();
    assert_eq!(record.result, Some(json!({"n": 7})));
    assert_eq!(record.serial_key.as_deref(), Some("tenant-1"));
}

/// A handler's result that no store can keep (a NUL character: PostgreSQL's `jsonb` cannot
/// hold one) fails its own attempt, saying why; the jobs completed beside it keep theirs.
pub async fn a_result_that_cannot_be_kept_fails_only_its_own_job(store: Arc<dyn QueueStore>) {
    use crate::worker::{registry, Work};
    use pq_api::{JobState, NewJob, Task, Worker};
    let registry = registry::<Work, _, _>(|n, cx| async move {
        cx.set_result(if n == 3 {
            json!({"s": "a\u{0}b"})
        } else {
            json!(n)
        });
        Ok(())
    });
    let jobs: Vec<NewJob> = (0..8)
        .map(|n| {
            Work { n }
                .to_job()
                .unwrap()
                .keep_history(HOUR)
                .max_attempts(1)
        })
        .collect();
    let ids = store.put_many(jobs).await.unwrap();
    let status = Worker::new(store.clone(), registry)
        .concurrency(8)
        .run_until_drained()
        .await
        .unwrap();
    assert_eq!((status.processed, status.failed), (7, 1), "{status:?}");
    let bad = store.job(ids[3]).await.unwrap();
    assert_eq!(bad.state, JobState::Failed);
    let error = bad.last_error.unwrap_or_default();
    assert!(error.contains("result") && error.contains("NUL"), "{error}");
    for (n, id) in ids.iter().enumerate().filter(|(n, _)| *n != 3) {
        assert_eq!(store.finished(*id).await.unwrap().result, Some(json!(n)));
    }
}

/// Pruning removes history records past their `keep_until`, as `cleanup_history` does, and
/// keeps the rest.
pub async fn prune_removes_history_records_past_their_keep_until(store: Arc<dyn QueueStore>) {
    let ids = store
        .put_many(vec![
            NewJob::from_json("q", json!(1)).keep_history(Duration::from_millis(1)),
            NewJob::from_json("q", json!(2)).keep_history(HOUR),
        ])
        .await
        .unwrap();
    let claimed = store
        .claim(&Claim::new(["q"]).limit(2).lease(LONG_LEASE))
        .await
        .unwrap();
    let done: Vec<Done> = claimed.iter().map(|j| j.lease.into()).collect();
    assert_eq!(store.complete_many(&done).await.unwrap().len(), 2);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(store.prune().await.unwrap().history, 1);
    assert!(matches!(
        store.finished(ids[0]).await,
        Err(Error::NotFound(_))
    ));
    assert_eq!(store.finished(ids[1]).await.unwrap().id, ids[1]);
}

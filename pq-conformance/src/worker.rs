//! The worker on this store: tasks run once, retries, panics, lease loss, stop modes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{TimeDelta, Utc};
use pq_api::{
    Backoff, Cancelled, Claim, ClaimedJob, Completion, Done, Error, Failure, FinishedJob, Job,
    JobHandler, JobId, JobState, Lease, NewJob, QueueStats, QueueStore, QueueStoreExt, Registry,
    RunTask, StopMode, Task, TaskContext, TaskDefaults, TaskError, UnknownTasks, Worker,
    WorkerHandle,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use crate::{HOUR, LONG_LEASE};

/// A task whose behaviour each case scripts through [`Script`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Work {
    pub(crate) n: u32,
}

impl Task for Work {
    const NAME: &'static str = "work";
    const QUEUE: &'static str = "work";
    fn defaults() -> TaskDefaults {
        TaskDefaults::new().max_attempts(3).retry_in(Duration::ZERO)
    }
}

/// Like [`Work`], retried an hour later.
#[derive(Debug, Serialize, Deserialize)]
struct Slow {
    pub(crate) n: u32,
}

impl Task for Slow {
    const NAME: &'static str = "slow";
    const QUEUE: &'static str = "work";
    fn defaults() -> TaskDefaults {
        TaskDefaults::new().max_retries(4).retry_in(HOUR)
    }
}

/// Like [`Work`], with exponential backoff from an hour, without jitter.
#[derive(Debug, Serialize, Deserialize)]
struct Backing {
    pub(crate) n: u32,
}

impl Task for Backing {
    const NAME: &'static str = "backing";
    const QUEUE: &'static str = "work";
    fn defaults() -> TaskDefaults {
        TaskDefaults::new()
            .max_attempts(10)
            .backoff(Backoff::exponential(HOUR, 100 * HOUR).jitter(false))
    }
}

/// Like [`Work`], with a time limit of 200 ms, retried an hour later.
#[derive(Debug, Serialize, Deserialize)]
struct Limited {
    pub(crate) n: u32,
}

impl Task for Limited {
    const NAME: &'static str = "limited";
    const QUEUE: &'static str = "work";
    fn defaults() -> TaskDefaults {
        TaskDefaults::new()
            .timeout("200ms")
            .max_attempts(2)
            .retry_in(HOUR)
    }
}

/// A typed task run through [`RunTask`]; it records its runs in [`GREETED`], keyed by a
/// random tag so that parallel cases do not see each other's runs.
#[derive(Debug, Serialize, Deserialize)]
struct Greet {
    tag: u64,
    name: String,
}

impl Task for Greet {
    const NAME: &'static str = "greet";
    const QUEUE: &'static str = "greetings";
}

static GREETED: Mutex<Vec<(u64, String, JobId)>> = Mutex::new(Vec::new());

impl RunTask for Greet {
    async fn run(self, cx: TaskContext) -> Result<(), TaskError> {
        GREETED.lock().unwrap().push((self.tag, self.name, cx.id()));
        Ok(())
    }
}

/// A handler from a closure: gets the decoded `n` and the context.
pub(crate) struct Script<F>(pub(crate) F);

#[async_trait]
impl<F, Fut> JobHandler for Script<F>
where
    F: Fn(u32, TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), TaskError>> + Send,
{
    async fn handle(&self, cx: TaskContext, args: &Value) -> Result<Completion, TaskError> {
        let n = args["n"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| TaskError::new("cannot decode n").give_up())?;
        (self.0)(n, cx).await?;
        Ok(Completion::Pending)
    }
}

pub(crate) fn registry<T: Task, F, Fut>(f: F) -> Registry
where
    F: Fn(u32, TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), TaskError>> + Send,
{
    Registry::new().register_with::<T>(Script(f)).unwrap()
}

async fn put_work<T: Task + Sync>(store: &dyn QueueStore, tasks: &[T]) -> Vec<JobId> {
    let jobs = tasks.iter().map(|t| t.to_job().unwrap()).collect();
    store.put_many(jobs).await.unwrap()
}

fn works(n: u32) -> Vec<Work> {
    (0..n).map(|n| Work { n }).collect()
}

/// Runs `worker` in the background; returns its handle and the task to join.
pub(crate) fn start(
    worker: Worker,
) -> (
    WorkerHandle,
    tokio::task::JoinHandle<pq_api::Result<pq_api::WorkerStatus>>,
) {
    let handle = worker.handle();
    (handle, tokio::spawn(worker.run()))
}

/// A worker runs every task's job exactly once, completes it, and stops when drained.
pub async fn worker_runs_each_job_once_and_completes_it(store: Arc<dyn QueueStore>) {
    let tag = fastrand::u64(..);
    let names = ["Ada", "Grace", "Edsger"];
    let mut ids = Vec::new();
    for name in names {
        let task = Greet {
            tag,
            name: name.into(),
        };
        ids.push(store.enqueue(&task).await.unwrap());
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let registry = Registry::new()
        .register::<Greet>()
        .unwrap()
        .register_with::<Work>(Script(move |n, cx: TaskContext| {
            let seen = seen2.clone();
            async move {
                seen.lock().unwrap().push((n, (*cx.job().payload).clone()));
                Ok(())
            }
        }))
        .unwrap();
    put_work(&*store, &works(20)).await;

    let status = Worker::new(store.clone(), registry)
        .concurrency(4)
        .run_until_drained()
        .await
        .unwrap();
    assert_eq!(status.processed, 23);
    assert_eq!((status.retried, status.failed, status.lost), (0, 0, 0));
    assert_eq!(status.running, 0);

    let mut greeted: Vec<(String, JobId)> = GREETED
        .lock()
        .unwrap()
        .iter()
        .filter(|g| g.0 == tag)
        .map(|g| (g.1.clone(), g.2))
        .collect();
    greeted.sort();
    let mut expected: Vec<(String, JobId)> = names.iter().map(|n| n.to_string()).zip(ids).collect();
    expected.sort();
    assert_eq!(greeted, expected);
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_unstable_by_key(|(n, _)| *n);
    let envelopes: Vec<(u32, Value)> = (0..20)
        .map(|n| (n, json!({"task": Work::NAME, "args": {"n": n}})))
        .collect();
    assert_eq!(
        seen, envelopes,
        "each ran once, its context showing the whole payload"
    );
    for q in ["work", "greetings"] {
        assert_eq!(
            store.stats(q).await.unwrap().total(),
            0,
            "queue {q} is empty"
        );
    }
}

/// A handler that fails is retried until `max_attempts`, then the job is left failed with
/// its last error; one that fails twice then succeeds is completed.
pub async fn failing_handler_is_retried_until_max_attempts(store: Arc<dyn QueueStore>) {
    let runs: Arc<Mutex<HashMap<u32, Vec<u32>>>> = Arc::default();
    let runs2 = runs.clone();
    let reg = registry::<Work, _, _>(move |n, cx| {
        let runs = runs2.clone();
        async move {
            runs.lock()
                .unwrap()
                .entry(n)
                .or_default()
                .push(cx.attempt());
            match n {
                // Always fails.
                0 => Err(TaskError::new(format!("attempt {} failed", cx.attempt()))),
                // Fails twice, then succeeds.
                _ if cx.attempt() <= 2 => Err(std::io::Error::other("flaky").into()),
                _ => Ok(()),
            }
        }
    });
    let ids = put_work(&*store, &works(2)).await;
    let status = Worker::new(store.clone(), reg)
        .run_until_drained()
        .await
        .unwrap();
    assert_eq!((status.processed, status.retried, status.failed), (1, 4, 1));
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs[&0], vec![1, 2, 3]);
    assert_eq!(runs[&1], vec![1, 2, 3]);
    let failed = store.job(ids[0]).await.unwrap();
    assert_eq!((failed.state, failed.attempts), (JobState::Failed, 3));
    assert_eq!(failed.last_error.as_deref(), Some("attempt 3 failed"));
    assert!(
        store.job(ids[1]).await.is_err(),
        "the flaky job was completed"
    );
}

/// A failed attempt is scheduled by the task's backoff: a fixed `retry_in`, or exponential
/// from the attempt count; a handler's own `retry_in` overrides both.
pub async fn failed_attempt_is_scheduled_by_the_backoff(store: Arc<dyn QueueStore>) {
    let reg = Registry::new()
        .register_with::<Slow>(Script(|n, _cx| async move {
            match n {
                0 => Err(TaskError::new("fixed")),
                _ => Err(TaskError::new("own delay").retry_in(2 * HOUR)),
            }
        }))
        .unwrap()
        .register_with::<Backing>(Script(|_n, _cx| async { Err(TaskError::new("expo")) }))
        .unwrap();
    // Two attempts of `expo` have already failed: its third waits first * 2^2.
    let expo = store.enqueue(&Backing { n: 0 }).await.unwrap();
    for _ in 0..2 {
        let got = store
            .claim(&Claim::new(["work"]).lease(LONG_LEASE))
            .await
            .unwrap();
        store
            .fail(&got[0].lease, Failure::new("earlier"))
            .await
            .unwrap();
    }
    let fixed = store.enqueue(&Slow { n: 0 }).await.unwrap();
    let own = store.enqueue(&Slow { n: 1 }).await.unwrap();

    let before = Utc::now();
    let status = Worker::new(store.clone(), reg)
        .run_until_drained()
        .await
        .unwrap();
    let after = Utc::now();
    assert_eq!((status.retried, status.failed), (3, 0));
    let due = |id: JobId, delay: Duration| {
        let store = store.clone();
        async move {
            let job = store.job(id).await.unwrap();
            assert_eq!(
                job.state,
                JobState::Scheduled,
                "job {id} waits for its retry"
            );
            let d = TimeDelta::from_std(delay).unwrap();
            let slack = TimeDelta::seconds(5);
            assert!(
                job.run_at >= before + d - slack && job.run_at <= after + d + slack,
                "job {id} retries at {} ({delay:?} after {before})",
                job.run_at
            );
            job
        }
    };
    assert_eq!(due(fixed, HOUR).await.attempts, 1);
    assert_eq!(due(own, 2 * HOUR).await.attempts, 1);
    let job = due(expo, 4 * HOUR).await;
    assert_eq!(job.attempts, 3);
    assert_eq!(job.last_error.as_deref(), Some("expo"));
}

/// A panicking handler is a failed attempt recording the panic message; the worker goes on.
pub async fn panicking_handler_is_a_failed_attempt(store: Arc<dyn QueueStore>) {
    let reg = registry::<Work, _, _>(|n, cx| async move {
        if n == 0 && cx.attempt() == 1 {
            panic!("boom on {n}");
        }
        Ok(())
    });
    let ids = put_work(&*store, &works(3)).await;
    let status = Worker::new(store.clone(), reg)
        .concurrency(1)
        .run_until_drained()
        .await
        .unwrap();
    assert_eq!((status.processed, status.retried), (3, 1));
    assert!(store.job(ids[0]).await.is_err(), "retried and completed");

    let reg = registry::<Work, _, _>(|_n, _cx| async move { panic!("always") });
    let id = store
        .put_job(Work { n: 7 }.to_job().unwrap().max_attempts(1))
        .await
        .unwrap();
    let status = Worker::new(store.clone(), reg)
        .run_until_drained()
        .await
        .unwrap();
    assert_eq!(status.failed, 1);
    let job = store.job(id).await.unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.last_error.as_deref(), Some("handler panicked: always"));
}

/// A payload that does not decode, or names a task the worker does not know, fails the job
/// at once with a clear error; nothing is lost and the worker goes on.
pub async fn undecodable_or_unknown_jobs_fail_with_a_clear_error(store: Arc<dyn QueueStore>) {
    let reg = registry::<Work, _, _>(|_n, _cx| async { Ok(()) });
    let bad = [
        json!({"task": "work", "args": {"n": "not a number"}}),
        json!({"task": "unheard_of", "args": {}}),
        json!(42),
        json!({"args": {"n": 1}}),
    ];
    let mut ids = Vec::new();
    for payload in &bad {
        ids.push(
            store
                .put_job(NewJob::from_json("work", payload.clone()))
                .await
                .unwrap(),
        );
    }
    put_work(&*store, &works(2)).await;
    let status = Worker::new(store.clone(), reg)
        .unknown_tasks(UnknownTasks::Fail)
        .run_until_drained()
        .await
        .unwrap();
    assert_eq!((status.processed, status.failed, status.retried), (2, 4, 0));
    let expect = [
        "cannot decode",
        "no handler for task \"unheard_of\"",
        "not a task",
        "not a task",
    ];
    for (id, needle) in ids.iter().zip(expect) {
        let job = store.job(*id).await.unwrap();
        assert_eq!((job.state, job.attempts), (JobState::Failed, 1));
        let error = job.last_error.unwrap_or_default();
        assert!(error.contains(needle), "{error:?} mentions {needle:?}");
    }
}

/// A job whose task this worker does not know (a newer version's, during a rolling deploy) is
/// handed back for another worker by default, its attempt not counted; it fails only when the
/// worker is told to ([`UnknownTasks::Fail`]).
pub async fn unknown_task_is_handed_back_for_another_worker(store: Arc<dyn QueueStore>) {
    let reg = registry::<Work, _, _>(|_n, _cx| async { Ok(()) });
    let newer = NewJob::from_json("work", json!({"task": "newer", "args": {}})).max_attempts(1);
    let id = store.put_job(newer).await.unwrap();
    put_work(&*store, &works(1)).await;
    let status = Worker::new(store.clone(), reg.clone())
        .run_until_drained()
        .await
        .unwrap();
    assert_eq!(
        (status.processed, status.failed, status.released),
        (1, 0, 1)
    );
    let job = store.job(id).await.unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Scheduled, 0));
    assert!(
        job.run_at > Utc::now() + TimeDelta::seconds(5),
        "handed back for 10 s"
    );
    assert_eq!(job.last_error, None);
    assert!(
        Worker::new(store.clone(), reg)
            .unknown_tasks(UnknownTasks::HandBack(Duration::ZERO))
            .run_until_drained()
            .await
            .is_err(),
        "handing back for no time at all would spin"
    );
}

/// A handler that snoozes its job ("not yet") puts it back to run after the delay: the
/// attempt is not counted and no error is recorded, however often it snoozes.
pub async fn snoozed_job_runs_later_without_costing_an_attempt(store: Arc<dyn QueueStore>) {
    let later = registry::<Work, _, _>(|_n, _cx| async { Err(TaskError::snooze("1h")) });
    let id = put_work(&*store, &works(1)).await[0];
    let status = Worker::new(store.clone(), later)
        .run_until_drained()
        .await
        .unwrap();
    assert_eq!(
        (
            status.snoozed,
            status.processed,
            status.retried,
            status.failed
        ),
        (1, 0, 0, 0)
    );
    let job = store.job(id).await.unwrap();
    assert_eq!(
        (job.state, job.attempts, job.last_error),
        (JobState::Scheduled, 0, None)
    );
    assert!(
        job.run_at > Utc::now() + TimeDelta::minutes(50),
        "snoozed for an hour"
    );
    store.purge("work").await.unwrap();

    // Snoozed twice with one attempt allowed, then done: neither snooze used the attempt.
    let runs = Arc::new(Mutex::new(0u32));
    let counted = runs.clone();
    let twice = registry::<Work, _, _>(move |_n, _cx| {
        let runs = counted.clone();
        async move {
            let mut runs = runs.lock().unwrap();
            *runs += 1;
            if *runs <= 2 {
                return Err(TaskError::snooze(Duration::ZERO));
            }
            Ok(())
        }
    });
    let id = store
        .put_job(Work { n: 0 }.to_job().unwrap().max_attempts(1))
        .await
        .unwrap();
    let status = Worker::new(store.clone(), twice)
        .run_until_drained()
        .await
        .unwrap();
    assert_eq!((status.snoozed, status.processed, status.failed), (2, 1, 0));
    assert_eq!(*runs.lock().unwrap(), 3);
    assert!(matches!(store.job(id).await, Err(Error::NotFound(_))));
}

/// A handler that runs past its task's time limit is told ([`Cancelled::Timeout`]) and its
/// attempt fails, "timed out after 200ms", retried as any failure; one that finishes within
/// its limit is not held to it.
pub async fn a_handler_past_its_time_limit_is_told_and_its_attempt_fails(
    store: Arc<dyn QueueStore>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reg = registry::<Limited, _, _>(move |n, cx| {
        let tx = tx.clone();
        async move {
            if n == 0 {
                return Ok(()); // well within the limit
            }
            tx.send(cx.cancelled().await).unwrap();
            Err(TaskError::new("stopped"))
        }
    });
    let quick = store
        .put_job(Limited { n: 0 }.to_job().unwrap())
        .await
        .unwrap();
    let slow = store
        .put_job(Limited { n: 1 }.to_job().unwrap())
        .await
        .unwrap();
    let status = Worker::new(store.clone(), reg)
        .run_until_drained()
        .await
        .unwrap();
    assert_eq!(rx.recv().await, Some(Cancelled::Timeout));
    assert_eq!((status.processed, status.retried, status.failed), (1, 1, 0));
    assert!(store.job(quick).await.is_err(), "completed");
    let job = store.job(slow).await.unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Scheduled, 1));
    assert_eq!(job.last_error.as_deref(), Some("timed out after 200ms"));
}

/// A job's own time limit overrides its task's; a handler that ignores it is dropped once the
/// worker's grace has passed, and its attempt fails.
pub async fn a_handler_ignoring_its_time_limit_is_dropped_after_the_grace(
    store: Arc<dyn QueueStore>,
) {
    let reg = registry::<Slow, _, _>(|_n, _cx| std::future::pending());
    let job = Slow { n: 0 }
        .to_job()
        .unwrap()
        .timeout("100ms")
        .max_attempts(1);
    let id = store.put_job(job).await.unwrap();
    let status = Worker::new(store.clone(), reg)
        .abort_grace(Duration::from_millis(100))
        .run_until_drained()
        .await
        .unwrap();
    assert_eq!((status.processed, status.failed, status.lost), (0, 1, 0));
    let job = store.job(id).await.unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.last_error.as_deref(), Some("timed out after 100ms"));
}

/// A job's own time limit overrides its task's, longer or shorter: a job given more time
/// than its task's default finishes in it; one given less is held to that.
pub async fn a_jobs_own_time_limit_overrides_its_tasks_either_way(store: Arc<dyn QueueStore>) {
    let reg = registry::<Limited, _, _>(|n, _cx| async move {
        if n == 0 {
            // Past the task's 200 ms, within the job's own second.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return Ok(());
        }
        std::future::pending().await
    });
    let longer = Limited { n: 0 }.to_job().unwrap().timeout("3s");
    let shorter = Limited { n: 1 }.to_job().unwrap().timeout("100ms");
    let ids = store.put_many(vec![longer, shorter]).await.unwrap();
    let status = Worker::new(store.clone(), reg)
        .concurrency(2)
        .abort_grace(Duration::from_millis(100))
        .run_until_drained()
        .await
        .unwrap();
    assert_eq!((status.processed, status.retried), (1, 1));
    assert!(
        store.job(ids[0]).await.is_err(),
        "completed within its own limit"
    );
    let job = store.job(ids[1]).await.unwrap();
    assert_eq!(job.last_error.as_deref(), Some("timed out after 100ms"));
}

/// A handler told it ran past its time limit that then succeeds within the worker's grace has
/// done its work: its job is completed, not failed.
pub async fn a_handler_that_succeeds_in_the_grace_after_its_time_limit_completes_its_job(
    store: Arc<dyn QueueStore>,
) {
    let reg = registry::<Limited, _, _>(|_n, cx| async move {
        assert_eq!(cx.cancelled().await, Cancelled::Timeout);
        Ok(())
    });
    let id = store
        .put_job(Limited { n: 0 }.to_job().unwrap())
        .await
        .unwrap();
    let status = Worker::new(store.clone(), reg)
        .run_until_drained()
        .await
        .unwrap();
    assert_eq!((status.processed, status.retried, status.failed), (1, 0, 0));
    assert!(matches!(store.job(id).await, Err(Error::NotFound(_))));
}

/// A worker that stops reports what it finished since its last report, however long its
/// report period: nothing it did is missing from the store's throughput record.
pub async fn a_stopping_worker_reports_what_it_finished(store: Arc<dyn QueueStore>) {
    let reg = registry::<Work, _, _>(|n, _cx| async move {
        if n == 3 {
            return Err(TaskError::new("no").give_up());
        }
        Ok(())
    });
    put_work(&*store, &works(4)).await;
    let status = Worker::new(store.clone(), reg)
        .report_every(HOUR)
        .run_until_drained()
        .await
        .unwrap();
    assert_eq!((status.processed, status.failed), (3, 1));
    let records = store.throughput(Duration::from_secs(120)).await.unwrap();
    let sum = records
        .iter()
        .filter(|r| r.queue == Work::QUEUE)
        .fold((0, 0), |(c, f), r| (c + r.completed, f + r.failed));
    assert_eq!(sum, (3, 1), "{records:?}");
}

/// A handler asking to be retried later than any store can record is retried as late as one
/// can, its error recorded: never left to rerun at every lease expiry.
pub async fn retry_delay_past_the_limit_is_recorded(store: Arc<dyn QueueStore>) {
    let reg = registry::<Work, _, _>(|_n, _cx| async {
        Err(TaskError::new("not this century").retry_in(Duration::from_secs(u64::MAX)))
    });
    let id = put_work(&*store, &works(1)).await[0];
    let status = Worker::new(store.clone(), reg)
        .run_until_drained()
        .await
        .unwrap();
    assert_eq!((status.retried, status.failed, status.lost), (1, 0, 0));
    let job = store.job(id).await.unwrap();
    assert_eq!(job.state, JobState::Scheduled);
    assert_eq!(job.last_error.as_deref(), Some("not this century"));
    assert!(job.run_at > Utc::now() + TimeDelta::days(99 * 365));
}

/// A handler that fails because the store failed under it (a retryable store error, as `?`
/// on a lost connection gives) costs the job no attempt: it is handed back to run again.
pub async fn store_failure_under_a_handler_costs_no_attempt(store: Arc<dyn QueueStore>) {
    let reg = registry::<Work, _, _>(|_n, _cx| async {
        let lost: Result<(), Error> = Err(Error::Unavailable("connection reset".into()));
        lost?;
        Ok(())
    });
    let job = Work { n: 0 }.to_job().unwrap().max_attempts(1);
    let id = store.put_job(job).await.unwrap();
    let status = Worker::new(store.clone(), reg)
        .run_until_drained()
        .await
        .unwrap();
    assert_eq!((status.failed, status.retried, status.released), (0, 0, 1));
    let job = store.job(id).await.unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Scheduled, 0));
    assert_eq!(job.last_error, None);
}

/// Outcomes the store fails to take at first (a blip: a retryable error) are recorded by
/// trying again while the lease lasts, not dropped to wait out the lease: a failed attempt,
/// then the completion of its retry.
pub async fn outcomes_are_recorded_through_store_blips(store: Arc<dyn QueueStore>) {
    let flaky = Arc::new(Blips::new(store.clone(), 2, 0));
    let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let reg = registry::<Work, _, _>(move |_n, _cx| {
        let first = runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0;
        async move {
            if first {
                Err(TaskError::new("first try fails"))
            } else {
                Ok(())
            }
        }
    });
    let id = put_work(&*store, &works(1)).await[0];
    let status = Worker::new(flaky.clone(), reg)
        .lease(HOUR)
        .run_until_drained()
        .await
        .unwrap();
    assert_eq!((status.retried, status.processed, status.lost), (1, 1, 0));
    assert!(matches!(store.job(id).await, Err(Error::NotFound(_))));
    assert_eq!(
        flaky.failed_calls(),
        4,
        "two blips each for fail and complete"
    );
}

/// A store call that never answers is given up on within half the lease, as unavailable,
/// and tried again: a worker never hangs on its store.
pub async fn a_store_call_that_never_answers_is_given_up_and_tried_again(
    store: Arc<dyn QueueStore>,
) {
    let hanging = Arc::new(Blips::new(store.clone(), 0, 1));
    let reg = registry::<Work, _, _>(|_n, _cx| async { Ok(()) });
    let id = put_work(&*store, &works(1)).await[0];
    let status = Worker::new(hanging, reg)
        .lease(Duration::from_secs(4))
        .run_until_drained()
        .await
        .unwrap();
    assert_eq!((status.processed, status.lost), (1, 0));
    assert!(matches!(store.job(id).await, Err(Error::NotFound(_))));
}

/// A store that fails the first `n` calls of `fail` and of `complete_many` as unavailable,
/// after letting the first `hang` calls of `complete_many` hang for good.
#[derive(Debug)]
pub(crate) struct Blips {
    inner: Arc<dyn QueueStore>,
    put: std::sync::atomic::AtomicU32,
    fail: std::sync::atomic::AtomicU32,
    complete: std::sync::atomic::AtomicU32,
    refused: std::sync::atomic::AtomicU32,
    /// How many calls of `complete_many` never answer.
    hang: std::sync::atomic::AtomicU32,
    /// How many calls of `extend` never answer.
    hang_extend: std::sync::atomic::AtomicU32,
}

impl Blips {
    pub(crate) fn new(inner: Arc<dyn QueueStore>, n: u32, hang: u32) -> Self {
        use std::sync::atomic::AtomicU32;
        Blips {
            inner,
            put: AtomicU32::new(0),
            fail: AtomicU32::new(n),
            complete: AtomicU32::new(n),
            refused: AtomicU32::new(0),
            hang: AtomicU32::new(hang),
            hang_extend: AtomicU32::new(0),
        }
    }

    /// Fails the first `n` calls of `put_many` too.
    pub(crate) fn failing_puts(self, n: u32) -> Self {
        self.put.store(n, std::sync::atomic::Ordering::SeqCst);
        self
    }

    /// Lets the first `n` calls of `extend` hang for good too.
    fn hanging_extends(self, n: u32) -> Self {
        self.hang_extend
            .store(n, std::sync::atomic::Ordering::SeqCst);
        self
    }

    fn blip(&self, left: &std::sync::atomic::AtomicU32) -> Result<(), Error> {
        use std::sync::atomic::Ordering::SeqCst;
        if left
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            self.refused.fetch_add(1, SeqCst);
            return Err(Error::Unavailable("a blip".into()));
        }
        Ok(())
    }

    fn failed_calls(&self) -> u32 {
        self.refused.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait]
impl QueueStore for Blips {
    async fn put_many(&self, jobs: Vec<NewJob>) -> pq_api::Result<Vec<JobId>> {
        self.blip(&self.put)?;
        self.inner.put_many(jobs).await
    }
    async fn claim(&self, claim: &Claim) -> pq_api::Result<Vec<ClaimedJob>> {
        self.inner.claim(claim).await
    }
    async fn complete_many(&self, done: &[Done]) -> pq_api::Result<Vec<JobId>> {
        use std::sync::atomic::Ordering::SeqCst;
        if self
            .hang
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            std::future::pending::<()>().await;
        }
        self.blip(&self.complete)?;
        self.inner.complete_many(done).await
    }
    async fn fail(&self, lease: &Lease, failure: Failure) -> pq_api::Result<JobState> {
        self.blip(&self.fail)?;
        self.inner.fail(lease, failure).await
    }
    async fn extend(
        &self,
        lease: &Lease,
        lease_for: Duration,
    ) -> pq_api::Result<chrono::DateTime<Utc>> {
        use std::sync::atomic::Ordering::SeqCst;
        if self
            .hang_extend
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            std::future::pending::<()>().await;
        }
        self.inner.extend(lease, lease_for).await
    }
    async fn release(&self, lease: &Lease) -> pq_api::Result<()> {
        self.inner.release(lease).await
    }
    async fn snooze(&self, lease: &Lease, delay: Duration) -> pq_api::Result<()> {
        self.inner.snooze(lease, delay).await
    }
    async fn cancel(&self, id: JobId) -> pq_api::Result<()> {
        self.inner.cancel(id).await
    }
    async fn cancel_requested(&self, id: JobId) {
        self.inner.cancel_requested(id).await
    }
    async fn set_progress(&self, lease: &Lease, progress: serde_json::Value) -> pq_api::Result<()> {
        self.inner.set_progress(lease, progress).await
    }
    async fn configure_queue(
        &self,
        queue: &str,
        setting: pq_api::QueueSetting,
    ) -> pq_api::Result<()> {
        self.inner.configure_queue(queue, setting).await
    }
    async fn queues(&self) -> pq_api::Result<Vec<pq_api::QueueInfo>> {
        self.inner.queues().await
    }
    async fn prune(&self) -> pq_api::Result<pq_api::Pruned> {
        self.inner.prune().await
    }
    async fn retry(&self, id: JobId) -> pq_api::Result<()> {
        self.inner.retry(id).await
    }
    async fn record_throughput(&self, tallies: &[pq_api::Tally]) -> pq_api::Result<()> {
        self.inner.record_throughput(tallies).await
    }
    async fn throughput(
        &self,
        since: std::time::Duration,
    ) -> pq_api::Result<Vec<pq_api::Throughput>> {
        self.inner.throughput(since).await
    }
    async fn list_jobs(&self, filter: &pq_api::JobFilter) -> pq_api::Result<Vec<Job>> {
        self.inner.list_jobs(filter).await
    }
    async fn job(&self, id: JobId) -> pq_api::Result<Job> {
        self.inner.job(id).await
    }
    async fn stats(&self, queue: &str) -> pq_api::Result<QueueStats> {
        self.inner.stats(queue).await
    }
    async fn purge(&self, queue: &str) -> pq_api::Result<u64> {
        self.inner.purge(queue).await
    }
    async fn key_state(&self, queue: &str, key: &str) -> pq_api::Result<Option<Value>> {
        self.inner.key_state(queue, key).await
    }
    async fn finished(&self, id: JobId) -> pq_api::Result<FinishedJob> {
        self.inner.finished(id).await
    }
    async fn history(&self, queue: &str, limit: u32) -> pq_api::Result<Vec<FinishedJob>> {
        self.inner.history(queue, limit).await
    }
    async fn cleanup_history(&self) -> pq_api::Result<u64> {
        self.inner.cleanup_history().await
    }
    async fn wait(&self, queues: &[String], timeout: Duration) -> pq_api::Result<bool> {
        self.inner.wait(queues, timeout).await
    }
}

/// A heartbeat that never answers (a connection gone quiet) is given up on within a
/// heartbeat and tried again: the lease is kept through it, and at no moment can another
/// claimer take the running job.
pub async fn a_heartbeat_that_never_answers_does_not_cost_the_lease(store: Arc<dyn QueueStore>) {
    let hanging = Arc::new(Blips::new(store.clone(), 0, 0).hanging_extends(1));
    let gate = Arc::new(Semaphore::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let gate2 = gate.clone();
    let reg = registry::<Work, _, _>(move |n, _cx| {
        let (gate, tx) = (gate2.clone(), tx.clone());
        async move {
            tx.send(n).unwrap();
            gate.acquire().await.unwrap().forget();
            Ok(())
        }
    });
    let id = put_work(&*store, &works(1)).await[0];
    let lease = Duration::from_secs(2);
    let (handle, run) = start(
        Worker::new(hanging, reg)
            .lease(lease)
            .heartbeat(Duration::from_millis(200)),
    );
    rx.recv().await.unwrap();
    // Past the first lease and well into the second, another claimer keeps trying.
    let until = tokio::time::Instant::now() + lease + lease / 2;
    while tokio::time::Instant::now() < until {
        let got = store
            .claim(&Claim::new(["work"]).lease(LONG_LEASE))
            .await
            .unwrap();
        assert!(
            got.is_empty(),
            "the running job was claimed again: its lease ran out"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gate.add_permits(1);
    handle.stop(StopMode::Finish);
    let status = run.await.unwrap().unwrap();
    assert_eq!((status.processed, status.lost), (1, 0));
    assert!(matches!(store.job(id).await, Err(Error::NotFound(_))));
}

/// When a running job's lease is lost, its handler is told through the context and its
/// outcome is not recorded.
pub async fn lost_lease_cancels_the_handler_and_drops_its_outcome(store: Arc<dyn QueueStore>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reg = registry::<Work, _, _>(move |_n, cx| {
        let tx = tx.clone();
        async move {
            tx.send(None).unwrap();
            let why = cx.cancelled().await;
            tx.send(Some(why)).unwrap();
            // Succeeding now must not complete anything.
            Ok(())
        }
    });
    let ids = put_work(&*store, &works(1)).await;
    let (handle, run) = start(
        Worker::new(store.clone(), reg)
            .lease(Duration::from_secs(10))
            .heartbeat(Duration::from_millis(50)),
    );
    assert_eq!(rx.recv().await.unwrap(), None, "the handler started");
    // The job is taken away while it runs.
    assert_eq!(store.purge("work").await.unwrap(), 1);
    assert_eq!(rx.recv().await.unwrap(), Some(Cancelled::LeaseLost));
    handle.stop(StopMode::Finish);
    let status = run.await.unwrap().unwrap();
    assert_eq!((status.processed, status.lost), (0, 1));
    assert!(store.job(ids[0]).await.is_err());
}

/// Cancelling a running job tells its handler, through `cancelled()`, that it was cancelled,
/// within a second (long before the next heartbeat, and after the first one has passed); whatever it returns then, the job stays
/// cancelled, and the worker counts it.
pub async fn cancelling_a_running_job_tells_its_handler_within_a_second(
    store: Arc<dyn QueueStore>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reg = registry::<Work, _, _>(move |_n, cx| {
        let tx = tx.clone();
        async move {
            tx.send(None).unwrap();
            let why = cx.cancelled().await;
            tx.send(Some((why, Instant::now()))).unwrap();
            // Succeeding now must not complete it.
            Ok(())
        }
    });
    let ids = put_work(&*store, &works(1)).await;
    let (handle, run) = start(
        Worker::new(store.clone(), reg)
            .lease(Duration::from_secs(60))
            .heartbeat(Duration::from_secs(20)),
    );
    assert_eq!(rx.recv().await.unwrap(), None, "the handler started");
    // Past the first heartbeat, which comes early: only the hint can tell it now.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let cancelled_at = Instant::now();
    store.cancel(ids[0]).await.unwrap();
    let (why, told_at) = rx.recv().await.unwrap().unwrap();
    assert_eq!(why, Cancelled::Requested);
    let took = told_at - cancelled_at;
    assert!(took < Duration::from_secs(1), "told after {took:?}");
    handle.stop(StopMode::Finish);
    let status = run.await.unwrap().unwrap();
    assert_eq!((status.processed, status.cancelled, status.lost), (0, 1, 0));
    assert_eq!(store.job(ids[0]).await.unwrap().state, JobState::Cancelled);
}

/// Drain stops once no job is ready: scheduled jobs stay for later.
pub async fn drain_stops_when_no_job_is_ready(store: Arc<dyn QueueStore>) {
    let reg = registry::<Work, _, _>(|_n, _cx| async { Ok(()) });
    put_work(&*store, &works(5)).await;
    let later = store
        .put_job(Work { n: 9 }.to_job().unwrap().run_at(HOUR))
        .await
        .unwrap();
    let status = Worker::new(store.clone(), reg)
        .concurrency(2)
        .run_until_drained()
        .await
        .unwrap();
    assert_eq!(status.processed, 5);
    assert_eq!(status.state, pq_api::WorkerState::Stopped);
    assert_eq!(store.job(later).await.unwrap().state, JobState::Scheduled);
}

/// Finish stops claiming and lets running jobs end, recording their outcomes; jobs not
/// yet claimed stay ready.
pub async fn finish_lets_running_jobs_end_and_claims_no_more(store: Arc<dyn QueueStore>) {
    let gate = Arc::new(Semaphore::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let gate2 = gate.clone();
    let reg = registry::<Work, _, _>(move |n, _cx| {
        let (gate, tx) = (gate2.clone(), tx.clone());
        async move {
            tx.send(n).unwrap();
            gate.acquire().await.unwrap().forget();
            Ok(())
        }
    });
    put_work(&*store, &works(5)).await;
    let (handle, run) = start(Worker::new(store.clone(), reg).concurrency(2));
    rx.recv().await.unwrap();
    rx.recv().await.unwrap();
    assert_eq!(handle.status().running, 2);
    handle.stop(StopMode::Finish);
    assert_eq!(
        handle.status().state,
        pq_api::WorkerState::Stopping(StopMode::Finish)
    );
    gate.add_permits(2);
    let status = run.await.unwrap().unwrap();
    assert_eq!(status.processed, 2);
    assert!(rx.try_recv().is_err(), "nothing else was started");
    let stats = store.stats("work").await.unwrap();
    assert_eq!((stats.ready, stats.running), (3, 0));
}

/// Abort cancels running handlers at once and hands their jobs back: claimable at once,
/// the attempt not counted.
pub async fn abort_hands_running_jobs_back_at_once(store: Arc<dyn QueueStore>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reg = registry::<Work, _, _>(move |n, _cx| {
        let tx = tx.clone();
        async move {
            tx.send(n).unwrap();
            // Stuck, and deaf to cancellation.
            std::future::pending::<()>().await;
            Ok(())
        }
    });
    let ids = put_work(&*store, &works(2)).await;
    let (handle, run) = start(Worker::new(store.clone(), reg).lease(LONG_LEASE));
    rx.recv().await.unwrap();
    rx.recv().await.unwrap();
    handle.stop(StopMode::Abort);
    let status = run.await.unwrap().unwrap();
    assert_eq!(
        (status.released, status.processed, status.running),
        (2, 0, 0)
    );
    for id in ids {
        let job = store.job(id).await.unwrap();
        assert_eq!((job.state, job.attempts), (JobState::Ready, 0));
    }
    let again = store.claim(&Claim::new(["work"]).limit(5)).await.unwrap();
    assert_eq!(again.len(), 2);
}

/// Abort tells each running handler (`Cancelled::Abort`) and gives it the grace to return:
/// a handler that succeeds has its job completed; one that returns an error, or does not
/// return in time, has its job handed back, the attempt not counted.
pub async fn abort_tells_handlers_and_keeps_what_they_finish_in_the_grace(
    store: Arc<dyn QueueStore>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reg = registry::<Work, _, _>(move |n, cx| {
        let tx = tx.clone();
        async move {
            tx.send((n, None)).unwrap();
            if n == 2 {
                // Deaf to cancellation: dropped once the grace is over.
                std::future::pending::<()>().await;
            }
            let why = cx.cancelled().await;
            tx.send((n, Some(why))).unwrap();
            if n == 0 {
                Ok(())
            } else {
                Err(TaskError::new("stopped half way"))
            }
        }
    });
    let ids = put_work(&*store, &works(3)).await;
    let (handle, run) = start(
        Worker::new(store.clone(), reg)
            .concurrency(3)
            .lease(LONG_LEASE)
            .abort_grace(Duration::from_millis(300)),
    );
    for _ in 0..3 {
        assert_eq!(rx.recv().await.unwrap().1, None, "a handler started");
    }
    handle.stop(StopMode::Abort);
    let status = run.await.unwrap().unwrap();
    let mut told: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    told.sort_by_key(|t| t.0);
    assert_eq!(
        told,
        vec![(0, Some(Cancelled::Abort)), (1, Some(Cancelled::Abort))],
        "the handlers that listen hear why"
    );
    assert_eq!(
        (
            status.processed,
            status.released,
            status.failed,
            status.retried
        ),
        (1, 2, 0, 0)
    );
    assert!(matches!(store.job(ids[0]).await, Err(Error::NotFound(_))));
    for id in &ids[1..] {
        let job = store.job(*id).await.unwrap();
        assert_eq!((job.state, job.attempts), (JobState::Ready, 0));
        assert_eq!(job.last_error, None);
    }
}

/// Two workers on one queue run every job exactly once, and leave nothing behind.
pub async fn two_workers_share_a_queue_running_each_job_once(store: Arc<dyn QueueStore>) {
    let runs: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
    let make = |runs: Arc<Mutex<HashMap<u32, u32>>>| {
        registry::<Work, _, _>(move |n, _cx| {
            let runs = runs.clone();
            async move {
                *runs.lock().unwrap().entry(n).or_default() += 1;
                tokio::task::yield_now().await;
                Ok(())
            }
        })
    };
    put_work(&*store, &works(300)).await;
    let a = Worker::new(store.clone(), make(runs.clone()))
        .concurrency(4)
        .batch_size(3);
    let b = Worker::new(store.clone(), make(runs.clone())).concurrency(5);
    let (a, b) = tokio::join!(a.run_until_drained(), b.run_until_drained());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.processed + b.processed, 300);
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 300);
    assert!(runs.values().all(|&c| c == 1), "every job ran once");
    assert_eq!(store.stats("work").await.unwrap().total(), 0);
}

/// A worker that dies mid-job (dropped without stopping) loses nothing: its job runs again
/// once the lease expires.
pub async fn job_of_a_dead_worker_runs_again_after_its_lease(store: Arc<dyn QueueStore>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reg = |tx: mpsc::UnboundedSender<u32>| {
        registry::<Work, _, _>(move |_n, cx| {
            let tx = tx.clone();
            async move {
                tx.send(cx.attempt()).unwrap();
                if cx.attempt() == 1 {
                    std::future::pending::<()>().await;
                }
                Ok(())
            }
        })
    };
    let ids = put_work(&*store, &works(1)).await;
    let lease = Duration::from_millis(600);
    let (_, dying) = start(Worker::new(store.clone(), reg(tx.clone())).lease(lease));
    assert_eq!(rx.recv().await.unwrap(), 1);
    dying.abort(); // no stop, no release: as if the process was killed
    let _ = dying.await;
    assert_eq!(store.job(ids[0]).await.unwrap().state, JobState::Running);

    let (handle, run) = start(Worker::new(store.clone(), reg(tx)).lease(lease));
    assert_eq!(
        rx.recv().await.unwrap(),
        2,
        "run again after the lease expired"
    );
    while store.job(ids[0]).await.is_ok() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.stop(StopMode::Finish);
    assert_eq!(run.await.unwrap().unwrap().processed, 1);
}

/// A worker completes a job as soon as its handler has succeeded, not once more work arrives
/// or its idle wait runs out.
pub async fn finished_job_is_completed_while_the_worker_idles(store: Arc<dyn QueueStore>) {
    let reg = registry::<Work, _, _>(|_n, _cx| async { Ok(()) });
    let worker = Worker::new(store.clone(), reg).idle_wait(HOUR);
    let (handle, run) = start(worker);
    let ids = put_work(&*store, &works(1)).await;
    let mut gone = false;
    for _ in 0..500 {
        if store.job(ids[0]).await.is_err() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.stop(StopMode::Finish);
    assert!(gone, "the job was still there 5 s after it was put");
    assert_eq!(run.await.unwrap().unwrap().processed, 1);
}

/// A worker with nothing to run, a zero concurrency or a heartbeat not below its lease is
/// rejected before it claims anything.
pub async fn invalid_worker_configuration_is_rejected(store: Arc<dyn QueueStore>) {
    let reg = || registry::<Work, _, _>(|_n, _cx| async { Ok(()) });
    let invalid = |r: pq_api::Result<pq_api::WorkerStatus>| {
        matches!(r, Err(pq_api::Error::InvalidArgument { .. }))
    };
    assert!(invalid(
        Worker::new(store.clone(), Registry::new()).run().await
    ));
    assert!(invalid(
        Worker::new(store.clone(), reg()).concurrency(0).run().await
    ));
    assert!(invalid(
        Worker::new(store.clone(), reg()).batch_size(0).run().await
    ));
    assert!(invalid(
        Worker::new(store.clone(), reg())
            .lease(Duration::from_secs(1))
            .heartbeat(Duration::from_secs(1))
            .run()
            .await
    ));
}

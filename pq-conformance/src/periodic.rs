//! Periodic jobs: schedulers on one store put each tick once ([`pq_api::periodic`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use pq_api::periodic::{Periodic, Scheduler, TICK_KEY_PREFIX};
use pq_api::{Claim, NewJob, QueueStore};
use serde_json::json;

fn ticking() -> Periodic {
    Periodic::every("tick", Duration::from_secs(1), || {
        Ok(NewJob::from_json(
            "ticks",
            json!({"task": "tick", "args": null}),
        ))
    })
    .unwrap()
}

/// The tick each of `queue`'s jobs was put for, with how many jobs it has.
async fn ticks(store: &dyn QueueStore, queue: &str) -> BTreeMap<DateTime<Utc>, usize> {
    let claim = Claim::new([queue]).limit(1000);
    let mut ticks = BTreeMap::new();
    for job in store.claim(&claim).await.unwrap() {
        let (key, _) = job.job.unique.clone().expect("a tick's job is unique");
        let micros = key
            .strip_prefix(&format!("{TICK_KEY_PREFIX}tick@"))
            .and_then(|t| t.parse::<i64>().ok())
            .expect("a tick key");
        *ticks
            .entry(DateTime::from_timestamp_micros(micros).unwrap())
            .or_insert(0) += 1;
    }
    ticks
}

/// Three schedulers running one entry that ticks every second put each tick once, missing
/// none, and one of them killed half way changes nothing.
pub async fn schedulers_put_each_tick_once(store: Arc<dyn QueueStore>) {
    let start = Utc::now();
    let schedulers: Vec<Scheduler> = (0..3)
        .map(|_| Scheduler::new(store.clone()).entry(ticking()).unwrap())
        .collect();
    let handles: Vec<_> = schedulers.iter().map(Scheduler::handle).collect();
    let mut runs: Vec<_> = schedulers
        .into_iter()
        .map(|s| tokio::spawn(s.run()))
        .collect();
    tokio::time::sleep(Duration::from_millis(2300)).await;
    runs.pop().unwrap().abort(); // killed, mid-way
    tokio::time::sleep(Duration::from_millis(2300)).await;
    for h in &handles {
        h.stop();
    }
    let end = Utc::now();
    for run in runs {
        run.await.unwrap().unwrap();
    }

    let ticks = ticks(&*store, "ticks").await;
    assert!(
        ticks.values().all(|&n| n == 1),
        "each tick put once: {ticks:?}"
    );
    // Every whole second after the start up to shortly before the end was a tick.
    let first = DateTime::from_timestamp(start.timestamp() + 1, 0).unwrap();
    let mut expected = Vec::new();
    let mut t = first;
    while t <= end - TimeDelta::milliseconds(300) {
        expected.push(t);
        t += TimeDelta::seconds(1);
    }
    let got: Vec<_> = ticks
        .keys()
        .copied()
        .filter(|t| *t <= expected[expected.len() - 1])
        .collect();
    assert_eq!(got, expected, "no tick missed");
    assert!(
        ticks.keys().all(|t| *t > start && *t <= end),
        "no tick outside the run: {ticks:?}"
    );
}

/// A scheduler asked to make up a missed tick puts the last tick that passed while none ran,
/// once however many schedulers start; by default a missed tick is skipped.
pub async fn a_missed_tick_is_made_up_only_when_asked(store: Arc<dyn QueueStore>) {
    // One tick only, long past: 2020-01-01 00:00:00 UTC.
    let once = |missed| {
        Periodic::cron("tick", "0 0 0 1 1 * 2020", || {
            Ok(NewJob::from_json(
                "missed",
                json!({"task": "tick", "args": null}),
            ))
        })
        .unwrap()
        .missed(missed)
    };
    let run = |entry: Periodic| {
        let store = store.clone();
        async move {
            let scheduler = Scheduler::new(store).entry(entry).unwrap();
            let handle = scheduler.handle();
            let run = tokio::spawn(scheduler.run());
            tokio::time::sleep(Duration::from_millis(300)).await;
            handle.stop();
            run.await.unwrap().unwrap();
        }
    };
    run(once(pq_api::periodic::Missed::Skip)).await;
    assert_eq!(store.stats("missed").await.unwrap().total(), 0, "skipped");
    run(once(pq_api::periodic::Missed::RunLast)).await;
    run(once(pq_api::periodic::Missed::RunLast)).await;
    let ticks = ticks(&*store, "missed").await;
    let tick = DateTime::parse_from_rfc3339("2020-01-01T00:00:00Z").unwrap();
    assert_eq!(
        ticks.into_iter().collect::<Vec<_>>(),
        vec![(tick.with_timezone(&Utc), 1)]
    );
}

/// A scheduler whose store failed its puts for a while puts, once the store answers, only
/// the tick then due: the ticks that passed meanwhile are not put late, one by one.
pub async fn a_tick_the_store_refused_gives_way_to_the_next(store: Arc<dyn QueueStore>) {
    // Start a tenth of a second into a second, so that this case and the scheduler count
    // their ticks from the same second.
    let into = Utc::now().timestamp_subsec_millis();
    tokio::time::sleep(Duration::from_millis(u64::from(1100 - into.min(999)))).await;
    let start = Utc::now();
    let blips: Arc<dyn QueueStore> =
        Arc::new(crate::worker::Blips::new(store.clone(), 0, 0).failing_puts(2));
    let scheduler = Scheduler::new(blips).entry(ticking()).unwrap();
    let handle = scheduler.handle();
    let run = tokio::spawn(scheduler.run());
    tokio::time::sleep(Duration::from_millis(4500)).await;
    handle.stop();
    run.await.unwrap().unwrap();

    let ticks: Vec<_> = ticks(&*store, "ticks").await.into_keys().collect();
    // The first two ticks' puts were refused (the second one's a retry of the first, folded
    // into it): the first tick put is the third after the start.
    let third = DateTime::from_timestamp(start.timestamp() + 3, 0).unwrap();
    assert_eq!(ticks.first(), Some(&third), "{ticks:?}");
    assert!(
        ticks
            .windows(2)
            .all(|w| w[1] - w[0] == TimeDelta::seconds(1)),
        "no tick skipped once the store answered: {ticks:?}"
    );
}

//! The conformance harness itself: a case that never yields fails with its name instead of
//! hanging the test binary.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a test's verdict

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pq_api::QueueStore;
use pq_conformance::{run_case_within, Flavor};
use pq_memory::MemoryStore;

static RELEASE: AtomicBool = AtomicBool::new(false);

async fn new_store() -> Arc<dyn QueueStore> {
    Arc::new(MemoryStore::new())
}

/// Blocks its thread, never yielding, until the test lets it go.
async fn spins_without_yielding(_store: Arc<dyn QueueStore>) {
    while !RELEASE.load(Ordering::Relaxed) {
        std::hint::spin_loop();
    }
}

/// Awaits something that never comes.
async fn awaits_forever(_store: Arc<dyn QueueStore>) {
    std::future::pending::<()>().await;
}

fn failure_of(run: impl FnOnce() + std::panic::UnwindSafe) -> String {
    let err = std::panic::catch_unwind(run).expect_err("the case fails");
    err.downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| (*s).to_string()))
        .unwrap_or_default()
}

#[test]
fn a_case_that_blocks_its_runtime_fails_with_its_name() {
    for flavor in [Flavor::MultiThread, Flavor::CurrentThread] {
        let limit = Duration::from_millis(300);
        let message =
            failure_of(|| run_case_within(limit, flavor, new_store, spins_without_yielding));
        assert!(
            message.contains("harness::spins_without_yielding") && message.contains("hung"),
            "{message}"
        );
    }
    RELEASE.store(true, Ordering::Relaxed);
}

#[test]
fn a_case_that_awaits_forever_fails_with_its_name() {
    let limit = Duration::from_millis(300);
    let message =
        failure_of(|| run_case_within(limit, Flavor::CurrentThread, new_store, awaits_forever));
    assert!(
        message.contains("harness::awaits_forever") && message.contains("did not finish"),
        "{message}"
    );
}

#[test]
fn a_case_that_passes_passes() {
    run_case_within(
        Duration::from_secs(30),
        Flavor::MultiThread,
        new_store,
        pq_conformance::put::put_returns_distinct_ids_of_ready_jobs,
    );
}

//! The whole conformance suite on the memory store.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a test's verdict

use std::sync::Arc;

use pq_api::QueueStore;
use pq_memory::MemoryStore;

async fn new_store() -> Arc<dyn QueueStore> {
    Arc::new(MemoryStore::new())
}

pq_conformance::suite!(new_store);

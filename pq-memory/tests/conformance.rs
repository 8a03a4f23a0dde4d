//! The whole conformance suite on the memory store.

use std::sync::Arc;

use pq_api::QueueStore;
use pq_memory::MemoryStore;

async fn new_store() -> Arc<dyn QueueStore> {
    Arc::new(MemoryStore::new())
}

pq_conformance::suite!(new_store);

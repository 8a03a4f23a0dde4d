//! Enqueueing and working jobs inside your own transaction on the sqlx store, and plain SQL
//! enqueues.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a test's verdict

use std::time::Duration;

use pq_api::postgres::QueueTable;
use pq_api::{Claim, Error, JobState, NewJob, QueueStore, QueueStoreExt};
use pq_conformance::postgres::{database_url, fresh_schema};
use pq_sqlx::SqlxStore;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};

async fn pool() -> PgPool {
    PgPoolOptions::new()
        .max_connections(8)
        .connect(&database_url().await)
        .await
        .expect("connect")
}

async fn store() -> SqlxStore {
    let table = QueueTable::new(&fresh_schema(), "pq_jobs").unwrap();
    SqlxStore::with_table(pool().await, table).await.unwrap()
}

async fn business_table(store: &SqlxStore) -> String {
    let name = format!("\"{}\".orders", store.table().schema());
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {name} (id int PRIMARY KEY, mailed bool NOT NULL DEFAULT false)"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    name
}

#[tokio::test]
async fn a_job_enqueued_in_a_rolled_back_transaction_never_existed() {
    let store = store().await;
    let orders = business_table(&store).await;
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {orders} (id) VALUES (1)"
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    let ids = store
        .put_many_in(&mut tx, vec![NewJob::from_json("mail", json!(1))])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert!(matches!(store.job(ids[0]).await, Err(Error::NotFound(_))));
    assert_eq!(store.stats("mail").await.unwrap().total(), 0);
}

#[tokio::test]
async fn a_job_enqueued_in_a_committed_transaction_is_visible_and_wakes_waiters() {
    let store = store().await;
    let orders = business_table(&store).await;
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .wait(&["mail".to_string()], Duration::from_secs(30))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {orders} (id) VALUES (1)"
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    store
        .put_many_in(&mut tx, vec![NewJob::from_json("mail", json!(1))])
        .await
        .unwrap();
    // Not visible to others before commit.
    assert_eq!(store.stats("mail").await.unwrap().total(), 0);
    tx.commit().await.unwrap();
    let woke = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(woke);
    assert_eq!(store.stats("mail").await.unwrap().ready, 1);
}

#[tokio::test]
async fn transactional_processing_commits_the_removal_with_the_handlers_writes() {
    let store = store().await;
    let orders = business_table(&store).await;
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {orders} (id) VALUES (7)"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    let id = store.put("mail", &json!({"order": 7})).await.unwrap();

    // The handler fails: everything rolls back and the job is claimable again at once.
    let mut tx = store.pool().begin().await.unwrap();
    let job = store
        .claim_in(&mut tx, &Claim::new(["mail"]))
        .await
        .unwrap()
        .remove(0);
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE {orders} SET mailed = true WHERE id = 7"
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    drop(tx); // rolls back, as a crashed handler's connection would
    let seen = store.job(id).await.unwrap();
    assert_eq!((seen.state, seen.attempts), (JobState::Ready, 0));
    let mailed: bool = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT mailed FROM {orders} WHERE id = 7"
    )))
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert!(!mailed);

    // The handler succeeds: its write and the job's removal commit together.
    let mut tx = store.pool().begin().await.unwrap();
    let again = store
        .claim_in(&mut tx, &Claim::new(["mail"]))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(again.id(), job.id());
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE {orders} SET mailed = true WHERE id = 7"
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    assert_eq!(
        store
            .complete_many_in(&mut tx, &[again.lease.into()])
            .await
            .unwrap(),
        vec![id]
    );
    tx.commit().await.unwrap();
    assert!(matches!(store.job(id).await, Err(Error::NotFound(_))));
    let mailed: bool = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT mailed FROM {orders} WHERE id = 7"
    )))
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert!(mailed);
}

#[tokio::test]
async fn a_plain_sql_insert_is_a_valid_enqueue_and_wakes_waiters() {
    let store = store().await;
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .wait(&["raw".to_string()], Duration::from_secs(30))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sql = format!(
        "INSERT INTO {} (queue, payload) VALUES ('raw', '{{\"from\": \"psql\"}}')",
        store.table().qualified()
    );
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(store.pool())
        .await
        .unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap());
    let job = store.claim(&Claim::new(["raw"])).await.unwrap().remove(0);
    assert_eq!(*job.job.payload, json!({"from": "psql"}));
    assert_eq!(
        (job.job.priority, job.job.attempts, job.job.max_attempts),
        (0, 1, pq_api::DEFAULT_MAX_ATTEMPTS)
    );
}

/// Uniqueness holds for puts in callers' transactions: a second transaction putting a key
/// the first put waits for the first to end, then gets its job's id if it committed (or adds
/// its own if it rolled back). A transaction at a stricter isolation level, whose snapshot
/// would hide a racing put, is refused rather than let two jobs hold one key.
#[tokio::test]
async fn a_unique_put_in_a_transaction_waits_for_a_racing_one() {
    use pq_api::Unique;
    let store = store().await;
    let job = || NewJob::from_json("mail", json!(1)).unique("k", Unique::WhileActive);

    let mut first = store.pool().begin().await.unwrap();
    let id = store.put_many_in(&mut first, vec![job()]).await.unwrap()[0];
    let racing = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut second = store.pool().begin().await.unwrap();
            let ids = store.put_many_in(&mut second, vec![job()]).await.unwrap();
            second.commit().await.unwrap();
            ids[0]
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!racing.is_finished(), "the second put waits for the first");
    first.commit().await.unwrap();
    assert_eq!(racing.await.unwrap(), id);
    assert_eq!(store.stats("mail").await.unwrap().total(), 1);

    // A rolled-back put holds nothing.
    let other = || NewJob::from_json("mail", json!(2)).unique("other", Unique::WhileActive);
    let mut undone = store.pool().begin().await.unwrap();
    let gone = store.put_many_in(&mut undone, vec![other()]).await.unwrap()[0];
    undone.rollback().await.unwrap();
    assert_ne!(store.put_many(vec![other()]).await.unwrap()[0], gone);

    let mut strict = store.pool().begin().await.unwrap();
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *strict)
        .await
        .unwrap();
    let refused = store.put_many_in(&mut strict, vec![job()]).await;
    assert!(
        matches!(&refused, Err(Error::InvalidArgument { reason, .. })
            if reason.contains("READ COMMITTED")),
        "{refused:?}"
    );
}

/// A keyed put in an open transaction holds its key's record only against the prune: a job
/// of the key running meanwhile completes, a claim of another queue's key goes on, and a
/// prune leaves the record for the put, whose job runs once it commits.
#[tokio::test]
async fn a_keyed_put_in_an_open_transaction_holds_up_no_completion_of_its_key() {
    let store = store().await;
    store
        .put_job(NewJob::from_json("q", json!(1)).serial_key("k"))
        .await
        .unwrap();
    let running = store
        .claim(&Claim::new(["q"]).lease(Duration::from_secs(60)))
        .await
        .unwrap()
        .remove(0);
    let mut tx = store.pool().begin().await.unwrap();
    let ids = store
        .put_many_in(
            &mut tx,
            vec![NewJob::from_json("q", json!(2)).serial_key("k")],
        )
        .await
        .unwrap();
    // Not waiting on the open transaction: a bound on blocking, not a speed check.
    tokio::time::timeout(Duration::from_secs(10), store.complete(&running.lease))
        .await
        .expect("the completion does not wait for the open transaction")
        .unwrap();
    let pruned = tokio::time::timeout(Duration::from_secs(10), store.prune())
        .await
        .expect("the prune does not wait for the open transaction")
        .unwrap();
    assert_eq!(pruned.keys, 0, "the record of a key being put stays");
    tx.commit().await.unwrap();
    let next = store.claim(&Claim::new(["q"])).await.unwrap();
    assert_eq!(next.iter().map(|j| j.id()).collect::<Vec<_>>(), ids);
}

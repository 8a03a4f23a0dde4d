//! What only the diesel store has: its listener, its prepared statements, its error mapping
//! and its kept connections.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a test's verdict

use std::collections::BTreeSet;
use std::time::Duration;

use pq_api::postgres::QueueTable;
use pq_api::{Claim, Error, NewJob, QueueStore, QueueStoreExt};
use pq_conformance::postgres::{database_url, fresh_schema};
use pq_diesel::DieselStore;
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

/// Kills the store's LISTEN connection, puts a job from elsewhere, and expects `wait` to be
/// woken all the same once the listener has reconnected.
async fn wait_survives_a_killed_listener(
    store: &dyn QueueStore,
    pool: &PgPool,
    table: &QueueTable,
) {
    // Start the listener and let it connect.
    assert!(!store
        .wait(&["k".to_string()], Duration::from_millis(200))
        .await
        .unwrap());
    let listen = format!("LISTEN \"{}\"", table.channel());
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&listen)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        killed,
        vec![true],
        "exactly one listener connection was killed"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sql = format!(
        "INSERT INTO {} (queue, payload) VALUES ('k', '1')",
        table.qualified()
    );
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(pool)
        .await
        .unwrap();
    let start = tokio::time::Instant::now();
    let mut woke = false;
    while !woke && start.elapsed() < Duration::from_secs(10) {
        woke = store
            .wait(&["k".to_string()], Duration::from_secs(10))
            .await
            .unwrap();
    }
    assert!(woke, "wait was never woken after the listener died");
    assert_eq!(store.claim(&Claim::new(["k"])).await.unwrap().len(), 1);
}

#[tokio::test]
async fn diesel_listener_is_reestablished_after_its_connection_dies() {
    let table = QueueTable::new(&fresh_schema(), "pq_jobs").unwrap();
    let diesel_pool = DieselStore::pool(&database_url().await, 4).unwrap();
    let store = DieselStore::with_table(diesel_pool, table.clone())
        .await
        .unwrap();
    wait_survives_a_killed_listener(&store, &pool().await, &table).await;
}

#[derive(diesel::QueryableByName)]
struct PlanCounts {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    generic_plans: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    custom_plans: i64,
}

/// How often the statement `text` prepared on a connection of `pool` (one row per connection
/// it is prepared on) was planned generically and for its parameters.
async fn diesel_plan_counts(pool: &pq_diesel::PgPool, text: &str) -> Vec<PlanCounts> {
    use diesel_async::RunQueryDsl;
    let mut conn = pool.get().await.unwrap();
    diesel::sql_query(
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1",
    )
    .bind::<diesel::sql_types::Text, _>(text.to_string())
    .load(&mut conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn diesel_keeps_its_statements_prepared_and_stops_planning_the_claim() {
    let table = QueueTable::new(&fresh_schema(), "pq_jobs").unwrap();
    // One connection: every call below runs on it.
    let diesel_pool = DieselStore::pool(&database_url().await, 1).unwrap();
    let store = DieselStore::with_table(diesel_pool.clone(), table.clone())
        .await
        .unwrap();
    let jobs = (0..1000).map(|n| NewJob::new("q", &json!(n)).unwrap());
    store.put_many(jobs.collect()).await.unwrap();
    for _ in 0..12 {
        assert_eq!(
            store
                .claim(&Claim::new(["q"]).limit(16))
                .await
                .unwrap()
                .len(),
            16
        );
    }
    // The claim of a queue without limits.
    let sql = pq_api::postgres::Statements::new(&table).claim_unlimited(
        &["q".to_string()],
        16,
        pq_api::DEFAULT_LEASE,
        false,
    );
    let counts = diesel_plan_counts(&diesel_pool, &sql).await;
    let [c] = counts.as_slice() else {
        panic!(
            "the claim is not prepared on the connection: {}",
            counts.len()
        );
    };
    assert!(
        c.custom_plans <= 5 && c.generic_plans >= 7,
        "generic {}, custom {}",
        c.generic_plans,
        c.custom_plans
    );
}

#[tokio::test]
async fn diesel_maps_a_missing_table_to_a_schema_error_and_a_dead_server_to_unavailable() {
    let table = QueueTable::new(&fresh_schema(), "never_migrated").unwrap();
    let store =
        DieselStore::without_migrating(DieselStore::pool(&database_url().await, 2).unwrap(), table);
    let err = store.put("q", &json!(1)).await.unwrap_err();
    assert!(matches!(err, Error::Schema(_)), "{err:?}");

    // Nothing listens on port 1: the pool cannot connect.
    let store = DieselStore::without_migrating(
        DieselStore::pool("postgres://postgres:postgres@127.0.0.1:1/postgres", 1).unwrap(),
        QueueTable::default(),
    );
    let err = store.put("q", &json!(1)).await.unwrap_err();
    assert!(
        matches!(err, Error::Unavailable(_)) && err.is_retryable(),
        "{err:?}"
    );
}

/// The server processes (`pid`s) of `app` whose last statement began with `prefix`.
async fn last_ran(observer: &PgPool, app: &str, prefix: &str) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND starts_with(query, $2)",
    )
    .bind(app)
    .bind(prefix)
    .fetch_all(observer)
    .await
    .unwrap()
}

#[tokio::test]
async fn diesels_claims_and_completions_each_keep_to_a_connection_given_back_when_idle() {
    let app = format!("pq-warm-{}", fastrand::u32(..));
    let url = database_url().await;
    let sep = if url.contains('?') { '&' } else { '?' };
    let diesel_pool = DieselStore::pool(&format!("{url}{sep}application_name={app}"), 4).unwrap();
    let table = QueueTable::new(&fresh_schema(), "pq_jobs").unwrap();
    let store = DieselStore::with_table(diesel_pool.clone(), table)
        .await
        .unwrap();
    let jobs = (0..410).map(|n| NewJob::new("q", &json!(n)).unwrap());
    store.put_many(jobs.collect()).await.unwrap();
    let mut leases: Vec<pq_api::Done> = store
        .claim(&Claim::new(["q"]).limit(400))
        .await
        .unwrap()
        .into_iter()
        .map(|j| pq_api::Done::new(j.lease))
        .collect();

    // As the worker does: a claim alongside completions. Completing 40 jobs takes longer than
    // claiming one, so on the pool alone (last in, first out) the two would swap connections
    // every round.
    let observer = self::pool().await;
    let (mut claimed_on, mut completed_on) = (BTreeSet::new(), BTreeSet::new());
    let one = Claim::new(["q"]).limit(1);
    for _ in 0..10 {
        let batch: Vec<_> = leases.drain(..40).collect();
        let (claimed, completed) = tokio::join!(store.claim(&one), store.complete_many(&batch));
        assert_eq!(claimed.unwrap().len(), 1);
        assert_eq!(completed.unwrap().len(), 40);
        claimed_on.extend(last_ran(&observer, &app, "WITH lease AS").await);
        completed_on.extend(last_ran(&observer, &app, "WITH done AS").await);
    }
    assert_eq!(claimed_on.len(), 1, "server processes that ran the claims");
    assert_eq!(
        completed_on.len(),
        1,
        "server processes that ran the completions"
    );
    assert_ne!(claimed_on, completed_on);

    // Idle, the store holds nothing: every connection is in the pool again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = diesel_pool.status();
    assert_eq!(status.available, status.size, "{status:?}");
}

#[tokio::test]
async fn diesel_maps_a_terminated_session_to_a_retryable_error() {
    use diesel::sql_types::Integer;
    use diesel_async::RunQueryDsl;

    #[derive(diesel::QueryableByName)]
    struct Pid {
        #[diesel(sql_type = Integer)]
        pid: i32,
    }

    let admin = pool().await;
    let diesel_pool = DieselStore::pool(&database_url().await, 1).unwrap();
    let mut conn = diesel_pool.get().await.unwrap();
    let row: Pid = diesel::sql_query("SELECT pg_backend_pid() AS pid")
        .get_result(&mut conn)
        .await
        .unwrap();
    // The session is ended while a statement of it runs, as a restart or an operator does.
    let terminate = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        sqlx::query_scalar::<_, bool>("SELECT pg_terminate_backend($1)")
            .bind(row.pid)
            .fetch_one(&admin)
            .await
            .unwrap()
    };
    let (ran, ended) = tokio::join!(
        diesel::sql_query("SELECT pg_sleep(30)").execute(&mut conn),
        terminate
    );
    assert!(ended);
    let err = pq_diesel::map_err(ran.unwrap_err());
    assert!(err.is_retryable(), "{err:?}");
}

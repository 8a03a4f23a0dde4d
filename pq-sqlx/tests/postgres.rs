//! What only a PostgreSQL store can promise: transactions, plain SQL enqueues, hostile names,
//! and the same SQL text from both drivers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a test's verdict

use std::collections::BTreeSet;
use std::time::Duration;

use pq_api::postgres::QueueTable;
use pq_api::{Claim, Error, JobState, NewJob, QueueStore, QueueStoreExt};
use pq_conformance::postgres::{database_url, fresh_schema};
use pq_diesel::DieselStore;
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

#[tokio::test]
async fn hostile_schema_and_table_names_are_rejected_before_any_sql() {
    for (schema, table) in [
        ("public", "jobs; DROP TABLE users"),
        ("public\"", "jobs"),
        ("Public", "jobs"),
        ("pg_catalog", "jobs"),
        ("", "jobs"),
        ("public", &"t".repeat(49)),
    ] {
        let err = QueueTable::new(schema, table).unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { .. }),
            "{schema}.{table}: {err:?}"
        );
    }
}

#[tokio::test]
async fn migrating_is_idempotent_and_safe_when_concurrent() {
    let table = QueueTable::new(&fresh_schema(), "jobs").unwrap();
    let pool = pool().await;
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (pool, table) = (pool.clone(), table.clone());
            tokio::spawn(async move { SqlxStore::with_table(pool, table).await.map(|_| ()) })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let store = SqlxStore::with_table(pool.clone(), table.clone())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let versions: Vec<i32> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT version FROM \"{}\".jobs_migrations",
        table.schema()
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    let all: Vec<i32> = pq_api::postgres::migrations(&table)
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(versions, all);
}

#[tokio::test]
async fn a_missing_table_is_a_schema_error_and_a_closed_pool_is_retryable() {
    let table = QueueTable::new(&fresh_schema(), "never_migrated").unwrap();
    let pool = pool().await;
    let store = SqlxStore::without_migrating(pool.clone(), table);
    let err = store.put("q", &json!(1)).await.unwrap_err();
    assert!(matches!(err, Error::Schema(_)), "{err:?}");
    assert!(!err.is_retryable());

    let store = self::store().await;
    store.pool().close().await;
    let err = store.put("q", &json!(1)).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(err.is_retryable());
}

/// Runs the same scenario through a store: every statement kind once.
async fn scenario(store: &dyn QueueStore) {
    store.put("s", &json!(1)).await.unwrap();
    store
        .put_many(vec![NewJob::from_json("s", json!(2)).max_attempts(1)])
        .await
        .unwrap();
    let jobs = store.claim(&Claim::new(["s"]).limit(2)).await.unwrap();
    store
        .extend(&jobs[0].lease, Duration::from_secs(60))
        .await
        .unwrap();
    store
        .fail(&jobs[1].lease, pq_api::Failure::new("x"))
        .await
        .unwrap();
    store.retry(jobs[1].id()).await.unwrap();
    store.complete(&jobs[0].lease).await.unwrap();
    let job = store.claim(&Claim::new(["s"])).await.unwrap().remove(0);
    store.release(&job.lease).await.unwrap();
    store.job(job.id()).await.unwrap();
    store.stats("s").await.unwrap();
    store
        .wait(&["s".to_string()], Duration::from_millis(10))
        .await
        .unwrap();
    store.cancel(job.id()).await.unwrap();
    // A cursor key takes the insert's other form.
    store
        .put_many(vec![NewJob::from_json("s", json!(3)).cursor_key("c")])
        .await
        .unwrap();
    store.purge("s").await.unwrap();
    store.key_state("s", "k").await.unwrap();
    store.finished(job.id()).await.unwrap_err();
    store.history("s", 10).await.unwrap();
    store.cleanup_history().await.unwrap();
}

/// The statements recorded for `table`, with its schema and channel names masked.
async fn statements_of(pool: &PgPool, table: &QueueTable) -> BTreeSet<String> {
    let schema = table.schema();
    let texts: Vec<String> = sqlx::query_scalar(
        "SELECT query FROM pg_stat_statements WHERE query LIKE '%' || $1 || '%'",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .unwrap();
    texts
        .into_iter()
        .map(|t| {
            t.replace(schema, "<schema>")
                .replace(&table.channel(), "<channel>")
        })
        .collect()
}

#[tokio::test]
async fn both_stores_send_byte_identical_sql_and_claim_is_one_skip_locked_statement() {
    let pool = pool().await;
    sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&pool)
        .await
        .unwrap();

    let sqlx_table = QueueTable::new(&fresh_schema(), "pq_jobs").unwrap();
    let sqlx_store = SqlxStore::with_table(pool.clone(), sqlx_table.clone())
        .await
        .unwrap();
    scenario(&sqlx_store).await;

    let diesel_table = QueueTable::new(&fresh_schema(), "pq_jobs").unwrap();
    let diesel_pool = DieselStore::pool(&database_url().await, 4).unwrap();
    let diesel_store = DieselStore::with_table(diesel_pool, diesel_table.clone())
        .await
        .unwrap();
    scenario(&diesel_store).await;

    let from_sqlx = statements_of(&pool, &sqlx_table).await;
    let from_diesel = statements_of(&pool, &diesel_table).await;
    assert!(
        from_sqlx.len() >= 17,
        "too few statements recorded: {from_sqlx:#?}"
    );
    assert_eq!(from_sqlx, from_diesel);

    let claims: Vec<&String> = from_sqlx
        .iter()
        .filter(|q| q.contains("SKIP LOCKED"))
        .collect();
    assert_eq!(claims.len(), 1, "{claims:#?}");
    let claim = claims[0];
    assert!(claim.starts_with("WITH cand AS") && claim.contains("FOR UPDATE OF j SKIP LOCKED"));
    assert!(
        !claim.trim_end().trim_end_matches(';').contains(';'),
        "one statement"
    );
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
async fn sqlx_listener_is_reestablished_after_its_connection_dies() {
    let store = store().await;
    let table = store.table().clone();
    wait_survives_a_killed_listener(&store, store.pool(), &table).await;
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

#[tokio::test]
async fn claim_is_served_by_the_claim_index_not_a_scan() {
    let store = store().await;
    let t = store.table().qualified();
    let keys = store
        .table()
        .qualified()
        .replace("pq_jobs\"", "pq_jobs_keys\"");
    // 20,000 plain jobs, and 20,000 keyed ones behind 1,000 keys.
    let fill = format!(
        "INSERT INTO {t} (queue, payload) SELECT 'big', '{{}}'::jsonb FROM generate_series(1, 20000); \
         INSERT INTO {t} (queue, payload, key) SELECT 'keyed', '{{}}'::jsonb, 'k' || (i % 1000) \
         FROM generate_series(1, 20000) AS i; \
         INSERT INTO {keys} (queue, key) SELECT DISTINCT queue, key FROM {t} WHERE key IS NOT NULL; \
         ANALYZE {t}; ANALYZE {keys};"
    );
    sqlx::raw_sql(AssertSqlSafe(fill))
        .execute(store.pool())
        .await
        .unwrap();
    let sql = pq_api::postgres::Statements::new(store.table()).claim(1, 10);
    // Each connection first plans the claim for its parameters, then settles on one generic
    // plan for every later claim: both must be served by the indexes.
    for mode in ["force_custom_plan", "force_generic_plan"] {
        for queue in ["big", "keyed"] {
            let mut tx = store.pool().begin().await.unwrap();
            sqlx::query(AssertSqlSafe(format!("SET LOCAL plan_cache_mode = {mode}")))
                .execute(&mut *tx)
                .await
                .unwrap();
            let plan: Vec<String> =
                sqlx::query_scalar(AssertSqlSafe(format!("EXPLAIN (ANALYZE, COSTS OFF) {sql}")))
                    .bind(vec![queue.to_string()])
                    .bind(60_000_000_i64)
                    .bind(1_i64)
                    .fetch_all(&mut *tx)
                    .await
                    .unwrap();
            tx.rollback().await.unwrap();
            let plan = plan.join("\n");
            assert!(
                plan.contains("Index Scan using pq_jobs_claim"),
                "{mode}: {plan}"
            );
            // No scan of the jobs table (the keys table may be scanned while it is tiny).
            assert!(!plan.contains("Seq Scan on pq_jobs "), "{mode}: {plan}");
            if queue == "keyed" {
                assert!(
                    plan.contains("Index Scan using pq_jobs_key on"),
                    "{mode}: {plan}"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_connection_stops_planning_the_claim_after_its_first_executions() {
    let store = store().await;
    let jobs = (0..1000).map(|n| NewJob::new("q", &json!(n)).unwrap());
    store.put_many(jobs.collect()).await.unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "ANALYZE {}",
        store.table().qualified()
    )))
    .execute(store.pool())
    .await
    .unwrap();
    let mut conn = store.pool().acquire().await.unwrap();
    let sql = pq_api::postgres::Statements::new(store.table()).claim_in_transaction(1, 16);
    for _ in 0..12 {
        let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
        store
            .claim_in(&mut tx, &Claim::new(["q"]).limit(16))
            .await
            .unwrap();
        tx.rollback().await.unwrap();
    }
    let (generic, custom): (i64, i64) = sqlx::query_as(
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1",
    )
    .bind(&sql)
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    // PostgreSQL plans the first five executions for their parameters, then compares.
    assert!(
        custom <= 5 && generic >= 7,
        "generic {generic}, custom {custom}"
    );
}

/// Asserts the job `id` is running, as read by the store on another connection.
async fn assert_running(store: &dyn QueueStore, id: pq_api::JobId) {
    assert_eq!(store.job(id).await.unwrap().state, JobState::Running);
}

/// Sets `synchronous_commit` on for the transaction `tx` is in.
async fn sync_commit_on(tx: &mut sqlx::PgConnection) {
    sqlx::query("SET LOCAL synchronous_commit = on")
        .execute(tx)
        .await
        .unwrap();
}

/// `synchronous_commit` as the transaction `tx` is in sees it.
async fn sync_commit(tx: &mut sqlx::PgConnection) -> String {
    sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(tx)
        .await
        .unwrap()
}

/// Claims one job of queue `q` with the store's own claim and checks it is running.
async fn claim_running(store: &dyn QueueStore) {
    let job = store.claim(&Claim::new(["q"])).await.unwrap().remove(0);
    assert_running(store, job.id()).await;
}

#[derive(diesel::QueryableByName)]
struct Setting {
    #[diesel(sql_type = diesel::sql_types::Text)]
    synchronous_commit: String,
}

/// A store's own claim is a transaction by itself and commits without waiting for its WAL to
/// reach the disk (a server crash could lose the claim, and the job would run again, as after
/// a lost lease). A claim in the caller's transaction leaves that transaction's commit as the
/// caller set it: the business writes beside it stay as durable as ever.
#[tokio::test]
async fn a_stores_own_claim_commits_asynchronously_and_a_claim_in_a_transaction_as_set() {
    use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
    const ASYNC: &str = "set_config('synchronous_commit', 'off', true)";
    let url = database_url().await;
    let jobs = || {
        (0..4)
            .map(|n| NewJob::new("q", &json!(n)).unwrap())
            .collect()
    };

    // The store's own claims, on one connection each: the statement prepared on it is the
    // claim text that commits asynchronously.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    let table = QueueTable::new(&fresh_schema(), "pq_jobs").unwrap();
    let sql = pq_api::postgres::Statements::new(&table);
    let own = sql.claim(1, 1);
    assert!(own.contains(ASYNC));
    let sqlx_store = SqlxStore::with_table(pool.clone(), table.clone())
        .await
        .unwrap();
    sqlx_store.put_many(jobs()).await.unwrap();
    claim_running(&sqlx_store).await;
    // The store gives its kept connection back to the pool once idle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let prepared: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_prepared_statements WHERE statement = $1")
            .bind(&*own)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(prepared, 1);

    let diesel_table = QueueTable::new(&fresh_schema(), "pq_jobs").unwrap();
    let diesel_pool = DieselStore::pool(&url, 1).unwrap();
    let diesel_store = DieselStore::with_table(diesel_pool.clone(), diesel_table.clone())
        .await
        .unwrap();
    diesel_store.put_many(jobs()).await.unwrap();
    claim_running(&diesel_store).await;
    let own = pq_api::postgres::Statements::new(&diesel_table).claim(1, 1);
    assert_eq!(diesel_plan_counts(&diesel_pool, &own).await.len(), 1);

    // That text really turns synchronous_commit off for its transaction: run inside an
    // explicit one that set it on, the setting shows. (Set explicitly: the test server may
    // run with it off.)
    let other = self::pool().await;
    let mut tx = other.begin().await.unwrap();
    sync_commit_on(&mut tx).await;
    let rows = sqlx::query(AssertSqlSafe(sql.claim(1, 1)))
        .bind(vec!["q".to_string()])
        .bind(30_000_000_i64)
        .bind(7_i64)
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(sync_commit(&mut tx).await, "off");
    tx.rollback().await.unwrap();

    // In the caller's transaction, on either driver: as the caller set it.
    let mut tx = other.begin().await.unwrap();
    sync_commit_on(&mut tx).await;
    let job = sqlx_store
        .claim_in(&mut tx, &Claim::new(["q"]))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(sync_commit(&mut tx).await, "on");
    tx.commit().await.unwrap();
    assert_running(&sqlx_store, job.id()).await;

    let mut conn = diesel_pool.get().await.unwrap();
    conn.batch_execute("BEGIN; SET LOCAL synchronous_commit = on")
        .await
        .unwrap();
    let job = diesel_store
        .claim_in(&mut conn, &Claim::new(["q"]))
        .await
        .unwrap()
        .remove(0);
    let setting: Vec<Setting> = diesel::sql_query("SHOW synchronous_commit")
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(setting[0].synchronous_commit, "on");
    conn.batch_execute("COMMIT").await.unwrap();
    drop(conn);
    assert_running(&diesel_store, job.id()).await;
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
    let sql = pq_api::postgres::Statements::new(&table).claim(1, 16);
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

#[tokio::test]
async fn a_busy_store_keeps_one_warm_connection_and_gives_it_back_when_idle() {
    // The pool opens four connections up front; handed out oldest first, sequential
    // statements would go round all four server processes.
    let app = format!("pq-warm-{}", fastrand::u32(..));
    let options: sqlx::postgres::PgConnectOptions = database_url().await.parse().unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .min_connections(4)
        .connect_with(options.application_name(&app))
        .await
        .unwrap();
    let table = QueueTable::new(&fresh_schema(), "pq_jobs").unwrap();
    let store = SqlxStore::with_table(pool.clone(), table).await.unwrap();
    let jobs = (0..20).map(|n| NewJob::new("q", &json!(n)).unwrap());
    store.put_many(jobs.collect()).await.unwrap();
    for _ in 0..20 {
        let job = store.claim(&Claim::new(["q"])).await.unwrap().remove(0);
        store.complete(&job.lease).await.unwrap();
    }
    let observer = self::pool().await;
    let claimed_on: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
         AND (query LIKE 'WITH cand AS%' OR query LIKE 'WITH done AS%')",
    )
    .bind(&app)
    .fetch_one(&observer)
    .await
    .unwrap();
    assert_eq!(
        claimed_on, 1,
        "server processes that ran the claims and completions"
    );

    // Idle, the store holds nothing: every connection is the application's again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pool.num_idle(), usize::try_from(pool.size()).unwrap());
    let mut held = Vec::new();
    for _ in 0..4 {
        let conn = tokio::time::timeout(Duration::from_millis(200), pool.acquire()).await;
        held.push(conn.expect("a connection the store still holds").unwrap());
    }
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
        claimed_on.extend(last_ran(&observer, &app, "WITH cand AS").await);
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

/// How many times the table was vacuumed by a `VACUUM` statement (autovacuum not counted).
async fn vacuum_count(pool: &PgPool, table: &QueueTable) -> i64 {
    table_stat(pool, table, "vacuum_count").await
}

/// `column` of `table`'s row in `pg_stat_user_tables`.
async fn table_stat(pool: &PgPool, table: &QueueTable, column: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT {column} FROM pg_stat_user_tables WHERE relid = $1::regclass"
    )))
    .bind(table.qualified())
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Four stores, each on a fresh table: sqlx built as `sqlx[0]` makes it (on) and as `sqlx[1]`
/// makes it (off), then diesel the same.
async fn on_and_off(
    pool: &PgPool,
    sqlx: [fn(SqlxStore) -> SqlxStore; 2],
    diesel: [fn(DieselStore) -> DieselStore; 2],
) -> Vec<(Box<dyn QueueStore>, QueueTable)> {
    let url = database_url().await;
    let mut stores: Vec<(Box<dyn QueueStore>, QueueTable)> = Vec::new();
    for build in sqlx {
        let table = QueueTable::new(&fresh_schema(), "pq_jobs").unwrap();
        let store = SqlxStore::with_table(pool.clone(), table.clone());
        stores.push((Box::new(build(store.await.unwrap())), table));
    }
    for build in diesel {
        let table = QueueTable::new(&fresh_schema(), "pq_jobs").unwrap();
        let store = DieselStore::with_table(DieselStore::pool(&url, 4).unwrap(), table.clone());
        stores.push((Box::new(build(store.await.unwrap())), table));
    }
    stores
}

/// Works 128 jobs through `store` in claims of 32.
async fn claim_and_complete_128(store: &dyn QueueStore) {
    let jobs = (0..128).map(|n| NewJob::new("q", &json!(n)).unwrap());
    store.put_many(jobs.collect()).await.unwrap();
    for _ in 0..4 {
        let claimed = store.claim(&Claim::new(["q"]).limit(32)).await.unwrap();
        assert_eq!(claimed.len(), 32);
        let done: Vec<pq_api::Done> = claimed.iter().map(|c| (&c.lease).into()).collect();
        assert_eq!(store.complete_many(&done).await.unwrap().len(), 32);
    }
}

/// Every claim leaves an index entry at the head of the claim index that only a vacuum
/// removes, so each store vacuums its table after so many claimed jobs (here 64), unless told
/// not to (0).
#[tokio::test]
async fn both_stores_vacuum_their_table_after_so_many_claimed_jobs_unless_told_not_to() {
    let pool = pool().await;
    let stores = on_and_off(
        &pool,
        [|s| s.vacuum_every(64), |s| s.vacuum_every(0)],
        [|s| s.vacuum_every(64), |s| s.vacuum_every(0)],
    )
    .await;
    let [sqlx_on, sqlx_off, diesel_on, diesel_off] = [0, 1, 2, 3].map(|i| stores[i].1.clone());
    for (store, _) in &stores {
        claim_and_complete_128(&**store).await;
    }
    // The vacuums run in the background, and PostgreSQL reports them a little later.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while vacuum_count(&pool, &sqlx_on).await == 0 || vacuum_count(&pool, &diesel_on).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a store with vacuum_every(64) did not vacuum after 128 claimed jobs"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(vacuum_count(&pool, &sqlx_off).await, 0);
    assert_eq!(vacuum_count(&pool, &diesel_off).await, 0);
    for (store, _) in &stores {
        assert_eq!(store.stats("q").await.unwrap().ready, 0);
    }
}

/// PostgreSQL skips a `VACUUM` by a role that does not own the table (with a warning), so
/// before its first vacuum a store asks [`Statements::may_vacuum`](pq_api::postgres::Statements),
/// and leaves the table to autovacuum if the answer is no: the owner may, a role with every
/// privilege on the table but not its owner may not.
#[tokio::test]
async fn only_the_tables_owner_may_vacuum_it() {
    let store = store().await;
    let sql = pq_api::postgres::Statements::new(store.table());
    let schema = store.table().schema();
    let role = format!("{schema}_app");
    let mut conn = store.pool().acquire().await.unwrap();
    let run = |text: String| sqlx::raw_sql(AssertSqlSafe(text));
    run(format!(
        "CREATE ROLE {role} NOLOGIN; GRANT USAGE ON SCHEMA \"{schema}\" TO {role}; \
         GRANT ALL ON ALL TABLES IN SCHEMA \"{schema}\" TO {role}"
    ))
    .execute(&mut *conn)
    .await
    .unwrap();
    let may = || sqlx::query_scalar::<_, bool>(AssertSqlSafe(sql.may_vacuum.clone()));
    assert!(may().fetch_one(&mut *conn).await.unwrap(), "the owner may");
    run(format!("SET ROLE {role}"))
        .execute(&mut *conn)
        .await
        .unwrap();
    let app = may().fetch_one(&mut *conn).await;
    run(format!(
        "RESET ROLE; DROP OWNED BY {role}; DROP ROLE {role}"
    ))
    .execute(&mut *conn)
    .await
    .unwrap();
    assert!(!app.unwrap(), "a role that does not own the table may not");
}

/// A table filled after it was created has no planner statistics until autovacuum analyzes
/// it, and the claim is planned as a scan of the whole backlog meanwhile; so each store
/// checks while it claims, and analyzes such a table itself, unless told not to.
#[tokio::test]
async fn both_stores_analyze_a_table_filled_without_statistics_unless_told_not_to() {
    let pool = pool().await;
    let stores = on_and_off(
        &pool,
        [|s| s, |s| s.analyze_when_stale(false)],
        [|s| s, |s| s.analyze_when_stale(false)],
    )
    .await;
    let [sqlx_on, sqlx_off, diesel_on, diesel_off] = [0, 1, 2, 3].map(|i| stores[i].1.clone());
    for (store, table) in &stores {
        // Only the store may analyze it here.
        sqlx::query(AssertSqlSafe(format!(
            "ALTER TABLE {} SET (autovacuum_enabled = false)",
            table.qualified()
        )))
        .execute(&pool)
        .await
        .unwrap();
        let jobs = (0..5000).map(|n| NewJob::new("q", &json!(n)).unwrap());
        store.put_many(jobs.collect()).await.unwrap();
    }
    let analyzed = |t| table_stat(&pool, t, "analyze_count");
    // The server reports the inserted rows within a second or so, and each store checks at
    // most once a second: claim, a batch per store, until both checking stores have analyzed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (mut rounds, mut rounds_after) = (0, 0);
    while rounds_after < 8 {
        rounds += 1;
        for (store, _) in &stores {
            let claimed = store.claim(&Claim::new(["q"]).limit(32)).await.unwrap();
            assert_eq!(claimed.len(), 32);
        }
        if analyzed(&sqlx_on).await > 0 && analyzed(&diesel_on).await > 0 {
            // Claims for a few seconds more: the other two had as long to analyze, and more.
            rounds_after += 1;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a checking store did not analyze a table of 5,000 jobs without statistics"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(analyzed(&sqlx_off).await, 0);
    assert_eq!(analyzed(&diesel_off).await, 0);
    for (store, table) in &stores {
        assert_eq!(table_stat(&pool, table, "autoanalyze_count").await, 0);
        assert_eq!(store.stats("q").await.unwrap().running, 32 * rounds);
    }
}

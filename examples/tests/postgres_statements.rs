//! The statements of both SQL stores: byte-identical SQL from both drivers, the claim served by
//! its index and planned once per connection, and claims that commit asynchronously.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a test's verdict

use std::collections::BTreeSet;
use std::time::Duration;

const HOUR: Duration = Duration::from_secs(3600);

use pq_api::postgres::QueueTable;
use pq_api::{Claim, JobState, NewJob, QueueStore, QueueStoreExt, Unique};
use pq_conformance::postgres::{database_url, fresh_schema};
use pq_diesel::DieselStore;
use pq_sqlx::SqlxStore;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};

mod support;

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
    // So do uniqueness keys, alone and with cursor keys.
    let unique = |n| NewJob::from_json("s", json!(n)).unique("u", Unique::For(HOUR));
    store.put_many(vec![unique(4)]).await.unwrap();
    let both = vec![unique(5), NewJob::from_json("s", json!(6)).cursor_key("c")];
    store.put_many(both).await.unwrap();
    store.purge("s").await.unwrap();
    store.key_state("s", "k").await.unwrap();
    store.finished(job.id()).await.unwrap_err();
    store.history("s", 10).await.unwrap();
    store.cleanup_history().await.unwrap();
    // Settings, a running job's progress and its cancellation, the listing and the prune.
    store.pause("t").await.unwrap();
    store
        .configure_queue("t", pq_api::QueueSetting::Concurrency(Some(2)))
        .await
        .unwrap();
    store.put("t", &json!(7)).await.unwrap();
    store.resume("t").await.unwrap();
    let running = store.claim(&Claim::new(["t"])).await.unwrap().remove(0);
    store.set_progress(&running.lease, json!(1)).await.unwrap();
    store.cancel(running.id()).await.unwrap();
    store.extend(&running.lease, HOUR).await.unwrap_err();
    store.queues().await.unwrap();
    store.prune().await.unwrap();
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
                .replace(&table.unique_lock().to_string(), "<unique_lock>")
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

    // The stores' upkeep (the statistics check after a claim) runs in tasks of their own: its
    // statements are recorded once those tasks are done.
    let mut from_sqlx = statements_of(&pool, &sqlx_table).await;
    let mut from_diesel = statements_of(&pool, &diesel_table).await;
    for _ in 0..100 {
        if from_sqlx == from_diesel {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        from_sqlx = statements_of(&pool, &sqlx_table).await;
        from_diesel = statements_of(&pool, &diesel_table).await;
    }
    assert!(
        from_sqlx.len() >= 17,
        "too few statements recorded: {from_sqlx:#?}"
    );
    let only_sqlx: Vec<_> = from_sqlx.difference(&from_diesel).collect();
    let only_diesel: Vec<_> = from_diesel.difference(&from_sqlx).collect();
    assert!(
        only_sqlx.is_empty() && only_diesel.is_empty(),
        "sent by sqlx alone: {only_sqlx:#?}\nsent by diesel alone: {only_diesel:#?}"
    );

    let claims: Vec<&String> = from_sqlx
        .iter()
        .filter(|q| {
            q.contains("FOR UPDATE OF j SKIP LOCKED")
                && q.contains("lease_token = (SELECT token FROM lease)")
        })
        .collect();
    // The claim without limits, and the one that keeps them (the scenario limits a queue).
    assert_eq!(claims.len(), 2, "{claims:#?}");
    assert_eq!(
        claims.iter().filter(|c| c.contains("_slots")).count(),
        1,
        "one keeps the limits: {claims:#?}"
    );
    for claim in claims {
        assert!(claim.starts_with("WITH lease AS"));
        assert!(
            !claim.trim_end().trim_end_matches(';').contains(';'),
            "one statement"
        );
    }
}

/// The plan of the claim's text, which both drivers send byte for byte
/// (`both_stores_send_byte_identical_sql_and_claim_is_one_skip_locked_statement`): checked
/// once, on the server.
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
    let statements = pq_api::postgres::Statements::new(store.table());
    // The claim has no parameters: its one plan, for its queues, must be served by the
    // indexes, in both of its forms.
    let queues = |q: &str| [q.to_string()];
    let lease = Duration::from_secs(60);
    for queue in ["big", "keyed"] {
        for sql in [
            statements.claim(&queues(queue), 10, lease),
            statements.claim_unlimited(&queues(queue), 10, lease, false),
        ] {
            let mut tx = store.pool().begin().await.unwrap();
            let plan: Vec<String> =
                sqlx::query_scalar(AssertSqlSafe(format!("EXPLAIN (ANALYZE, COSTS OFF) {sql}")))
                    .fetch_all(&mut *tx)
                    .await
                    .unwrap();
            tx.rollback().await.unwrap();
            let plan = plan.join("\n");
            assert!(plan.contains("Index Scan using pq_jobs_claim"), "{plan}");
            // No scan of the jobs table (the keys table may be scanned while it is tiny).
            assert!(!plan.contains("Seq Scan on pq_jobs "), "{plan}");
            if queue == "keyed" {
                assert!(plan.contains("Index Scan using pq_jobs_key on"), "{plan}");
            }
        }
    }
}

/// Claims `rounds` times in a transaction rolled back, on one connection of each store, and
/// returns, per driver, how often that connection planned the claim generically and for its
/// parameters; `between` runs on the store's table after the first `rounds / 2` rounds.
async fn claim_plans_on_one_connection(
    rounds: usize,
    fill: &[NewJob],
    between: Option<&str>,
) -> Vec<(support::Driver, i64, i64)> {
    use diesel_async::SimpleAsyncConnection;
    let admin = pool().await;
    let claim = Claim::new(["q"]).limit(16);
    let mut out = Vec::new();
    for driver in support::DRIVERS {
        let table = support::fresh_table("pq_jobs");
        let t = table.qualified();
        // The claim a queue without limits gets.
        let sql = pq_api::postgres::Statements::new(&table).claim_unlimited(
            &["q".to_string()],
            16,
            pq_api::DEFAULT_LEASE,
            true,
        );
        let between = between.map(|b| b.replace("{t}", &t));
        let (generic, custom) = match driver {
            support::Driver::Sqlx => {
                let store = support::sqlx_store(&table, 2).await;
                if !fill.is_empty() {
                    store.put_many(fill.to_vec()).await.unwrap();
                }
                exec_sql(&admin, format!("ANALYZE {t}")).await;
                let mut conn = store.pool().acquire().await.unwrap();
                for round in 0..rounds {
                    if round == rounds / 2 {
                        if let Some(b) = &between {
                            exec_sql(&admin, b.clone()).await;
                        }
                    }
                    let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
                    store.claim_in(&mut tx, &claim).await.unwrap();
                    tx.rollback().await.unwrap();
                }
                sqlx::query_as(
                    "SELECT generic_plans, custom_plans FROM pg_prepared_statements \
                     WHERE statement = $1",
                )
                .bind(&sql)
                .fetch_one(&mut *conn)
                .await
                .unwrap()
            }
            support::Driver::Diesel => {
                let url = database_url().await;
                let diesel_pool = DieselStore::pool(&url, 1).unwrap();
                let store = DieselStore::with_table(diesel_pool.clone(), table.clone())
                    .await
                    .unwrap();
                if !fill.is_empty() {
                    store.put_many(fill.to_vec()).await.unwrap();
                }
                exec_sql(&admin, format!("ANALYZE {t}")).await;
                let mut conn = diesel_pool.get().await.unwrap();
                for round in 0..rounds {
                    if round == rounds / 2 {
                        if let Some(b) = &between {
                            exec_sql(&admin, b.clone()).await;
                        }
                    }
                    conn.batch_execute("BEGIN").await.unwrap();
                    store.claim_in(&mut conn, &claim).await.unwrap();
                    conn.batch_execute("ROLLBACK").await.unwrap();
                }
                drop(conn);
                let counts = diesel_plan_counts(&diesel_pool, &sql).await;
                (counts[0].generic_plans, counts[0].custom_plans)
            }
        };
        out.push((driver, generic, custom));
    }
    out
}

async fn exec_sql(pool: &PgPool, sql: String) {
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_connection_stops_planning_the_claim_after_its_first_executions() {
    let fill: Vec<NewJob> = (0..1000)
        .map(|n| NewJob::new("q", &json!(n)).unwrap())
        .collect();
    for (driver, generic, custom) in claim_plans_on_one_connection(12, &fill, None).await {
        // Without parameters, PostgreSQL makes one plan and keeps it.
        assert!(
            custom == 0 && generic == 12,
            "{driver:?}: generic {generic}, custom {custom}"
        );
    }
}

/// A claim prepared on a connection while its queue was empty is not planned again for each
/// execution once a backlog has grown. (With its parameters bound, PostgreSQL compared the
/// backlog's plan with the cheap plans it had made for the empty table and planned every
/// claim afresh, as long as running it.)
#[tokio::test]
async fn a_connection_does_not_plan_the_claim_again_once_a_backlog_has_grown() {
    let backlog = "INSERT INTO {t} (queue, payload) \
                   SELECT 'q', '{}'::jsonb FROM generate_series(1, 20000); ANALYZE {t};";
    for (driver, generic, custom) in claim_plans_on_one_connection(16, &[], Some(backlog)).await {
        assert_eq!(
            (generic, custom),
            (16, 0),
            "{driver:?}: claims planned afresh once the backlog grew"
        );
    }
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
    let own = sql.claim_unlimited(&["q".to_string()], 1, pq_api::DEFAULT_LEASE, false);
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
    let own = pq_api::postgres::Statements::new(&diesel_table).claim_unlimited(
        &["q".to_string()],
        1,
        pq_api::DEFAULT_LEASE,
        false,
    );
    assert_eq!(diesel_plan_counts(&diesel_pool, &own).await.len(), 1);

    // That text really turns synchronous_commit off for its transaction: run inside an
    // explicit one that set it on, the setting shows. (Set explicitly: the test server may
    // run with it off.)
    let other = self::pool().await;
    let queues = ["q".to_string()];
    let lease = Duration::from_secs(30);
    for text in [
        sql.claim(&queues, 1, lease),
        sql.claim_unlimited(&queues, 1, lease, false),
    ] {
        let mut tx = other.begin().await.unwrap();
        sync_commit_on(&mut tx).await;
        let rows = sqlx::query(AssertSqlSafe(text))
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(sync_commit(&mut tx).await, "off");
        tx.rollback().await.unwrap();
    }

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

#[allow(dead_code)] // here only the rows are counted: one per connection that prepared the text
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

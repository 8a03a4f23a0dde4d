//! The jobs table split into rotating partitions (`partition`): the split keeps every job, a
//! drained partition is emptied while a snapshot is held elsewhere, jobs left behind are moved
//! rather than lost, and cursor keys keep one pending job per key across rotations.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a test's verdict

mod support;

use std::sync::Arc;

use pq_api::postgres::{migrations, MigrationStatements, QueueTable};
use pq_api::{Claim, Done, Failure, JobState, NewJob, QueueStore, QueueStoreExt};
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};
use support::{exec, pool, DRIVERS};

/// A store of each driver on a fresh table, split into partitions.
async fn partitioned_stores() -> Vec<(support::Driver, Arc<dyn QueueStore>, QueueTable)> {
    let mut out = Vec::new();
    for driver in DRIVERS {
        let table = support::fresh_table("jobs");
        assert!(support::sqlx_store(&table, 2)
            .await
            .partition()
            .await
            .unwrap());
        out.push((driver, driver.open(&table, 4).await, table));
    }
    out
}

/// A connection whose transaction holds a snapshot (a report over other tables, left open),
/// which keeps VACUUM from removing any row version left after it was taken.
async fn hold_snapshot() -> PgConnection {
    let url = pq_conformance::postgres::database_url().await;
    let mut held = PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut held)
        .await
        .unwrap();
    sqlx::query("SELECT count(*) FROM pg_class")
        .execute(&mut held)
        .await
        .unwrap();
    held
}

fn object(table: &QueueTable, suffix: &str) -> String {
    format!("\"{}\".\"{}_{suffix}\"", table.schema(), table.table())
}

/// Takes one rotation step with every partition counted as full.
async fn rotate(admin: &PgPool, table: &QueueTable) {
    exec(admin, format!("SELECT {}(0)", object(table, "rotate"))).await;
}

/// Takes rotation steps until `part` is empty: a step only tries for a partition's lock, and
/// leaves one that a vacuum (autovacuum's, on a drained partition) holds to a later step.
async fn rotate_until_emptied(admin: &PgPool, table: &QueueTable, part: &str) {
    for _ in 0..200 {
        rotate(admin, table).await;
        if size(admin, table, part).await == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{part} of {} was never emptied", table.qualified());
}

async fn current(admin: &PgPool, table: &QueueTable) -> i16 {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT current FROM {}",
        object(table, "rotation")
    )))
    .fetch_one(admin)
    .await
    .unwrap()
}

async fn part_of(admin: &PgPool, table: &QueueTable, id: i64) -> i16 {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT part FROM {} WHERE id = $1",
        table.qualified()
    )))
    .bind(id)
    .fetch_one(admin)
    .await
    .unwrap()
}

async fn size(admin: &PgPool, table: &QueueTable, part: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT pg_relation_size('{}'::regclass)",
        object(table, part)
    )))
    .fetch_one(admin)
    .await
    .unwrap()
}

fn job(queue: &str) -> NewJob {
    NewJob::new(queue, &serde_json::json!({"task": "probe", "args": {}})).unwrap()
}

/// Every row of the jobs table, as JSON, without its partition.
async fn rows(admin: &PgPool, table: &QueueTable) -> Vec<serde_json::Value> {
    let text: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT (to_jsonb(t) - 'part')::text FROM {} AS t ORDER BY id",
        table.qualified()
    )))
    .fetch_all(admin)
    .await
    .unwrap();
    text.iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .collect()
}

/// A table at migration 10 holding a job in every state, migrated by a store, then split:
/// every row comes through each step unchanged, the cursor-keyed one in the partition of
/// cursor keys, the rest in the first; the jobs go on as before (the running one completed
/// under its lease, the cursor key folding a put into its pending job), and new ids follow the
/// old ones.
#[tokio::test]
async fn splitting_into_partitions_keeps_every_job_in_every_state() {
    let admin = pool(2).await;
    for driver in DRIVERS {
        let table = support::fresh_table("jobs");
        let m = MigrationStatements::new(&table);
        exec(&admin, m.prepare.clone()).await;
        let registry = object(&table, "migrations");
        for step in migrations(&table).into_iter().filter(|s| s.version <= 10) {
            exec(&admin, step.sql).await;
            exec(
                &admin,
                format!(
                    "INSERT INTO {registry} (version, description) VALUES ({}, '{}')",
                    step.version,
                    step.description.replace('\'', "''")
                ),
            )
            .await;
        }
        let (t, keys) = (table.qualified(), object(&table, "keys"));
        let p = r#"'{"task":"probe","args":{}}'"#;
        exec(
            &admin,
            format!(
                "INSERT INTO {t} (queue, payload) VALUES ('q', {p});
                 INSERT INTO {t} (queue, payload, run_at) VALUES ('q', {p}, now() + interval '1 day');
                 INSERT INTO {t} (queue, payload, state, attempts, lease_token, run_at)
                   VALUES ('q', {p}, 'running', 1, 42, now() + interval '1 hour');
                 INSERT INTO {t} (queue, payload, state, attempts, max_attempts, last_error)
                   VALUES ('q', {p}, 'failed', 3, 3, 'boom');
                 INSERT INTO {t} (queue, payload, key, cursor) VALUES ('q', {p}, 'c', true);
                 INSERT INTO {t} (queue, payload, key, priority) VALUES ('q', {p}, 'k', 5);
                 INSERT INTO {t} (queue, payload, unique_key, unique_scope) VALUES ('q', {p}, 'u', -2);
                 INSERT INTO {t} (queue, payload, state, attempts, lease_token, run_at, cancelled_at)
                   VALUES ('q', {p}, 'running', 1, 43, now() + interval '1 hour', now());
                 INSERT INTO {keys} (queue, key) VALUES ('q', 'c'), ('q', 'k');"
            ),
        )
        .await;
        let before = rows(&admin, &table).await;
        let ids: Vec<i64> = before.iter().map(|r| r["id"].as_i64().unwrap()).collect();

        // Migration 11, then the split.
        let sqlx = support::sqlx_store(&table, 2).await;
        assert_eq!(
            rows(&admin, &table).await,
            before,
            "{driver:?}: every row kept"
        );
        assert!(sqlx.partition().await.unwrap(), "{driver:?}");
        assert!(!sqlx.partition().await.unwrap(), "{driver:?}: split once");
        let store = driver.open(&table, 4).await;
        assert_eq!(
            rows(&admin, &table).await,
            before,
            "{driver:?}: every row kept"
        );
        for (n, id) in ids.iter().enumerate() {
            let want = if n == 4 { -1 } else { 0 };
            assert_eq!(
                part_of(&admin, &table, *id).await,
                want,
                "{driver:?}: job {n}"
            );
        }
        let kind: String = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT relkind::text FROM pg_class WHERE oid = '{t}'::regclass"
        )))
        .fetch_one(&admin)
        .await
        .unwrap();
        assert_eq!(kind, "p", "{driver:?}: the table is partitioned");

        let running = pq_api::Lease {
            job_id: pq_api::JobId(ids[2]),
            token: 42,
        };
        assert_eq!(
            store.complete_many(&[Done::from(running)]).await.unwrap(),
            [running.job_id],
            "{driver:?}: the running job completes under its lease"
        );
        let failed = store.job(pq_api::JobId(ids[3])).await.unwrap();
        assert_eq!(failed.state, JobState::Failed);
        let folded = store.put_job(job("q").cursor_key("c")).await.unwrap();
        assert_eq!(folded.0, ids[4], "{driver:?}: the cursor key's pending job");
        let new = store.put_job(job("q")).await.unwrap();
        assert!(new.0 > *ids.iter().max().unwrap(), "{driver:?}: ids go on");
        let claimed = store
            .claim(&Claim::new(["q"]).limit(10))
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.job.id.0)
            .collect::<Vec<_>>();
        for (n, id) in [(0, ids[0]), (4, ids[4]), (5, ids[5]), (6, ids[6])] {
            assert!(claimed.contains(&id), "{driver:?}: job {n} claimable");
        }
        assert!(!claimed.contains(&ids[1]), "{driver:?}: still scheduled");
    }
}

/// With a snapshot held on another connection (which keeps VACUUM from removing anything),
/// a partition whose jobs all completed is emptied by the next rotation step, and the puts
/// that came after it, in the next partition, are untouched.
#[tokio::test]
async fn a_drained_partition_is_emptied_while_a_snapshot_is_held() {
    let admin = pool(2).await;
    for (driver, store, table) in partitioned_stores().await {
        let mut held = hold_snapshot().await;

        let first = store
            .put_many((0..300).map(|_| job("q")).collect())
            .await
            .unwrap();
        rotate(&admin, &table).await;
        assert_eq!(current(&admin, &table).await, 1, "{driver:?}");
        let second = store
            .put_many((0..50).map(|_| job("q")).collect())
            .await
            .unwrap();
        assert_eq!(part_of(&admin, &table, first[0].0).await, 0);
        assert_eq!(part_of(&admin, &table, second[0].0).await, 1);

        let mut done = 0;
        while done < first.len() {
            let claimed = store.claim(&Claim::new(["q"]).limit(100)).await.unwrap();
            let leases: Vec<Done> = claimed
                .iter()
                .filter(|c| first.contains(&c.job.id))
                .map(|c| c.lease.into())
                .collect();
            done += store.complete_many(&leases).await.unwrap().len();
        }
        assert!(size(&admin, &table, "part_0").await > 0, "{driver:?}");
        // Emptied under the held snapshot.
        rotate_until_emptied(&admin, &table, "part_0").await;
        for id in &second {
            let state = store.job(*id).await.unwrap().state;
            assert!(
                matches!(state, JobState::Running | JobState::Ready),
                "{driver:?}"
            );
        }
        sqlx::query("ROLLBACK").execute(&mut held).await.unwrap();
    }
}

/// Jobs left in the partition that is to become current (one scheduled a day ahead, one
/// failed) are moved into the current one, where they go on as they were; a running job
/// stays where it is and completes under its lease; the partition is then emptied, and made
/// current.
#[tokio::test]
async fn jobs_left_behind_are_moved_and_the_partition_emptied() {
    let admin = pool(2).await;
    for (driver, store, table) in partitioned_stores().await {
        let scheduled = store.put_job(job("q").delay("24h").unwrap()).await.unwrap();
        let failed = store.put_job(job("q").max_attempts(1)).await.unwrap();
        store.put_job(job("q")).await.unwrap();
        let claimed = store.claim(&Claim::new(["q"]).limit(2)).await.unwrap();
        assert_eq!(claimed.len(), 2, "{driver:?}");
        let (to_fail, running) = if claimed[0].job.id == failed {
            (&claimed[0], &claimed[1])
        } else {
            (&claimed[1], &claimed[0])
        };
        store
            .fail(&to_fail.lease, Failure::new("boom").give_up())
            .await
            .unwrap();
        rotate(&admin, &table).await;
        assert_eq!(current(&admin, &table).await, 1, "{driver:?}");
        // Partition 0, next after 1, still holds the three jobs: the two not running move.
        rotate(&admin, &table).await;
        assert_eq!(current(&admin, &table).await, 1, "{driver:?}: not yet");
        assert_eq!(part_of(&admin, &table, scheduled.0).await, 1, "{driver:?}");
        assert_eq!(part_of(&admin, &table, failed.0).await, 1, "{driver:?}");
        assert_eq!(part_of(&admin, &table, running.job.id.0).await, 0);
        assert_eq!(
            store.job(scheduled).await.unwrap().state,
            JobState::Scheduled
        );
        assert_eq!(store.job(failed).await.unwrap().state, JobState::Failed);
        assert_eq!(
            store.complete_many(&[running.lease.into()]).await.unwrap(),
            [running.job.id],
            "{driver:?}"
        );
        // Emptied, and current in the same step.
        rotate_until_emptied(&admin, &table, "part_0").await;
        assert_eq!(current(&admin, &table).await, 0, "{driver:?}");
    }
}

/// A cursor key keeps one pending job across rotations: every cursor-keyed job is in the one
/// partition its index covers, and a plain `INSERT` of one elsewhere is refused.
#[tokio::test]
async fn a_cursor_key_keeps_one_pending_job_across_rotations() {
    let admin = pool(2).await;
    for (driver, store, table) in partitioned_stores().await {
        let cursor = || job("q").cursor_key("c");
        let first = store.put_job(cursor()).await.unwrap();
        for _ in 0..2 {
            rotate(&admin, &table).await;
        }
        assert_eq!(store.put_job(cursor()).await.unwrap(), first, "{driver:?}");
        assert_eq!(part_of(&admin, &table, first.0).await, -1);
        let refused = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} (queue, payload, key, cursor) \
             VALUES ('q', '{{}}', 'd', true)",
            table.qualified()
        )))
        .execute(&admin)
        .await;
        assert!(refused.is_err(), "{driver:?}: {refused:?}");
    }
}

/// The store's own upkeep rotates: with a snapshot held, jobs put and worked through in
/// batches move the current partition on once it is full, and the drained one is emptied, with
/// no rotation step taken by hand.
#[tokio::test]
async fn the_stores_upkeep_rotates_and_empties_partitions_as_jobs_go_through() {
    let admin = pool(2).await;
    for driver in DRIVERS {
        let table = support::fresh_table("jobs");
        let sqlx = support::sqlx_store(&table, 4).await.rotate_every(500);
        assert!(sqlx.partition().await.unwrap());
        let store: Arc<dyn QueueStore> = match driver {
            support::Driver::Sqlx => Arc::new(sqlx),
            support::Driver::Diesel => Arc::new(
                pq_diesel::DieselStore::with_table(
                    pq_diesel::DieselStore::pool(
                        &pq_conformance::postgres::database_url().await,
                        4,
                    )
                    .unwrap(),
                    table.clone(),
                )
                .await
                .unwrap()
                .rotate_every(500),
            ),
        };
        let mut held = hold_snapshot().await;
        let mut rotated = false;
        for _ in 0..40 {
            store
                .put_many((0..1000).map(|_| job("q")).collect())
                .await
                .unwrap();
            loop {
                let claimed = store.claim(&Claim::new(["q"]).limit(250)).await.unwrap();
                if claimed.is_empty() {
                    break;
                }
                let leases: Vec<Done> = claimed.iter().map(|c| c.lease.into()).collect();
                store.complete_many(&leases).await.unwrap();
            }
            if current(&admin, &table).await == 1 && size(&admin, &table, "part_0").await == 0 {
                rotated = true;
                break;
            }
            // The steps run in tasks of their own.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(
            rotated,
            "{driver:?}: rotated, the drained partition emptied"
        );
        sqlx::query("ROLLBACK").execute(&mut held).await.unwrap();
    }
}

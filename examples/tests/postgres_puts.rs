//! Single puts sent together (a group commit), on both SQL stores: concurrent callers ride one
//! statement, each gets its own job's id, and a job the server refuses fails only its caller.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a test's verdict

use std::sync::Arc;

use pq_api::postgres::QueueTable;
use pq_api::{JobId, NewJob, QueueStore, QueueStoreExt};
use serde_json::json;
use sqlx::{AssertSqlSafe, PgPool};

mod support;

async fn pool() -> PgPool {
    support::pool(8).await
}

/// A store of each driver, each on a fresh schema.
async fn stores() -> Vec<(Arc<dyn QueueStore>, QueueTable)> {
    let stores = support::stores(8).await;
    stores.into_iter().map(|(_, s, t)| (s, t)).collect()
}

/// Puts `jobs` at once, one `put_job` call each from its own task; the answers in order.
async fn put_at_once(store: &Arc<dyn QueueStore>, jobs: Vec<NewJob>) -> Vec<pq_api::Result<JobId>> {
    let calls: Vec<_> = jobs
        .into_iter()
        .map(|job| {
            let store = store.clone();
            tokio::spawn(async move { store.put_job(job).await })
        })
        .collect();
    let mut answers = Vec::new();
    for c in calls {
        answers.push(c.await.unwrap());
    }
    answers
}

/// How many transactions wrote the rows of `table`.
async fn writers(pool: &PgPool, table: &QueueTable) -> i64 {
    let sql = format!(
        "SELECT count(DISTINCT xmin::text) FROM {}",
        table.qualified()
    );
    sqlx::query_scalar(AssertSqlSafe(sql))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn concurrent_single_puts_share_commits_and_each_gets_its_own_id() {
    let check = pool().await;
    for (store, table) in stores().await {
        let n = 32;
        let jobs = (0..n)
            .map(|i| NewJob::from_json("q", json!({ "n": i })).serial_key(format!("k{}", i % 4)))
            .collect();
        let ids: Vec<JobId> = put_at_once(&store, jobs)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(store.job(*id).await.unwrap().payload["n"], json!(i));
        }
        let mut distinct = ids.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), n);
        let commits = writers(&check, &table).await;
        assert!(
            commits < i64::try_from(n / 2).unwrap(),
            "{n} concurrent puts took {commits} transactions"
        );
    }
}

#[tokio::test]
async fn a_job_the_server_refuses_fails_only_its_own_put() {
    let admin = pool().await;
    for (store, table) in stores().await {
        // A trigger of the test's refuses one job: nothing before the server knows of it.
        let refuse = format!(
            "CREATE OR REPLACE FUNCTION public.pq_test_refuse_marked() RETURNS trigger \
               LANGUAGE plpgsql AS $$BEGIN \
                 IF NEW.payload ? 'refuse' THEN RAISE EXCEPTION 'refused by the server'; END IF; \
                 RETURN NEW; END$$; \
             CREATE TRIGGER refuse_marked BEFORE INSERT ON {} \
               FOR EACH ROW EXECUTE FUNCTION public.pq_test_refuse_marked();",
            table.qualified()
        );
        sqlx::raw_sql(AssertSqlSafe(refuse))
            .execute(&admin)
            .await
            .unwrap();
        let bad = 5;
        let jobs = (0..12)
            .map(|i| {
                let payload = if i == bad {
                    json!({ "refuse": true })
                } else {
                    json!({ "n": i })
                };
                NewJob::from_json("q", payload)
            })
            .collect();
        let answers = put_at_once(&store, jobs).await;
        for (i, answer) in answers.into_iter().enumerate() {
            if i == bad {
                // The server's word on this job, not retryable.
                let e = answer.unwrap_err();
                assert!(!e.is_retryable(), "{e:?}");
                assert!(format!("{e:?}").contains("refused by the server"), "{e:?}");
            } else {
                let id = answer.unwrap();
                assert_eq!(store.job(id).await.unwrap().payload["n"], json!(i));
            }
        }
        assert_eq!(store.stats("q").await.unwrap().ready, 11);
    }
}

//! `pq`: look into pq's PostgreSQL queues and steer them from a shell, and serve their
//! dashboard (`pq serve`). Everything goes through the public `QueueStore` API, so it works on
//! any schema and table a store was given (`--schema`, `--table`).
//!
//! Exit status: 0 on success, 1 when a command fails or `pq health` finds a queue stuck, 2 on
//! a usage error.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use pq_api::postgres::{schema_ddl, QueueTable};
use pq_api::{Error, JobFilter, JobId, JobState, QueueStore, QueueStoreExt};
use pq_sqlx::SqlxStore;

mod dashboard;
mod show;

/// Inspect and steer pq's job queues in PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "pq", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    db: Database,
    #[command(subcommand)]
    command: Command,
}

/// Where the queue table is.
#[derive(Debug, Args)]
struct Database {
    /// The database, as a postgres:// URL.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// The schema of the queue table.
    #[arg(long, default_value = "public", global = true)]
    schema: String,
    /// The queue table's name.
    #[arg(long, default_value = "pq_jobs", global = true)]
    table: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the queue table, or bring it up to date.
    Migrate,
    /// Split the queue table into rotating partitions, each emptied once drained, so that a
    /// transaction holding a snapshot elsewhere cannot slow claims (costs the worker about a
    /// quarter of its rate otherwise). Once; migrates first.
    Partition,
    /// Print the SQL that creates the queue table, for your own migration tool.
    Ddl,
    /// Every queue: its jobs counted by state, its oldest ready job's wait, its settings.
    Queues {
        /// Print JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// List jobs, newest first.
    Jobs {
        /// Only jobs of this queue.
        #[arg(long, short)]
        queue: Option<String>,
        /// Only jobs in this state.
        #[arg(long, short, value_parser = parse_state)]
        state: Option<JobState>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only jobs older than this id (the next page).
        #[arg(long)]
        before: Option<i64>,
        /// Print JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Show one job: payload, attempts, lease, last error; or its record once completed.
    Show {
        /// The job's id.
        id: i64,
        /// Print JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Give failed jobs a fresh start.
    Retry {
        /// The jobs' ids.
        #[arg(required = true)]
        ids: Vec<i64>,
    },
    /// Cancel jobs: waiting and failed ones are removed, running ones stopped.
    Cancel {
        /// The jobs' ids.
        #[arg(required = true)]
        ids: Vec<i64>,
    },
    /// Remove every job of a queue, running ones included.
    Purge {
        /// The queue.
        queue: String,
        /// Confirm: without it nothing is removed.
        #[arg(long)]
        yes: bool,
    },
    /// Pause a queue: its jobs are not claimed until it is resumed; running ones finish.
    Pause {
        /// The queue.
        queue: String,
    },
    /// Resume a paused queue.
    Resume {
        /// The queue.
        queue: String,
    },
    /// Check that no queue is stuck: exit 1 when a queue's oldest ready job has waited longer
    /// than --max-wait (no worker keeps up), 0 otherwise. Needs no worker running.
    Health {
        /// The longest a ready job may wait, as "30s", "5m" or "1h".
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        max_wait: Duration,
        /// Only these queues (default: every queue).
        #[arg(long, short)]
        queue: Vec<String>,
        /// Print JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Serve the web dashboard.
    Serve {
        /// The address to listen on; port 0 picks a free one.
        #[arg(long, default_value = "127.0.0.1:8080")]
        bind: String,
        /// Allow actions (pause, resume, retry, cancel); read-only without it.
        #[arg(long)]
        allow_actions: bool,
        /// How often the overview's chart samples the queues.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        sample_every: Duration,
    },
}

fn parse_state(s: &str) -> Result<JobState, String> {
    JobState::parse(s)
        .ok_or_else(|| format!("not a state: {s} (scheduled, ready, running, failed, cancelled)"))
}

/// A command's failure, said to the user as it is.
#[derive(Debug)]
struct Failed(String);

impl From<Error> for Failed {
    fn from(e: Error) -> Self {
        Failed(match e {
            Error::Schema(why) => {
                format!("the queue table is not up to date ({why}): run `pq migrate`")
            }
            Error::Unavailable(why) => format!("the database is unavailable: {why}"),
            e => e.to_string(),
        })
    }
}

type Outcome = Result<ExitCode, Failed>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(Failed(format!("cannot start: {e}"))),
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => fail(e),
    }
}

fn fail(e: Failed) -> ExitCode {
    eprintln!("pq: {}", e.0);
    ExitCode::FAILURE
}

async fn run(cli: Cli) -> Outcome {
    let table = QueueTable::new(&cli.db.schema, &cli.db.table)?;
    if let Command::Ddl = cli.command {
        print!("{}", schema_ddl(&table));
        return Ok(ExitCode::SUCCESS);
    }
    let migrating = matches!(cli.command, Command::Migrate | Command::Partition);
    let store = connect(&cli.db, table, migrating).await?;
    match cli.command {
        Command::Ddl => Ok(ExitCode::SUCCESS),
        Command::Migrate => {
            store.migrate().await?;
            println!("{} is up to date", store.table().qualified());
            Ok(ExitCode::SUCCESS)
        }
        Command::Partition => {
            let done = if store.partition().await? {
                "is split into partitions"
            } else {
                "was split into partitions already"
            };
            println!("{} {done}", store.table().qualified());
            Ok(ExitCode::SUCCESS)
        }
        Command::Queues { json } => {
            let queues = store.queues().await?;
            if json {
                let rows: Vec<_> = queues.iter().map(show::queue_json).collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                print!("{}", show::queue_table(&queues));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Jobs {
            queue,
            state,
            limit,
            before,
            json,
        } => {
            let mut filter = JobFilter::new().limit(limit);
            filter.queue = queue;
            filter.state = state;
            filter.before = before.map(JobId);
            let jobs = store.list_jobs(&filter).await?;
            if json {
                let rows: Vec<_> = jobs.iter().map(show::job_json).collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                print!("{}", show::job_table(&jobs));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { id, json } => {
            let id = JobId(id);
            let text = match store.job(id).await {
                Ok(job) if json => show::job_json(&job).to_string(),
                Ok(job) => show::job_text(&job),
                Err(Error::NotFound(_)) => match store.finished(id).await {
                    Ok(done) if json => show::finished_json(&done).to_string(),
                    Ok(done) => show::finished_text(&done),
                    Err(Error::NotFound(_)) => {
                        return Err(Failed(format!(
                            "no job {}: it never existed, or it completed or was removed \
                             without a history record",
                            id.0
                        )))
                    }
                    Err(e) => return Err(e.into()),
                },
                Err(e) => return Err(e.into()),
            };
            println!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Retry { ids } => each_job(&ids, "retried", |id| store.retry(id)).await,
        Command::Cancel { ids } => each_job(&ids, "cancelled", |id| store.cancel(id)).await,
        Command::Purge { queue, yes } => {
            if !yes {
                return Err(Failed(format!(
                    "purge removes every job of {queue:?}, running ones included: \
                     add --yes to go ahead"
                )));
            }
            pq_api::validate::validate_queue_name(&queue)?;
            let n = store.purge(&queue).await?;
            println!("removed {n} jobs of {queue}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Pause { queue } => {
            store.pause(&queue).await?;
            println!("paused {queue}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Resume { queue } => {
            store.resume(&queue).await?;
            println!("resumed {queue}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Health {
            max_wait,
            queue,
            json,
        } => {
            let queues = store.queues().await?;
            let report = show::health(&queues, &queue, max_wait);
            if json {
                println!("{}", report.json());
            } else {
                print!("{}", report.text());
            }
            Ok(if report.healthy() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Serve {
            bind,
            allow_actions,
            sample_every,
        } => {
            let store: Arc<dyn QueueStore> = Arc::new(store);
            dashboard::serve(store, &bind, allow_actions, sample_every).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs `action` on each id, saying what became of each; fails if any failed.
async fn each_job<F, Fut>(ids: &[i64], done: &str, action: F) -> Outcome
where
    F: Fn(JobId) -> Fut,
    Fut: std::future::Future<Output = pq_api::Result<()>>,
{
    let mut failed = 0;
    for &id in ids {
        match action(JobId(id)).await {
            Ok(()) => println!("{done} {id}"),
            Err(Error::NotFound(_)) => {
                failed += 1;
                eprintln!("pq: no job {id}");
            }
            Err(e) => {
                failed += 1;
                eprintln!("pq: job {id}: {}", Failed::from(e).0);
            }
        }
    }
    if failed > 0 {
        return Err(Failed(format!("{failed} of {} jobs not {done}", ids.len())));
    }
    Ok(ExitCode::SUCCESS)
}

/// Connects to the database and checks that the queue table is there (unless `migrating`).
async fn connect(db: &Database, table: QueueTable, migrating: bool) -> Result<SqlxStore, Failed> {
    let Some(url) = db.database_url.as_deref() else {
        return Err(Failed(
            "no database given: pass --database-url or set DATABASE_URL".into(),
        ));
    };
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| Failed(format!("cannot connect to the database: {e}")))?;
    if !migrating {
        let found: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(table.qualified())
            .fetch_one(&pool)
            .await
            .map_err(|e| Failed(format!("cannot read the database: {e}")))?;
        if found.is_none() {
            return Err(Failed(format!(
                "there is no queue table {} in this database: create it with `pq migrate` \
                 (or print its SQL with `pq ddl`); --schema and --table name another",
                table.qualified()
            )));
        }
    }
    Ok(SqlxStore::without_migrating(pool, table))
}

//! The diesel-async [`Driver`]: runs the store's statements on a deadpool pool of
//! [`AsyncPgConnection`]s and converts their rows.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Bool, Integer, Nullable, Text, Timestamptz};
use diesel_async::pooled_connection::deadpool::Object;
use diesel_async::{
    AnsiTransactionManager, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection,
    TransactionManager,
};
use futures_util::StreamExt;
use pq_api::postgres::driver::{Cell, Driver, EachRow, Inserted, Kind, Note, Param};
use pq_api::postgres::{pg_time, FinishedRow, JobRow};
use pq_api::{Error, Result};

use crate::prepared::prepared;
use crate::{map_err, pool_err, PgPool};

/// The diesel-async driver of [`PgStore`](pq_api::postgres::PgStore), a handle on the pool:
/// named only in types such as [`Transactional`](crate::Transactional).
#[derive(Clone)]
pub struct Diesel(pub(crate) PgPool);

impl std::fmt::Debug for Diesel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Diesel").finish_non_exhaustive()
    }
}

/// A `timestamptz` that never fails a whole result: a value chrono cannot hold
/// (`'infinity'`) decodes to `None`, and only the row that holds it fails.
#[derive(Debug, Clone, Copy, diesel::deserialize::FromSqlRow)]
struct Time(Option<DateTime<Utc>>);

impl diesel::deserialize::FromSql<Timestamptz, diesel::pg::Pg> for Time {
    fn from_sql(bytes: diesel::pg::PgValue<'_>) -> diesel::deserialize::Result<Self> {
        let micros =
            <i64 as diesel::deserialize::FromSql<BigInt, diesel::pg::Pg>>::from_sql(bytes)?;
        Ok(Time(pg_time(micros)))
    }
}

impl Time {
    fn get(self, column: &str) -> Result<DateTime<Utc>> {
        self.0
            .ok_or_else(|| Error::BadValue(format!("{column} is out of range (infinite?)")))
    }
}

/// The SQL types of a job row's first fifteen columns, in column order (see [`Row`]).
type HeadSql = (
    BigInt,
    Text,
    Text,
    Integer,
    Nullable<Timestamptz>,
    Timestamptz,
    Text,
    Integer,
    Integer,
    Nullable<Text>,
    Timestamptz,
    Nullable<BigInt>,
    Nullable<Text>,
    Bool,
    Nullable<BigInt>,
);

/// The SQL types of a job row: two tuples, since diesel decodes tuples of at most sixteen.
type RowSql = (
    HeadSql,
    (
        Nullable<BigInt>,
        Nullable<Text>,
        Nullable<BigInt>,
        Nullable<Text>,
        Nullable<Text>,
    ),
);

/// A job row, decoded by position (the statements' column order): a claim decodes its 20
/// columns of each of its rows, and finding each by its name took about a tenth of the
/// worker's client time. Its last five columns are `timeout`, `unique_key`, `unique_scope`,
/// `progress` and `key_state`.
type Row = (
    (
        i64,
        String,
        String,
        i32,
        Option<Time>,
        Time,
        String,
        i32,
        i32,
        Option<String>,
        Time,
        Option<i64>,
        Option<String>,
        bool,
        Option<i64>,
    ),
    (
        Option<i64>,
        Option<String>,
        Option<i64>,
        Option<String>,
        Option<String>,
    ),
);

/// The row as the store takes it; a time out of chrono's range fails this row alone.
fn job_row(r: Row) -> Result<JobRow<'static>> {
    let (head, (timeout, unique_key, unique_scope, progress, key_state)) = r;
    let (id, queue, payload, priority, expected_at, run_at, state, attempts, max_attempts) = (
        head.0, head.1, head.2, head.3, head.4, head.5, head.6, head.7, head.8,
    );
    let (last_error, created_at, lease_token, key, cursor, keep_for) =
        (head.9, head.10, head.11, head.12, head.13, head.14);
    Ok(JobRow {
        id,
        queue,
        payload: payload.into(),
        priority,
        expected_at: expected_at.map(|t| t.get("expected_at")).transpose()?,
        run_at: run_at.get("run_at")?,
        state: state.into(),
        attempts,
        max_attempts,
        last_error,
        created_at: created_at.get("created_at")?,
        lease_token,
        key,
        cursor,
        keep_for,
        timeout,
        unique_key,
        unique_scope,
        progress,
        key_state,
    })
}

/// The SQL types of a history row, in column order.
type HistorySql = (
    BigInt,
    Text,
    Text,
    Nullable<Text>,
    Bool,
    Integer,
    Integer,
    Nullable<Text>,
    Timestamptz,
    Timestamptz,
    Timestamptz,
);

/// A history row, decoded by position.
type HistoryRow = (
    i64,
    String,
    String,
    Option<String>,
    bool,
    i32,
    i32,
    Option<String>,
    Time,
    Time,
    Time,
);

fn finished_row(r: HistoryRow) -> Result<FinishedRow> {
    let (id, queue, payload, key, cursor, priority, attempts, result, created, finished, until) = r;
    Ok(FinishedRow {
        id,
        queue,
        payload,
        key,
        cursor,
        priority,
        attempts,
        result,
        created_at: created.get("created_at")?,
        finished_at: finished.get("finished_at")?,
        keep_until: until.get("keep_until")?,
    })
}

impl Driver for Diesel {
    type Conn = AsyncPgConnection;
    type Pooled = Object<AsyncPgConnection>;
    /// Dropped unfinished, the connection is left in a transaction, which the pool then
    /// discards rather than lend again.
    type Tx = Object<AsyncPgConnection>;

    async fn acquire(&self) -> Result<Self::Pooled> {
        self.0.get().await.map_err(pool_err)
    }

    fn pool_size(&self) -> usize {
        self.0.status().max_size
    }

    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    async fn batch(conn: &mut AsyncPgConnection, sql: &str) -> Result<()> {
        conn.batch_execute(sql).await.map_err(map_err)
    }

    async fn execute(
        conn: &mut AsyncPgConnection,
        sql: &Arc<str>,
        params: &[Param<'_>],
    ) -> Result<()> {
        let ran = prepared::<()>(sql, params).execute(conn).await;
        ran.map(drop).map_err(map_err)
    }

    async fn column(
        conn: &mut AsyncPgConnection,
        sql: &Arc<str>,
        params: &[Param<'_>],
        kind: Kind,
    ) -> Result<Vec<Cell>> {
        /// Loads the one column as SQL type `$st` into `$rust`, each value made a cell.
        macro_rules! load {
            ($st:ty, $rust:ty, $cell:expr) => {
                prepared::<($st,)>(sql, params)
                    .load::<($rust,)>(conn)
                    .await
                    .map_err(map_err)?
                    .into_iter()
                    .map(|(v,)| $cell(v))
                    .collect()
            };
        }
        let cells: Vec<Result<Cell>> = match kind {
            Kind::Int8 => load!(BigInt, i64, |v| Ok(Cell::Int(v))),
            Kind::Int4 => load!(Integer, i32, |v: i32| Ok(Cell::Int(v.into()))),
            Kind::Text => load!(Text, String, |v| Ok(Cell::Text(v))),
            Kind::Time => load!(Timestamptz, Time, |t: Time| t
                .get("the column")
                .map(Cell::Time)),
            Kind::Bool => load!(Bool, bool, |v| Ok(Cell::Bool(v))),
        };
        cells.into_iter().collect()
    }

    async fn inserted(
        conn: &mut AsyncPgConnection,
        sql: &Arc<str>,
        params: &[Param<'_>],
    ) -> Result<Vec<Inserted>> {
        prepared::<(BigInt, Bool, Nullable<Text>, Nullable<Text>, Nullable<Text>)>(sql, params)
            .load(conn)
            .await
            .map_err(map_err)
    }

    async fn jobs(
        conn: &mut AsyncPgConnection,
        sql: &Arc<str>,
        params: &[Param<'_>],
        each: &mut EachRow<'_>,
    ) -> Result<()> {
        let rows: Vec<Row> = prepared::<RowSql>(sql, params)
            .load(conn)
            .await
            .map_err(map_err)?;
        for r in rows {
            each(r.0 .0, r.0 .11, job_row(r));
        }
        Ok(())
    }

    async fn counts(
        conn: &mut AsyncPgConnection,
        sql: &Arc<str>,
        params: &[Param<'_>],
    ) -> Result<Vec<(String, i64)>> {
        prepared::<(Text, BigInt)>(sql, params)
            .load(conn)
            .await
            .map_err(map_err)
    }

    async fn next_run(
        conn: &mut AsyncPgConnection,
        sql: &Arc<str>,
        params: &[Param<'_>],
    ) -> Result<(Option<DateTime<Utc>>, DateTime<Utc>)> {
        let rows: Vec<(Option<Time>, Time)> =
            prepared::<(Nullable<Timestamptz>, Timestamptz)>(sql, params)
                .load(conn)
                .await
                .map_err(map_err)?;
        let (next, now) = rows
            .into_iter()
            .next()
            .ok_or_else(|| Error::Backend("next_run returned no row".into()))?;
        Ok((next.map(|t| t.get("next_at")).transpose()?, now.get("now")?))
    }

    async fn finished(
        conn: &mut AsyncPgConnection,
        sql: &Arc<str>,
        params: &[Param<'_>],
    ) -> Result<Vec<FinishedRow>> {
        let rows: Vec<HistoryRow> = prepared::<HistorySql>(sql, params)
            .load(conn)
            .await
            .map_err(map_err)?;
        rows.into_iter().map(finished_row).collect()
    }

    async fn begin(&self, begin: &str) -> Result<Self::Tx> {
        let mut conn = self.acquire().await?;
        AnsiTransactionManager::begin_transaction_sql(&mut *conn, begin)
            .await
            .map_err(map_err)?;
        Ok(conn)
    }

    async fn commit(mut tx: Self::Tx) -> Result<()> {
        AnsiTransactionManager::commit_transaction(&mut *tx)
            .await
            .map_err(map_err)
    }

    async fn rollback(mut tx: Self::Tx) -> Result<()> {
        AnsiTransactionManager::rollback_transaction(&mut *tx)
            .await
            .map_err(map_err)
    }

    async fn listen(
        &self,
        listen: &str,
        _channel: &str,
        note: &(dyn Fn(Note<'_>) + Send + Sync),
    ) -> Error {
        // The listening connection leaves the pool for good: it is busy for as long as the
        // store waits (the pool opens another in its place).
        let mut conn = match self.0.get().await {
            Ok(conn) => Object::take(conn),
            Err(e) => return pool_err(e),
        };
        if let Err(e) = conn.batch_execute(listen).await {
            return map_err(e);
        }
        note(Note::Listening);
        let mut stream = std::pin::pin!(conn.notifications_stream());
        while let Some(n) = stream.next().await {
            match n {
                Ok(n) => note(Note::Queue(&n.payload)),
                Err(e) => return map_err(e),
            }
        }
        Error::Unavailable("the notification stream ended".into())
    }
}

//! The sqlx [`Driver`]: runs the store's statements on a [`PgPool`] and converts their rows.

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use pq_api::postgres::driver::{Cell, Driver, EachRow, Inserted, Kind, Note, Param};
use pq_api::postgres::{pg_time, FinishedRow, JobRow};
use pq_api::{Error, Result};
use sqlx::error::BoxDynError;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{
    PgArguments, PgListener, PgPoolOptions, PgRow, PgTypeInfo, PgValueFormat, PgValueRef,
};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Postgres, Row, Transaction};

use crate::map_err;

/// The sqlx driver of [`PgStore`](pq_api::postgres::PgStore), a handle on the pool: named
/// only in types such as [`Transactional`](crate::Transactional).
#[derive(Debug, Clone)]
pub struct Sqlx(pub(crate) PgPool);

/// `sql` with `params` bound in order, each as the type its variant names.
fn query<'q>(sql: &Arc<str>, params: &'q [Param<'q>]) -> Query<'q, Postgres, PgArguments> {
    let mut q = sqlx::query(AssertSqlSafe(sql.clone()));
    for p in params {
        q = match *p {
            Param::Int8(v) => q.bind(v),
            Param::Int4(v) => q.bind(v),
            Param::Bool(v) => q.bind(v),
            Param::Text(v) => q.bind(v),
            Param::Time(v) => q.bind(v),
            Param::Texts(v) => q.bind(v),
            Param::OptTexts(v) => q.bind(v),
            Param::Int4s(v) => q.bind(v),
            Param::Int8s(v) => q.bind(v),
            Param::OptInt8s(v) => q.bind(v),
            Param::OptTimes(v) => q.bind(v),
            Param::Bools(v) => q.bind(v),
        };
    }
    q
}

/// A `timestamptz` decoded without panicking: sqlx's own decoding of `'infinity'` overflows
/// chrono and panics, where this returns an error for the one value.
struct Time(DateTime<Utc>);

impl sqlx::Type<Postgres> for Time {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as sqlx::Type<Postgres>>::type_info()
    }
    fn compatible(ty: &PgTypeInfo) -> bool {
        <DateTime<Utc> as sqlx::Type<Postgres>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, Postgres> for Time {
    fn decode(value: PgValueRef<'r>) -> std::result::Result<Self, BoxDynError> {
        if value.format() == PgValueFormat::Text {
            // Text is parsed, never added up: 'infinity' is an error here already.
            return <DateTime<Utc> as sqlx::Decode<Postgres>>::decode(value).map(Time);
        }
        let micros = <i64 as sqlx::Decode<Postgres>>::decode(value)?;
        pg_time(micros)
            .map(Time)
            .ok_or_else(|| "a timestamp out of range (infinite?) for a job's time".into())
    }
}

fn time(row: &PgRow, i: usize) -> Result<DateTime<Utc>> {
    row.try_get::<Time, _>(i).map(|t| t.0).map_err(map_err)
}

fn opt_time(row: &PgRow, i: usize) -> Result<Option<DateTime<Utc>>> {
    let t: Option<Time> = row.try_get(i).map_err(map_err)?;
    Ok(t.map(|t| t.0))
}

/// A job row, by position (the statements' column order), the payload and state borrowed.
fn job_row(row: &PgRow) -> Result<JobRow<'_>> {
    let get = |e: sqlx::Error| map_err(e);
    Ok(JobRow {
        id: row.try_get(0).map_err(get)?,
        queue: row.try_get(1).map_err(get)?,
        payload: Cow::Borrowed(row.try_get(2).map_err(get)?),
        priority: row.try_get(3).map_err(get)?,
        expected_at: opt_time(row, 4)?,
        run_at: time(row, 5)?,
        state: Cow::Borrowed(row.try_get(6).map_err(get)?),
        attempts: row.try_get(7).map_err(get)?,
        max_attempts: row.try_get(8).map_err(get)?,
        last_error: row.try_get(9).map_err(get)?,
        created_at: time(row, 10)?,
        lease_token: row.try_get(11).map_err(get)?,
        key: row.try_get(12).map_err(get)?,
        cursor: row.try_get(13).map_err(get)?,
        keep_for: row.try_get(14).map_err(get)?,
        timeout: row.try_get(15).map_err(get)?,
        unique_key: row.try_get(16).map_err(get)?,
        unique_scope: row.try_get(17).map_err(get)?,
        progress: row.try_get(18).map_err(get)?,
        key_state: row.try_get(19).map_err(get)?,
    })
}

fn finished_row(row: &PgRow) -> Result<FinishedRow> {
    let get = |e: sqlx::Error| map_err(e);
    Ok(FinishedRow {
        id: row.try_get(0).map_err(get)?,
        queue: row.try_get(1).map_err(get)?,
        payload: row.try_get(2).map_err(get)?,
        key: row.try_get(3).map_err(get)?,
        cursor: row.try_get(4).map_err(get)?,
        priority: row.try_get(5).map_err(get)?,
        attempts: row.try_get(6).map_err(get)?,
        result: row.try_get(7).map_err(get)?,
        created_at: time(row, 8)?,
        finished_at: time(row, 9)?,
        keep_until: time(row, 10)?,
    })
}

fn cell(row: &PgRow, kind: Kind) -> Result<Cell> {
    let cell = match kind {
        Kind::Int8 => Cell::Int(row.try_get::<i64, _>(0).map_err(map_err)?),
        Kind::Int4 => Cell::Int(row.try_get::<i32, _>(0).map_err(map_err)?.into()),
        Kind::Text => Cell::Text(row.try_get(0).map_err(map_err)?),
        Kind::Time => Cell::Time(time(row, 0)?),
        Kind::Bool => Cell::Bool(row.try_get(0).map_err(map_err)?),
    };
    Ok(cell)
}

impl Driver for Sqlx {
    type Conn = PgConnection;
    type Pooled = PoolConnection<Postgres>;
    type Tx = Transaction<'static, Postgres>;

    async fn acquire(&self) -> Result<Self::Pooled> {
        self.0.acquire().await.map_err(map_err)
    }

    fn pool_size(&self) -> usize {
        usize::try_from(self.0.options().get_max_connections()).unwrap_or(usize::MAX)
    }

    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    async fn batch(conn: &mut PgConnection, sql: &str) -> Result<()> {
        let ran = sqlx::raw_sql(AssertSqlSafe(sql)).execute(conn).await;
        ran.map(drop).map_err(map_err)
    }

    async fn execute(conn: &mut PgConnection, sql: &Arc<str>, params: &[Param<'_>]) -> Result<()> {
        let ran = query(sql, params).execute(conn).await;
        ran.map(drop).map_err(map_err)
    }

    async fn column(
        conn: &mut PgConnection,
        sql: &Arc<str>,
        params: &[Param<'_>],
        kind: Kind,
    ) -> Result<Vec<Cell>> {
        let rows = query(sql, params).fetch_all(conn).await.map_err(map_err)?;
        rows.iter().map(|row| cell(row, kind)).collect()
    }

    async fn inserted(
        conn: &mut PgConnection,
        sql: &Arc<str>,
        params: &[Param<'_>],
    ) -> Result<Vec<Inserted>> {
        let rows = query(sql, params).fetch_all(conn).await.map_err(map_err)?;
        let get = |row: &PgRow| -> sqlx::Result<Inserted> {
            Ok((
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
                row.try_get(4)?,
            ))
        };
        rows.iter().map(|row| get(row).map_err(map_err)).collect()
    }

    async fn jobs(
        conn: &mut PgConnection,
        sql: &Arc<str>,
        params: &[Param<'_>],
        each: &mut EachRow<'_>,
    ) -> Result<()> {
        // Each row is handed over as it is read: no vector of rows in between.
        let mut rows = query(sql, params).fetch(conn);
        while let Some(row) = rows.try_next().await.map_err(map_err)? {
            let id: i64 = row.try_get(0).map_err(map_err)?;
            let token: Option<i64> = row.try_get(11).map_err(map_err)?;
            each(id, token, job_row(&row));
        }
        Ok(())
    }

    async fn counts(
        conn: &mut PgConnection,
        sql: &Arc<str>,
        params: &[Param<'_>],
    ) -> Result<Vec<(String, i64)>> {
        let rows = query(sql, params).fetch_all(conn).await.map_err(map_err)?;
        let get = |row: &PgRow| Ok((row.try_get(0)?, row.try_get(1)?));
        rows.iter().map(|row| get(row).map_err(map_err)).collect()
    }

    async fn next_run(
        conn: &mut PgConnection,
        sql: &Arc<str>,
        params: &[Param<'_>],
    ) -> Result<(Option<DateTime<Utc>>, DateTime<Utc>)> {
        let row = query(sql, params).fetch_one(conn).await.map_err(map_err)?;
        Ok((opt_time(&row, 0)?, time(&row, 1)?))
    }

    async fn finished(
        conn: &mut PgConnection,
        sql: &Arc<str>,
        params: &[Param<'_>],
    ) -> Result<Vec<FinishedRow>> {
        let rows = query(sql, params).fetch_all(conn).await.map_err(map_err)?;
        rows.iter().map(finished_row).collect()
    }

    async fn begin(&self, begin: &str) -> Result<Self::Tx> {
        // A `Transaction` dropped unfinished queues its rollback ahead of the next statement.
        let begin = AssertSqlSafe(begin.to_owned());
        self.0.begin_with(begin).await.map_err(map_err)
    }

    async fn commit(tx: Self::Tx) -> Result<()> {
        tx.commit().await.map_err(map_err)
    }

    async fn rollback(tx: Self::Tx) -> Result<()> {
        tx.rollback().await.map_err(map_err)
    }

    async fn listen(
        &self,
        _listen: &str,
        channel: &str,
        note: &(dyn Fn(Note<'_>) + Send + Sync),
    ) -> Error {
        // A connection of its own, opened with the pool's options, rather than one of the
        // pool's, which on a small pool would leave the store's statements none.
        let own = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with((*self.0.connect_options()).clone());
        let mut listener = match PgListener::connect_with(&own).await {
            Ok(listener) => listener,
            Err(e) => return map_err(e),
        };
        if let Err(e) = listener.listen(channel).await {
            return map_err(e);
        }
        note(Note::Listening);
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => note(Note::Queue(n.payload())),
                // sqlx reconnected underneath: anything sent in between is lost.
                Ok(None) => note(Note::Missed),
                Err(e) => return map_err(e),
            }
        }
    }
}

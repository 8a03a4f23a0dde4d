//! The seam between the one PostgreSQL store ([`PgStore`](super::store::PgStore)) and a
//! PostgreSQL client library.
//!
//! A [`Driver`] is a thin adapter: it lends connections from its pool, runs a statement it is
//! given with the parameters it is given, converts the rows into the plain values of
//! [`rows`](super::rows), and maps its library's errors onto [`Error`] from their SQLSTATEs.
//! It holds no job semantics: every statement text, every decision about what a row means and
//! what to do next lives in [`store`](super::store), once, for every driver. `pq-sqlx` and
//! `pq-diesel` each implement it once; a store on another client library needs only this.
//!
//! Statements take their parameters as a list of [`Param`]s, in `$n` order. A method per kind
//! of round trip: [`Driver::inserted`] (the insert's rows), [`Driver::jobs`] (job rows, handed
//! over one at a time as they are decoded), [`Driver::column`] (one column of scalars),
//! [`Driver::counts`], [`Driver::next_run`], [`Driver::finished`], [`Driver::execute`]
//! (rows ignored), [`Driver::batch`] (a simple query of several statements),
//! [`Driver::begin`] (a transaction), [`Driver::acquire`] (a pooled connection) and
//! [`Driver::listen`] (notifications).

use std::future::Future;
use std::ops::DerefMut;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::rows::{FinishedRow, JobRow};
use crate::error::{Error, Result};

/// A statement's parameter: `$n` is the `n`-th of the list. Each variant names the SQL type
/// it binds as; the statements cast every parameter to it (`$1::int8`), so a driver binds
/// each as exactly that type.
#[derive(Debug, Clone, Copy)]
pub enum Param<'a> {
    /// `int8`.
    Int8(i64),
    /// `int4`.
    Int4(i32),
    /// `bool`.
    Bool(bool),
    /// `text`.
    Text(&'a str),
    /// `timestamptz`, possibly null.
    Time(Option<DateTime<Utc>>),
    /// `text[]`.
    Texts(&'a [String]),
    /// `text[]` with nulls.
    OptTexts(&'a [Option<String>]),
    /// `int4[]`.
    Int4s(&'a [i32]),
    /// `int8[]`.
    Int8s(&'a [i64]),
    /// `int8[]` with nulls.
    OptInt8s(&'a [Option<i64>]),
    /// `timestamptz[]` with nulls.
    OptTimes(&'a [Option<DateTime<Utc>>]),
    /// `bool[]`.
    Bools(&'a [bool]),
}

/// The SQL type of a one-column result ([`Driver::column`]). None of the store's one-column
/// statements returns a null.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `int8`.
    Int8,
    /// `int4`.
    Int4,
    /// `text`.
    Text,
    /// `timestamptz`.
    Time,
    /// `bool`.
    Bool,
}

/// A value of a one-column result, of the [`Kind`] asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// An `int8` or an `int4`.
    Int(i64),
    /// A `text`.
    Text(String),
    /// A `timestamptz` chrono can hold (any other is an [`Error::BadValue`]).
    Time(DateTime<Utc>),
    /// A `bool`.
    Bool(bool),
}

/// A row of the insert ([`Statements::insert`](super::Statements::insert)): the id, whether
/// it is a cursor row, the queue of cursor rows and of rows with a uniqueness key, the cursor
/// key, and the uniqueness key.
pub type Inserted = (i64, bool, Option<String>, Option<String>, Option<String>);

/// What a listening connection reports ([`Driver::listen`]).
#[derive(Debug, Clone, Copy)]
pub enum Note<'a> {
    /// `LISTEN` succeeded: notifications flow from now on.
    Listening,
    /// A notification, its payload a queue name.
    Queue(&'a str),
    /// Notifications may have been missed (the driver reconnected underneath).
    Missed,
}

/// What [`Driver::jobs`] hands each row to: its id, its lease token, and the row or why it
/// cannot be decoded.
pub type EachRow<'a> = dyn for<'r> FnMut(i64, Option<i64>, Result<JobRow<'r>>) + Send + 'a;

/// A PostgreSQL client library, as the one store uses it. See the [module](self) docs.
///
/// A driver value is a handle on a pool, cheap to clone. Methods on a connection take the
/// driver's own connection type, so that they run just as well on a connection or transaction
/// of the application's (the stores' `_in` variants).
pub trait Driver: Clone + Send + Sync + 'static {
    /// A connection statements run on.
    type Conn: Send;
    /// A connection lent by the pool: back to the pool when dropped.
    type Pooled: DerefMut<Target = Self::Conn> + Send + 'static;
    /// A transaction on a connection of the pool ([`Driver::begin`]).
    type Tx: DerefMut<Target = Self::Conn> + Send;

    /// A connection from the pool.
    fn acquire(&self) -> impl Future<Output = Result<Self::Pooled>> + Send;

    /// The most connections the pool lends at once.
    fn pool_size(&self) -> usize;

    /// Whether the pool has been closed (nothing kept from it then).
    fn is_closed(&self) -> bool;

    /// Runs `sql`, several statements with no parameters, as one simple query.
    fn batch<'c>(
        conn: &'c mut Self::Conn,
        sql: &'c str,
    ) -> impl Future<Output = Result<()>> + Send + 'c;

    /// Runs `sql` with `params`, its rows (if any) ignored.
    fn execute<'c>(
        conn: &'c mut Self::Conn,
        sql: &'c Arc<str>,
        params: &'c [Param<'c>],
    ) -> impl Future<Output = Result<()>> + Send + 'c;

    /// Runs `sql` with `params` and returns its one column, each value of `kind`.
    fn column<'c>(
        conn: &'c mut Self::Conn,
        sql: &'c Arc<str>,
        params: &'c [Param<'c>],
        kind: Kind,
    ) -> impl Future<Output = Result<Vec<Cell>>> + Send + 'c;

    /// Runs the insert and returns its rows.
    fn inserted<'c>(
        conn: &'c mut Self::Conn,
        sql: &'c Arc<str>,
        params: &'c [Param<'c>],
    ) -> impl Future<Output = Result<Vec<Inserted>>> + Send + 'c;

    /// Runs a statement that returns job rows (the claim, `job`) and hands each to `each` as
    /// it is decoded: its id, its lease token (read on their own, as the store needs them to
    /// fail a row it cannot use), and the row or why it cannot be decoded (a value the driver
    /// cannot hold: that row alone fails). An error that ends the statement ends this.
    fn jobs<'c>(
        conn: &'c mut Self::Conn,
        sql: &'c Arc<str>,
        params: &'c [Param<'c>],
        each: &'c mut EachRow<'c>,
    ) -> impl Future<Output = Result<()>> + Send + 'c;

    /// Runs the stats statement: `(state, count)` rows.
    fn counts<'c>(
        conn: &'c mut Self::Conn,
        sql: &'c Arc<str>,
        params: &'c [Param<'c>],
    ) -> impl Future<Output = Result<Vec<(String, i64)>>> + Send + 'c;

    /// Runs the next-run statement: the earliest time a job could be claimed, if any, and the
    /// server's clock.
    fn next_run<'c>(
        conn: &'c mut Self::Conn,
        sql: &'c Arc<str>,
        params: &'c [Param<'c>],
    ) -> impl Future<Output = Result<(Option<DateTime<Utc>>, DateTime<Utc>)>> + Send + 'c;

    /// Runs a statement that returns history rows.
    fn finished<'c>(
        conn: &'c mut Self::Conn,
        sql: &'c Arc<str>,
        params: &'c [Param<'c>],
    ) -> impl Future<Output = Result<Vec<FinishedRow>>> + Send + 'c;

    /// Begins a transaction on a connection of the pool with `begin` (a `BEGIN` statement,
    /// perhaps with settings: [`begin_bounded`](super::begin_bounded)). Dropped before
    /// [`Driver::commit`] or [`Driver::rollback`] (its future cancelled, say), the transaction
    /// is rolled back before its connection serves anyone else.
    fn begin<'a>(&'a self, begin: &'a str) -> impl Future<Output = Result<Self::Tx>> + Send + 'a;

    /// Commits `tx`.
    fn commit(tx: Self::Tx) -> impl Future<Output = Result<()>> + Send;

    /// Rolls `tx` back.
    fn rollback(tx: Self::Tx) -> impl Future<Output = Result<()>> + Send;

    /// Opens a connection of its own (one the pool will not lend to anyone else meanwhile),
    /// runs `listen` on it and reports to `note` until the connection is lost; returns why.
    fn listen<'a>(
        &'a self,
        listen: &'a str,
        channel: &'a str,
        note: &'a (dyn Fn(Note<'_>) + Send + Sync),
    ) -> impl Future<Output = Error> + Send + 'a;
}

/// A scalar a one-column statement returns ([`Driver::column`]), as the store reads it.
pub(crate) trait Scalar: Sized {
    /// The SQL type asked for.
    const KIND: Kind;
    /// The value, if `cell` is of the kind asked for; else the cell.
    fn from_cell(cell: Cell) -> std::result::Result<Self, Cell>;
}

impl Scalar for i64 {
    const KIND: Kind = Kind::Int8;
    fn from_cell(cell: Cell) -> std::result::Result<Self, Cell> {
        match cell {
            Cell::Int(v) => Ok(v),
            other => Err(other),
        }
    }
}

impl Scalar for String {
    const KIND: Kind = Kind::Text;
    fn from_cell(cell: Cell) -> std::result::Result<Self, Cell> {
        match cell {
            Cell::Text(v) => Ok(v),
            other => Err(other),
        }
    }
}

impl Scalar for DateTime<Utc> {
    const KIND: Kind = Kind::Time;
    fn from_cell(cell: Cell) -> std::result::Result<Self, Cell> {
        match cell {
            Cell::Time(v) => Ok(v),
            other => Err(other),
        }
    }
}

impl Scalar for bool {
    const KIND: Kind = Kind::Bool;
    fn from_cell(cell: Cell) -> std::result::Result<Self, Cell> {
        match cell {
            Cell::Bool(v) => Ok(v),
            other => Err(other),
        }
    }
}

/// An `int4` column, read as the `i32` it is.
pub(crate) struct Int4(pub(crate) i32);

impl Scalar for Int4 {
    const KIND: Kind = Kind::Int4;
    fn from_cell(cell: Cell) -> std::result::Result<Self, Cell> {
        match cell {
            Cell::Int(v) => i32::try_from(v).map(Int4).map_err(|_| Cell::Int(v)),
            other => Err(other),
        }
    }
}

/// The cells of a column as `T`s; a cell of another kind is the driver's error.
pub(crate) fn scalars<T: Scalar>(cells: Vec<Cell>) -> Result<Vec<T>> {
    cells
        .into_iter()
        .map(|c| {
            T::from_cell(c).map_err(|c| {
                Error::Backend(format!("the driver returned {c:?} for a {:?}", T::KIND).into())
            })
        })
        .collect()
}

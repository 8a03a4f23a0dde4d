//! A raw SQL statement that diesel keeps prepared.
//!
//! `diesel::sql_query` marks itself unsafe to cache, so diesel prepares it as an unnamed
//! statement on every call: an extra round trip, and PostgreSQL parses and plans it afresh
//! each time (for the claim, as long as running it). Our statements are fixed texts from
//! `pq_api::postgres`, safe to keep prepared per connection, keyed by their text, as sqlx does.

use std::marker::PhantomData;
use std::sync::Arc;

use diesel::pg::{Pg, PgQueryBuilder};
use diesel::query_builder::{AstPass, Query, QueryBuilder, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};
use diesel::QueryResult;

/// `text` with the values bound so far (`B`, a chain of [`Bound`]), returning rows of SQL
/// type `R`: `Untyped` (loaded by column name, through `QueryableByName`, as with
/// `sql_query`), or a tuple of the columns' types (loaded by position, through `Queryable`).
#[must_use = "a statement does nothing until it is run"]
pub(crate) struct Prepared<B, R = Untyped> {
    sql: Arc<str>,
    binds: B,
    row: PhantomData<fn() -> R>,
}

/// A statement to keep prepared, with no value bound yet, its rows loaded by column name.
pub(crate) fn prepared(sql: &Arc<str>) -> Prepared<()> {
    prepared_as(sql)
}

/// A statement to keep prepared, with no value bound yet, its rows of SQL type `R` loaded
/// by position: no lookup of each column by its name in each row.
pub(crate) fn prepared_as<R>(sql: &Arc<str>) -> Prepared<(), R> {
    Prepared {
        sql: sql.clone(),
        binds: (),
        row: PhantomData,
    }
}

impl<B, R> Prepared<B, R> {
    /// Binds the next `$n` to `value`, as SQL type `ST`.
    pub(crate) fn bind<ST, V>(self, value: V) -> Prepared<Bound<B, ST, V>, R> {
        Prepared {
            sql: self.sql,
            binds: Bound {
                before: self.binds,
                value,
                sql_type: PhantomData,
            },
            row: PhantomData,
        }
    }
}

/// One bound value after those bound `before` it.
pub(crate) struct Bound<B, ST, V> {
    before: B,
    value: V,
    sql_type: PhantomData<fn() -> ST>,
}

/// Pushes bound values in order.
pub(crate) trait Binds {
    fn push<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()>;
}

impl Binds for () {
    fn push<'b>(&'b self, _out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        Ok(())
    }
}

impl<B: Binds, ST, V> Binds for Bound<B, ST, V>
where
    Pg: HasSqlType<ST>,
    V: ToSql<ST, Pg>,
{
    fn push<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.before.push(out)?;
        out.push_bind_param::<ST, V>(&self.value)
    }
}

impl<B: Binds, R> QueryFragment<Pg> for Prepared<B, R> {
    /// Collects the bound values (the text already holds their `$n`).
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.binds.push(&mut out)
    }

    /// The text as written: walking the binds would append a `$n` for each.
    fn to_sql(&self, out: &mut PgQueryBuilder, _backend: &Pg) -> QueryResult<()> {
        out.push_sql(&self.sql);
        Ok(())
    }
}

/// No static id: diesel's statement cache keys the statement by its text.
impl<B, R> QueryId for Prepared<B, R> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

/// Rows load as `R` says (see [`Prepared`]).
impl<B, R> Query for Prepared<B, R> {
    type SqlType = R;
}

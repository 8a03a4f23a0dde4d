//! A raw SQL statement that diesel keeps prepared.
//!
//! `diesel::sql_query` marks itself unsafe to cache, so diesel prepares it as an unnamed
//! statement on every call: an extra round trip, and PostgreSQL parses and plans it afresh
//! each time (for the claim, as long as running it). Our statements are fixed texts from
//! `pq_api::postgres`, safe to keep prepared per connection, keyed by their text, as sqlx does.
//! Parameters come as the store's list of [`Param`]s.

use std::marker::PhantomData;
use std::sync::Arc;

use diesel::pg::{Pg, PgQueryBuilder};
use diesel::query_builder::{AstPass, Query, QueryBuilder, QueryFragment, QueryId};
use diesel::sql_types::{Array, BigInt, Bool, Integer, Nullable, Text, Timestamptz};
use diesel::QueryResult;
use pq_api::postgres::driver::Param;

/// `sql` with `params` bound in order, returning rows of SQL type `R`, a tuple of the
/// columns' types: loaded by position, through `Queryable`, with no lookup of each column by
/// its name in each row.
#[must_use = "a statement does nothing until it is run"]
pub(crate) struct Prepared<'a, R> {
    sql: Arc<str>,
    params: &'a [Param<'a>],
    row: PhantomData<fn() -> R>,
}

/// `sql` with `params`, kept prepared, its rows of SQL type `R`.
pub(crate) fn prepared<'a, R>(sql: &Arc<str>, params: &'a [Param<'a>]) -> Prepared<'a, R> {
    Prepared {
        sql: sql.clone(),
        params,
        row: PhantomData,
    }
}

impl<R> QueryFragment<Pg> for Prepared<'_, R> {
    /// Binds each parameter as the SQL type its variant names (the text already holds their
    /// `$n`).
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        for p in self.params {
            match p {
                Param::Int8(v) => out.push_bind_param::<BigInt, _>(v)?,
                Param::Int4(v) => out.push_bind_param::<Integer, _>(v)?,
                Param::Bool(v) => out.push_bind_param::<Bool, _>(v)?,
                Param::Text(v) => out.push_bind_param::<Text, _>(*v)?,
                Param::Time(v) => out.push_bind_param::<Nullable<Timestamptz>, _>(v)?,
                Param::Texts(v) => out.push_bind_param::<Array<Text>, _>(*v)?,
                Param::OptTexts(v) => out.push_bind_param::<Array<Nullable<Text>>, _>(*v)?,
                Param::Int4s(v) => out.push_bind_param::<Array<Integer>, _>(*v)?,
                Param::Int8s(v) => out.push_bind_param::<Array<BigInt>, _>(*v)?,
                Param::OptInt8s(v) => out.push_bind_param::<Array<Nullable<BigInt>>, _>(*v)?,
                Param::OptTimes(v) => {
                    out.push_bind_param::<Array<Nullable<Timestamptz>>, _>(*v)?;
                }
                Param::Bools(v) => out.push_bind_param::<Array<Bool>, _>(*v)?,
            }
        }
        Ok(())
    }

    /// The text as written: walking the binds would append a `$n` for each.
    fn to_sql(&self, out: &mut PgQueryBuilder, _backend: &Pg) -> QueryResult<()> {
        out.push_sql(&self.sql);
        Ok(())
    }
}

/// No static id: diesel's statement cache keys the statement by its text.
impl<R> QueryId for Prepared<'_, R> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

/// Rows load as `R` says (see [`Prepared`]).
impl<R> Query for Prepared<'_, R> {
    type SqlType = R;
}

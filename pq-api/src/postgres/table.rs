//! The schema and table that hold the jobs, and the quoting of their names.

use crate::error::{Error, Result};

/// Longest schema name (PostgreSQL's identifier limit).
pub const MAX_SCHEMA_LEN: usize = 63;
/// Longest table name: shorter than PostgreSQL's limit because pq derives index, function and
/// migration-table names from it.
pub const MAX_TABLE_LEN: usize = 48;

/// The schema and table that hold the jobs. Names are plain lowercase SQL identifiers
/// (`[a-z_][a-z0-9_]*`), validated on construction, so nothing hostile reaches SQL text.
///
/// ```
/// use pq_api::postgres::QueueTable;
/// let t = QueueTable::new("billing", "jobs")?;
/// assert_eq!(t.qualified(), "\"billing\".\"jobs\"");
/// assert!(QueueTable::new("public", "jobs; DROP TABLE users").is_err());
/// assert!(QueueTable::new("information_schema", "jobs").is_err());
/// # Ok::<(), pq_api::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueTable {
    schema: String,
    table: String,
}

impl Default for QueueTable {
    /// `public.pq_jobs`.
    fn default() -> Self {
        QueueTable {
            schema: "public".into(),
            table: "pq_jobs".into(),
        }
    }
}

impl QueueTable {
    /// Names the table `schema.table`, rejecting anything but plain identifiers.
    pub fn new(schema: &str, table: &str) -> Result<Self> {
        validate_identifier("schema name", schema, MAX_SCHEMA_LEN)?;
        validate_identifier("table name", table, MAX_TABLE_LEN)?;
        if schema.starts_with("pg_") || schema == "information_schema" {
            return Err(Error::invalid(
                "schema name",
                format!(
                    "{schema:?} is PostgreSQL's own (pg_* and information_schema are reserved)"
                ),
            ));
        }
        Ok(QueueTable {
            schema: schema.into(),
            table: table.into(),
        })
    }

    /// The schema name.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// `"schema"."table"`, quoted.
    pub fn qualified(&self) -> String {
        self.object(&self.table)
    }

    pub(crate) fn object(&self, name: &str) -> String {
        format!("{}.{}", quote(&self.schema), quote(name))
    }

    /// The LISTEN/NOTIFY channel of this table: short, and distinct per schema and table.
    pub fn channel(&self) -> String {
        format!("pq_{:016x}", self.hash())
    }

    /// The advisory-lock key that serialises migrations of this table.
    pub fn lock_key(&self) -> i64 {
        i64::from_ne_bytes(self.hash().to_ne_bytes())
    }

    /// The first key of the advisory locks that serialise puts of one uniqueness key in this
    /// table (the second is the key's hash).
    pub fn unique_lock(&self) -> i32 {
        let b = self.hash().to_ne_bytes();
        i32::from_ne_bytes([b[0], b[1], b[2], b[3]])
    }

    /// FNV-1a of `schema.table`: stable across processes and versions, unlike `DefaultHasher`.
    fn hash(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.schema.bytes().chain([b'.']).chain(self.table.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    }
}

fn validate_identifier(what: &'static str, name: &str, max: usize) -> Result<()> {
    if name.is_empty() || name.len() > max {
        return Err(Error::invalid(
            what,
            format!("must be 1 to {max} characters"),
        ));
    }
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Err(Error::invalid(
            what,
            format!("{name:?} is not a plain lowercase identifier ([a-z_][a-z0-9_]*)"),
        ));
    }
    Ok(())
}

/// Quotes an identifier. Validated names never contain `"`, but quoting keeps reserved words
/// (`user`, `order`) usable.
pub(crate) fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

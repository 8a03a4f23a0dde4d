//! The one error type every store returns.

use crate::job::{JobId, JobState};

/// A boxed error from a backend, kept as the source of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The result type of every pq operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a queue operation.
///
/// Backends map their private errors (SQLSTATE classes, pool time-outs) into these semantic
/// variants and keep the original as [`std::error::Error::source`]. Ask
/// [`Error::is_retryable`] whether trying again later can succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An argument was out of range or malformed; nothing was changed.
    #[error("invalid {what}: {reason}")]
    InvalidArgument {
        /// Which argument (`"queue name"`, `"limit"`, `"lease"`, …).
        what: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// No job has this id (it was completed, cancelled, purged, or never existed).
    #[error("job {0} not found")]
    NotFound(JobId),
    /// The lease no longer holds the job: it was reclaimed by someone else after expiring, or
    /// the job was completed, failed, released, cancelled or purged. Nothing was changed.
    #[error("lease on job {0} was lost")]
    LeaseLost(JobId),
    /// The job was cancelled while this lease held it ([`QueueStore::cancel`](crate::QueueStore::cancel)):
    /// its holder should stop; nothing was changed.
    #[error("job {0} was cancelled")]
    Cancelled(JobId),
    /// The operation does not apply to a job in this state (retrying one that has not
    /// failed). Nothing was changed.
    #[error("job {id} is {state}, which does not allow this operation")]
    InvalidState {
        /// The job.
        id: JobId,
        /// Its state when the operation was refused.
        state: JobState,
    },
    /// A payload could not be encoded to, or decoded from, JSON.
    #[error("payload codec error: {0}")]
    Codec(#[from] serde_json::Error),
    /// A payload could not be encoded or decoded by a [`Codec`](crate::Codec) (or was written
    /// by another one).
    #[error("{codec} codec error: {reason}")]
    Format {
        /// The codec's name.
        codec: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// The store cannot be reached now (connection lost, pool exhausted, server shutting down).
    /// Retryable.
    #[error("store unavailable")]
    Unavailable(#[source] BoxError),
    /// The operation lost a race inside the database (serialization failure, deadlock).
    /// Retryable.
    #[error("transient conflict")]
    Conflict(#[source] BoxError),
    /// A value the table holds cannot be decoded: a time no driver can represent
    /// (`'infinity'`) or another value written by plain SQL that pq cannot read. Confined to
    /// the row that holds it; a claim fails such a job at once instead of handing it out.
    #[error("a stored value cannot be decoded: {0}")]
    BadValue(String),
    /// The store's schema is missing or older than this version of pq expects.
    #[error("queue schema is missing or out of date: {0}")]
    Schema(String),
    /// Any other backend failure. Not retryable.
    #[error("backend error")]
    Backend(#[source] BoxError),
}

impl Error {
    /// Whether the same operation may succeed if tried again later.
    ///
    /// ```
    /// use pq_api::Error;
    /// let err = Error::invalid("limit", "must be at least 1");
    /// assert!(!err.is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::Conflict(_))
    }

    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            what,
            reason: reason.into(),
        }
    }

    /// Maps a PostgreSQL error by its SQLSTATE code, keeping the error as the source.
    ///
    /// Both SQL backends use this, so they classify every failure the same way: connection
    /// exceptions (class 08), operator intervention (57P) and insufficient resources (53) are
    /// [`Error::Unavailable`]; serialization failures and deadlocks (40001, 40P01) are
    /// [`Error::Conflict`]; a missing table or function (42P01, 42883, 3F000), or one that
    /// exists already where a migration would create it (42P07, 42710), is
    /// [`Error::Schema`]; constraint violations (class 23) and invalid input (22) are
    /// [`Error::InvalidArgument`]; everything else is [`Error::Backend`].
    pub fn from_sqlstate(code: Option<&str>, source: BoxError) -> Self {
        let Some(code) = code else {
            return Error::Backend(source);
        };
        match code {
            "40001" | "40P01" => Error::Conflict(source),
            "42P01" | "42883" | "3F000" => Error::Schema(source.to_string()),
            "42P07" | "42710" => Error::Schema(clash(&*source)),
            c if c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") => {
                Error::Unavailable(source)
            }
            c if c.starts_with("23") || c.starts_with("22") => Error::InvalidArgument {
                what: "value",
                reason: source.to_string(),
            },
            _ => Error::Backend(source),
        }
    }
}

/// The schema error for an object a migration would create that exists already.
pub(crate) fn clash(source: &(dyn std::error::Error + Send + Sync)) -> String {
    format!(
        "{source}: the table's name clashes with one that exists (another pq table's \
         `<table>_keys` or `<table>_history`, say); choose another table name"
    )
}

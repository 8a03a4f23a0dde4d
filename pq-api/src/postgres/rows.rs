//! Rows as the drivers decode them, and the arrays they bind: one conversion to the
//! contract's types, shared by both SQL stores.

#[cfg(doc)]
use super::statements::Statements;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::driver::{Inserted, Param};
use crate::error::{Error, Result};
use crate::job::micros;
use crate::job::{ClaimedJob, Done, FinishedJob, Job, JobId, JobState, Lease};

/// A job row as the SQL stores decode it from [`Statements::claim`] and [`Statements::job`]:
/// plain column values, converted to a [`Job`] in one place. The payload and the state may
/// borrow from the driver's row (a claim parses each payload straight from it).
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub struct JobRow<'r> {
    pub id: i64,
    pub queue: String,
    pub payload: Cow<'r, str>,
    pub priority: i32,
    pub expected_at: Option<DateTime<Utc>>,
    pub run_at: DateTime<Utc>,
    pub state: Cow<'r, str>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub lease_token: Option<i64>,
    pub key: Option<String>,
    pub cursor: bool,
    pub keep_for: Option<i64>,
    pub timeout: Option<i64>,
    pub unique_key: Option<String>,
    pub unique_scope: Option<i64>,
    pub progress: Option<String>,
    pub key_state: Option<String>,
}

impl JobRow<'_> {
    /// Converts the row into a [`Job`].
    pub fn into_job(self) -> Result<Job> {
        let state = parse_state(&self.state)?;
        let payload: Value = serde_json::from_str(&self.payload)?;
        let (serial_key, cursor_key) = split_key(self.key, self.cursor);
        let progress = match self.progress {
            Some(text) => Some(serde_json::from_str(&text)?),
            None => None,
        };
        Ok(Job {
            progress,
            serial_key,
            cursor_key,
            keep_history: duration(self.keep_for),
            timeout: duration(self.timeout),
            unique: self
                .unique_key
                .zip(self.unique_scope.and_then(crate::Unique::from_code)),
            id: JobId(self.id),
            queue: self.queue,
            payload: Arc::new(payload),
            priority: self.priority,
            expected_at: self.expected_at,
            run_at: self.run_at,
            state,
            attempts: u32::try_from(self.attempts).unwrap_or(0),
            max_attempts: u32::try_from(self.max_attempts).unwrap_or(1),
            last_error: self.last_error,
            created_at: self.created_at,
        })
    }

    /// Converts a claimed row into a [`ClaimedJob`].
    pub fn into_claimed(mut self) -> Result<ClaimedJob> {
        let token = self
            .lease_token
            .ok_or_else(|| Error::Backend("claimed row carries no lease token".into()))?;
        let key_state = match self.key_state.take() {
            Some(text) => Some(serde_json::from_str(&text)?),
            None => None,
        };
        let job = self.into_job()?;
        let lease = Lease {
            job_id: job.id,
            token,
        };
        Ok(ClaimedJob::new(job, lease).with_key_state(key_state))
    }
}

/// A stored duration in µs; a negative one (written by plain SQL) as none.
fn duration(micros: Option<i64>) -> Option<std::time::Duration> {
    micros
        .and_then(|us| u64::try_from(us).ok())
        .map(std::time::Duration::from_micros)
}

fn split_key(key: Option<String>, cursor: bool) -> (Option<String>, Option<String>) {
    match key {
        Some(k) if cursor => (None, Some(k)),
        k => (k, None),
    }
}

/// The instant `micros` microseconds after PostgreSQL's epoch (2000-01-01 UTC), as a
/// `timestamptz` travels in binary; `None` for `±infinity` and anything else chrono cannot
/// hold. The drivers decode timestamps through this rather than panic on such a value.
///
/// ```
/// use pq_api::postgres::pg_time;
/// assert_eq!(pg_time(0).unwrap().to_rfc3339(), "2000-01-01T00:00:00+00:00");
/// assert!(pg_time(i64::MAX).is_none()); // 'infinity'
/// assert!(pg_time(i64::MIN).is_none()); // '-infinity'
/// ```
pub fn pg_time(micros: i64) -> Option<DateTime<Utc>> {
    const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;
    if micros == i64::MAX || micros == i64::MIN {
        return None;
    }
    DateTime::from_timestamp(PG_EPOCH_UNIX_SECS, 0)?
        .checked_add_signed(chrono::TimeDelta::microseconds(micros))
}

/// A claimed row that could not be turned into a job: a payload serde_json cannot parse (a
/// number out of range, nesting past its limit), a time no driver can hold, all written by
/// plain SQL or by an older version. The store fails it at once, in the claim's own
/// transaction, with [`Undecodable::failure`], and hands out the rest of the batch: one bad
/// row never holds up the jobs claimed with it, and never uses up more attempts.
#[derive(Debug)]
pub struct Undecodable {
    /// The lease the claim took on it.
    pub lease: Lease,
    /// Why it could not be decoded.
    pub error: Error,
}

impl Undecodable {
    /// The failure recorded on the job: no retry, the reason in `last_error`.
    pub fn failure(&self) -> crate::Failure {
        crate::Failure::new(format!(
            "pq cannot decode this job as stored: {}",
            self.error
        ))
        .give_up()
    }

    /// Logs that the job could not be failed either; it is claimed and tried again once its
    /// lease expires.
    pub fn not_failed(&self, e: &Error) {
        tracing::error!(job.id = self.lease.job_id.0, error = %self.error, fail_error = %e,
            "could not fail an undecodable job; it is tried again once its lease expires");
    }
}

/// A history row as the SQL stores decode it from [`Statements::finished`] and
/// [`Statements::history`].
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub struct FinishedRow {
    pub id: i64,
    pub queue: String,
    pub payload: String,
    pub key: Option<String>,
    pub cursor: bool,
    pub priority: i32,
    pub attempts: i32,
    pub result: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub keep_until: DateTime<Utc>,
}

impl FinishedRow {
    /// Converts the row into a [`FinishedJob`].
    pub fn into_finished(self) -> Result<FinishedJob> {
        let (serial_key, cursor_key) = split_key(self.key, self.cursor);
        let mut job = Job::new(
            JobId(self.id),
            self.queue,
            serde_json::from_str::<Value>(&self.payload)?,
            self.created_at,
        );
        job.serial_key = serial_key;
        job.cursor_key = cursor_key;
        job.priority = self.priority;
        job.attempts = u32::try_from(self.attempts).unwrap_or(0);
        let result = match self.result {
            Some(text) => Some(serde_json::from_str(&text)?),
            None => None,
        };
        Ok(FinishedJob::new(
            job,
            result,
            self.finished_at,
            self.keep_until,
        ))
    }
}

/// The column arrays [`Statements::complete`] takes.
#[derive(Debug, Default)]
#[allow(missing_docs)]
pub struct DoneArrays {
    pub id: Vec<i64>,
    pub token: Vec<i64>,
    pub result: Vec<Option<String>>,
    pub key_state: Vec<Option<String>>,
}

impl DoneArrays {
    /// The parameters of [`Statements::complete`], in order.
    pub fn params(&self) -> [Param<'_>; 4] {
        [
            Param::Int8s(&self.id),
            Param::Int8s(&self.token),
            Param::OptTexts(&self.result),
            Param::OptTexts(&self.key_state),
        ]
    }

    /// Splits completions into columns, JSON as text.
    pub fn new(done: &[Done]) -> Result<Self> {
        let mut a = DoneArrays::default();
        let text = |v: &Option<Value>| v.as_ref().map(serde_json::to_string).transpose();
        for d in done {
            a.id.push(d.lease.job_id.0);
            a.token.push(d.lease.token);
            a.result.push(text(&d.result)?);
            a.key_state.push(text(&d.key_state)?);
        }
        Ok(a)
    }
}

/// Parses a state name returned by a statement.
pub fn parse_state(s: &str) -> Result<JobState> {
    JobState::parse(s).ok_or_else(|| Error::Backend(format!("unknown job state {s:?}").into()))
}

/// Splits jobs into the column arrays [`Statements::insert`] takes.
///
/// Jobs with a cursor key already pending earlier in the same call are not sent: they take
/// the id of that earlier job ([`InsertArrays::ids`]).
#[derive(Debug, Default)]
#[allow(missing_docs)]
pub struct InsertArrays {
    pub queue: Vec<String>,
    pub payload: Vec<String>,
    pub priority: Vec<i32>,
    pub run_at: Vec<Option<DateTime<Utc>>>,
    pub run_in: Vec<Option<i64>>,
    pub expected_at: Vec<Option<DateTime<Utc>>>,
    pub expected_in: Vec<Option<i64>>,
    pub max_attempts: Vec<i32>,
    pub key: Vec<Option<String>>,
    pub cursor: Vec<bool>,
    pub keep_for: Vec<Option<i64>>,
    pub timeout: Vec<Option<i64>>,
    pub unique_key: Vec<Option<String>>,
    pub unique_scope: Vec<Option<i64>>,
    /// For each job given, the row sent for it.
    pub slots: Vec<usize>,
}

impl InsertArrays {
    /// Validates every job, then splits them; an invalid job fails the whole batch.
    pub fn new(jobs: &[crate::NewJob]) -> Result<Self> {
        use crate::When;
        let mut a = InsertArrays::default();
        let mut cursor_rows: HashMap<(&str, &str), usize> = HashMap::new();
        let mut unique_rows: HashMap<(&str, &str), usize> = HashMap::new();
        for job in jobs {
            job.validate()?;
            if let Some((key, true)) = job.key() {
                if let Some(&row) = cursor_rows.get(&(job.queue.as_str(), key)) {
                    a.slots.push(row);
                    continue;
                }
                cursor_rows.insert((&job.queue, key), a.queue.len());
            }
            // A later job of a uniqueness key sent earlier in the call gets the earlier's id.
            if let Some((key, _)) = &job.unique {
                if let Some(&row) = unique_rows.get(&(job.queue.as_str(), key.as_str())) {
                    a.slots.push(row);
                    continue;
                }
                unique_rows.insert((&job.queue, key), a.queue.len());
            }
            a.slots.push(a.queue.len());
            a.queue.push(job.queue.clone());
            a.payload.push(serde_json::to_string(&job.payload)?);
            a.priority.push(job.priority);
            let (at, within) = match job.run_at {
                Some(When::At(at)) => (Some(at), None),
                Some(When::In(d)) => (None, Some(crate::job::micros(d))),
                None => (None, Some(0)),
            };
            a.run_at.push(at);
            a.run_in.push(within);
            let (at, within) = match job.expected_at {
                Some(When::At(at)) => (Some(at), None),
                Some(When::In(d)) => (None, Some(crate::job::micros(d))),
                None => (None, None),
            };
            a.expected_at.push(at);
            a.expected_in.push(within);
            a.max_attempts.push(
                i32::try_from(job.max_attempts)
                    .map_err(|_| Error::invalid("max_attempts", "too large"))?,
            );
            let key = job.key();
            a.key.push(key.map(|(k, _)| k.to_owned()));
            a.cursor.push(key.is_some_and(|(_, cursor)| cursor));
            a.keep_for.push(job.keep_history.map(micros));
            a.timeout.push(job.timeout.map(micros));
            a.unique_key
                .push(job.unique.as_ref().map(|(k, _)| k.clone()));
            a.unique_scope
                .push(job.unique.as_ref().map(|(_, scope)| scope.code()));
        }
        Ok(a)
    }

    /// The parameters of [`Statements::insert`], in order.
    pub fn params(&self) -> [Param<'_>; 14] {
        [
            Param::Texts(&self.queue),
            Param::Texts(&self.payload),
            Param::Int4s(&self.priority),
            Param::OptTimes(&self.run_at),
            Param::OptInt8s(&self.run_in),
            Param::OptTimes(&self.expected_at),
            Param::OptInt8s(&self.expected_in),
            Param::Int4s(&self.max_attempts),
            Param::OptTexts(&self.key),
            Param::Bools(&self.cursor),
            Param::OptInt8s(&self.keep_for),
            Param::OptInt8s(&self.timeout),
            Param::OptTexts(&self.unique_key),
            Param::OptInt8s(&self.unique_scope),
        ]
    }

    /// The id of every job given, in order, from the rows [`Statements::insert`] returned
    /// (`id, cursor, queue, key, unique_key`: queue and key for cursor rows, queue and
    /// unique_key for rows with a uniqueness key, null on the others, so that a batch of plain
    /// jobs returns no text). Cursor rows are matched by queue and key, rows with a
    /// uniqueness key by queue and that key (each unique among the rows sent); every other row
    /// was inserted, and ids come from one sequence in the order the rows were sent.
    pub fn ids(&self, rows: impl IntoIterator<Item = Inserted>) -> Result<Vec<JobId>> {
        let mut by_key: HashMap<(String, String), i64> = HashMap::new();
        let mut by_unique: HashMap<(String, String), i64> = HashMap::new();
        let mut plain: Vec<i64> = Vec::with_capacity(self.queue.len());
        for (id, cursor, queue, key, unique) in rows {
            match (queue, key, unique) {
                (Some(queue), Some(key), _) if cursor => {
                    by_key.insert((queue, key), id);
                }
                (Some(queue), _, Some(unique)) => {
                    by_unique.insert((queue, unique), id);
                }
                _ => plain.push(id),
            }
        }
        plain.sort_unstable();
        let mut plain = plain.into_iter();
        let mut row_ids = Vec::with_capacity(self.queue.len());
        for row in 0..self.queue.len() {
            let queue = &self.queue[row];
            let id = match (&self.key[row], self.cursor[row], &self.unique_key[row]) {
                (Some(key), true, _) => by_key.get(&(queue.clone(), key.clone())).copied(),
                (_, _, Some(unique)) => by_unique.get(&(queue.clone(), unique.clone())).copied(),
                _ => plain.next(),
            };
            row_ids
                .push(id.ok_or_else(|| Error::Backend("the insert returned too few rows".into()))?);
        }
        Ok(self.slots.iter().map(|&row| JobId(row_ids[row])).collect())
    }
}

/// Runs `statement`, freeing `garbage` while the server works on it: the statement is polled
/// first (it sends its messages), then this task yields once (a store whose connection is a
/// task of its own, as diesel-async's is, sends them then), and only then is `garbage`
/// dropped. A store's `put_many` hands it the jobs it was given, once their rows are
/// encoded: freeing a thousand payloads was a fifth of the client's time in `put_many`.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let jobs = vec![serde_json::json!({"n": 1}); 1000];
/// let sent = async { 7 };
/// assert_eq!(pq_api::postgres::freeing(sent, jobs).await, 7);
/// # });
/// ```
pub async fn freeing<T, G>(statement: impl std::future::Future<Output = T>, garbage: G) -> T {
    let free = async move {
        tokio::task::yield_now().await;
        drop(garbage);
    };
    let (out, ()) = tokio::join!(statement, free);
    out
}

/// The ids of [`Statements::complete`]'s result, in the order the leases were given (the
/// statement returns them in no particular order). Linear in the batch size.
pub fn completed_in_order(given: &[Done], done: impl IntoIterator<Item = i64>) -> Vec<JobId> {
    let done: std::collections::HashSet<i64> = done.into_iter().collect();
    given
        .iter()
        .map(|d| d.lease.job_id)
        .filter(|id| done.contains(&id.0))
        .collect()
}

/// Splits a [`crate::Failure`]'s retry time into the `$3`/`$4` parameters of [`Statements::fail`].
pub fn retry_params(failure: &crate::Failure) -> (Option<DateTime<Utc>>, i64) {
    match failure.retry_at {
        Some(crate::When::At(at)) => (Some(at), 0),
        Some(crate::When::In(d)) => (None, crate::job::micros(d)),
        None => (None, 0),
    }
}

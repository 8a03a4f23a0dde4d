//! Jobs, leases and the parameters of each operation.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// Longest queue name, in bytes.
pub const MAX_QUEUE_NAME_LEN: usize = 128;
/// Most jobs one [`Claim`] may return.
pub const MAX_CLAIM_LIMIT: u32 = 10_000;
/// Longest lease, delay or deadline offset pq accepts (about 100 years): longer ones are
/// almost certainly unit mistakes.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// `max_attempts` of a job that does not set it.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Lease of a [`Claim`] that does not set it.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// Longest serial or cursor key, in bytes.
pub const MAX_KEY_LEN: usize = 255;

/// The identity of a job, unique within one store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub i64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A point in time given either absolutely or relative to the store's clock at the time of the
/// operation.
///
/// Parse one from a string: a humantime duration (`"5m"`, `"1h 30m"`, `"2days"`) is relative,
/// an RFC 3339 datetime (`"2026-12-01T09:00:00Z"`) is absolute.
///
/// ```
/// use pq_api::When;
/// use std::time::Duration;
/// assert_eq!("1h30m".parse::<When>().unwrap(), When::In(Duration::from_secs(5400)));
/// assert!(matches!("2026-12-01T09:00:00Z".parse::<When>().unwrap(), When::At(_)));
/// assert!("soon".parse::<When>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// At this instant.
    At(DateTime<Utc>),
    /// This long after the operation, by the store's clock.
    In(Duration),
}

impl When {
    /// The instant this stands for, given the store's current time.
    pub fn resolve(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        match *self {
            When::At(at) => at,
            When::In(d) => {
                // Validated durations are at most MAX_DURATION, so this never saturates.
                now + TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
            }
        }
    }

    pub(crate) fn validate(&self, what: &'static str) -> Result<()> {
        if let When::In(d) = self {
            if *d > MAX_DURATION {
                return Err(Error::invalid(
                    what,
                    format!("{d:?} is longer than 100 years"),
                ));
            }
        }
        Ok(())
    }
}

impl From<DateTime<Utc>> for When {
    fn from(at: DateTime<Utc>) -> Self {
        When::At(at)
    }
}

impl From<Duration> for When {
    fn from(d: Duration) -> Self {
        When::In(d)
    }
}

impl FromStr for When {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        parse_when(s).map_err(|reason| Error::invalid("time", reason))
    }
}

fn parse_when(s: &str) -> std::result::Result<When, String> {
    let s = s.trim();
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(When::In(d));
    }
    if let Ok(at) = DateTime::parse_from_rfc3339(s) {
        return Ok(When::At(at.with_timezone(&Utc)));
    }
    Err(format!(
        "{s:?} is neither a duration like \"5m\" nor an RFC 3339 datetime"
    ))
}

/// What every time option of a job or a task takes ([`NewJob::run_at`],
/// [`NewJob::expected_at`], [`TaskDefaults::schedule_at`](crate::TaskDefaults::schedule_at),
/// …): a [`When`], a `DateTime<Utc>`, a [`Duration`] from now, or a string, either a duration
/// (`"2m"`, `"1h 30m"`) or an RFC 3339 datetime.
///
/// The options take it without a `Result`: a string that is neither is kept as the job's
/// error, and the job is refused, as [`Error::InvalidArgument`], when it is put.
///
/// ```
/// use pq_api::{IntoWhen, NewJob, When};
/// use std::time::Duration;
/// assert_eq!("2m".into_when()?, When::In(Duration::from_secs(120)));
/// let job = NewJob::new("reports", &42)?.run_at("1h").expected_at("2026-12-01T09:00:00Z");
/// assert!(job.validate().is_ok());
/// assert!(NewJob::new("reports", &42)?.expected_at("soon").validate().is_err());
/// # Ok::<(), pq_api::Error>(())
/// ```
pub trait IntoWhen {
    /// The time this stands for, or why it stands for none.
    fn into_when(self) -> Result<When>;
}

impl IntoWhen for When {
    fn into_when(self) -> Result<When> {
        Ok(self)
    }
}

impl IntoWhen for DateTime<Utc> {
    fn into_when(self) -> Result<When> {
        Ok(When::At(self))
    }
}

impl IntoWhen for Duration {
    fn into_when(self) -> Result<When> {
        Ok(When::In(self))
    }
}

impl IntoWhen for &str {
    fn into_when(self) -> Result<When> {
        self.parse()
    }
}

impl IntoWhen for &String {
    fn into_when(self) -> Result<When> {
        self.parse()
    }
}

impl IntoWhen for String {
    fn into_when(self) -> Result<When> {
        self.parse()
    }
}

/// What a delay option takes ([`TaskDefaults::retry_in`](crate::TaskDefaults::retry_in)): a
/// [`Duration`], or a string such as `"30s"` or `"1h 30m"`.
///
/// ```
/// use pq_api::IntoDelay;
/// use std::time::Duration;
/// assert_eq!("2m".into_delay()?, Duration::from_secs(120));
/// assert!("later".into_delay().is_err());
/// # Ok::<(), pq_api::Error>(())
/// ```
pub trait IntoDelay {
    /// The delay this stands for, or why it stands for none.
    fn into_delay(self) -> Result<Duration>;
}

impl IntoDelay for Duration {
    fn into_delay(self) -> Result<Duration> {
        Ok(self)
    }
}

impl IntoDelay for &str {
    fn into_delay(self) -> Result<Duration> {
        humantime::parse_duration(self.trim()).map_err(|_| {
            Error::invalid(
                "delay",
                format!("{self:?} is not a duration like \"30s\" or \"1h 30m\""),
            )
        })
    }
}

impl IntoDelay for &String {
    fn into_delay(self) -> Result<Duration> {
        self.as_str().into_delay()
    }
}

impl IntoDelay for String {
    fn into_delay(self) -> Result<Duration> {
        self.as_str().into_delay()
    }
}

/// The first option a builder was given that stands for nothing, kept for when the builder
/// is used: which option, and why.
pub(crate) type BadOption = Option<(&'static str, String)>;

/// Sets `slot` from `value`, or records in `bad` (if nothing is recorded yet) why not.
pub(crate) fn set_option<T>(
    slot: &mut Option<T>,
    bad: &mut BadOption,
    what: &'static str,
    value: Result<T>,
) {
    match value {
        Ok(v) => *slot = Some(v),
        Err(e) => {
            if bad.is_none() {
                let reason = match e {
                    Error::InvalidArgument { reason, .. } => reason,
                    other => other.to_string(),
                };
                *bad = Some((what, reason));
            }
        }
    }
}

/// How long a job holds its uniqueness key ([`NewJob::unique`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Unique {
    /// From when it is put until it first starts (a job waiting for a retry has started).
    WhilePending,
    /// From when it is put until it completes, fails for good, or is cancelled or purged:
    /// while it is pending or running.
    WhileActive,
    /// For this long after it is put, whatever becomes of it, completed included; kept to
    /// the microsecond.
    For(Duration),
}

impl Unique {
    /// The scope as one number, as the SQL stores keep it: -1 while pending, -2 while
    /// active, else the period in µs.
    pub fn code(self) -> i64 {
        match self {
            Unique::WhilePending => -1,
            Unique::WhileActive => -2,
            Unique::For(d) => micros(d),
        }
    }

    /// The scope [`Unique::code`] stands for, if any.
    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            -1 => Some(Unique::WhilePending),
            -2 => Some(Unique::WhileActive),
            us => u64::try_from(us)
                .ok()
                .filter(|&us| us > 0)
                .map(|us| Unique::For(Duration::from_micros(us))),
        }
    }
}

/// A job to enqueue: the parameters of [`QueueStore::put_many`](crate::QueueStore::put_many).
///
/// ```
/// use pq_api::NewJob;
/// let job = NewJob::new("emails", &serde_json::json!({"to": "ada@example.com"}))?
///     .delay("5m")?
///     .priority(10)
///     .max_attempts(3);
/// assert_eq!(job.priority, 10);
/// # Ok::<(), pq_api::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct NewJob {
    /// The queue it goes to.
    pub queue: String,
    /// Its JSON payload.
    pub payload: Value,
    /// Not claimable before this (`None`: at once).
    pub run_at: Option<When>,
    /// Higher runs first; default 0.
    pub priority: i32,
    /// A deadline: among equal priorities, earlier deadlines run first and jobs without one last.
    pub expected_at: Option<When>,
    /// How many attempts the job gets before it is left failed; at least 1.
    pub max_attempts: u32,
    /// Jobs of one queue sharing a serial key run one at a time, in claim order.
    pub serial_key: Option<String>,
    /// A serial key that also keeps at most one pending job: see [`NewJob::cursor_key`].
    pub cursor_key: Option<String>,
    /// Keep a record of the job for this long once it completes (see
    /// [`QueueStore::finished`](crate::QueueStore::finished)); `None`: no record.
    pub keep_history: Option<Duration>,
    /// The longest one attempt may run ([`NewJob::timeout`]); `None`: the task's default, if
    /// any.
    pub timeout: Option<Duration>,
    /// A uniqueness key and how long the job holds it: see [`NewJob::unique`].
    pub unique: Option<(String, Unique)>,
    /// A time option given a string that is no time: the job is refused when put.
    bad_option: BadOption,
}

impl NewJob {
    /// A job for `queue` carrying `payload` serialized to JSON.
    pub fn new(queue: impl Into<String>, payload: &impl Serialize) -> Result<Self> {
        Ok(Self::from_json(queue, serde_json::to_value(payload)?))
    }

    /// A job for `queue` carrying a JSON value as it is.
    pub fn from_json(queue: impl Into<String>, payload: Value) -> Self {
        NewJob {
            queue: queue.into(),
            payload,
            run_at: None,
            priority: 0,
            expected_at: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            serial_key: None,
            cursor_key: None,
            keep_history: None,
            timeout: None,
            unique: None,
            bad_option: None,
        }
    }

    /// Runs the job one at a time with the queue's other jobs of this serial key
    /// (PyPGQueue's serialization key): while one of them is running under a live lease, no
    /// other is claimed, and they are claimed in claim order. Jobs without a key, and jobs of
    /// other keys, are not held up. Replaces a cursor key set before.
    pub fn serial_key(mut self, key: impl Into<String>) -> Self {
        self.serial_key = Some(key.into());
        self.cursor_key = None;
        self
    }

    /// A serial key that also keeps at most one *pending* job (put and not yet started) per
    /// key (psycopg2_mq's cursor key): putting a job while one with the key is pending adds
    /// nothing and returns the pending job's id (a job that has started, and is running or
    /// waiting for a retry, no longer counts as pending). The key also carries a persistent
    /// JSON state, handed to each job when claimed and saved when it completes
    /// ([`Done::key_state`]). Replaces a serial key set before.
    pub fn cursor_key(mut self, key: impl Into<String>) -> Self {
        self.cursor_key = Some(key.into());
        self.serial_key = None;
        self
    }

    /// Keeps a record of the job, with its result, for `retention` after it completes.
    pub fn keep_history(mut self, retention: Duration) -> Self {
        self.keep_history = Some(retention);
        self
    }

    /// The job's key, serial or cursor, and whether it is a cursor key.
    pub fn key(&self) -> Option<(&str, bool)> {
        match (&self.serial_key, &self.cursor_key) {
            (_, Some(k)) => Some((k, true)),
            (Some(k), None) => Some((k, false)),
            (None, None) => None,
        }
    }

    /// The longest one attempt at the job may run: a [`Duration`] or a string such as
    /// `"30s"` ([`IntoDelay`]; one that is no duration has the job refused when it is put).
    /// Past it the worker tells the handler ([`Cancelled::Timeout`](crate::Cancelled)),
    /// gives it the worker's [`abort_grace`](crate::Worker::abort_grace) to return, and
    /// counts the attempt as failed, "timed out after …". Overrides the task's
    /// [`TaskDefaults::timeout`](crate::TaskDefaults::timeout).
    pub fn timeout(mut self, limit: impl IntoDelay) -> Self {
        set_option(
            &mut self.timeout,
            &mut self.bad_option,
            "timeout",
            limit.into_delay(),
        );
        self
    }

    /// Makes the job unique by `key` in its queue for as long as `scope` says: while a job of
    /// the queue holds the key, putting another with it adds nothing and returns the holding
    /// job's id (for [`Unique::For`], even once that job has completed). Race-free: of
    /// concurrent puts of one key, in one call or many, one adds its job and the others get
    /// its id. A job's scope decides how long it holds its key, whatever the scope of the job
    /// put after it. On PostgreSQL a put in your transaction (`put_many_in`) holds the key's
    /// lock until the transaction ends, and needs it to run at READ COMMITTED (the default): at
    /// a stricter level, whose snapshot could hide a racing put, it is refused.
    ///
    /// Serial and cursor keys are another thing: a serial key orders jobs (one of the key
    /// runs at a time), and a cursor key folds a put into the key's pending job, much as
    /// `unique(key, Unique::WhilePending)` does, but it also orders the key's jobs and carries
    /// a state. A job may have a serial key and a uniqueness key; not a cursor key and one.
    ///
    /// ```
    /// use pq_api::{NewJob, Unique};
    /// use std::time::Duration;
    /// // One report per customer a day, whatever became of the last one.
    /// let job = NewJob::from_json("reports", serde_json::json!({"customer": 7}))
    ///     .unique("customer-7", Unique::For(Duration::from_secs(24 * 3600)));
    /// ```
    pub fn unique(mut self, key: impl Into<String>, scope: Unique) -> Self {
        self.unique = Some((key.into(), scope));
        self
    }

    /// Not claimable before `when`: a datetime, a [`Duration`] from now, or a string
    /// ([`IntoWhen`]: `"5m"`, an RFC 3339 datetime; one that is neither has the job refused
    /// when it is put).
    pub fn run_at(mut self, when: impl IntoWhen) -> Self {
        set_option(
            &mut self.run_at,
            &mut self.bad_option,
            "run_at",
            when.into_when(),
        );
        self
    }

    /// Not claimable before the given delay (`"5m"`) or datetime string has passed: as
    /// [`run_at`](NewJob::run_at), refusing a bad string at once.
    pub fn delay(self, when: &str) -> Result<Self> {
        Ok(self.run_at(when.parse::<When>()?))
    }

    /// Sets the priority: higher runs first.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the deadline that orders jobs of equal priority: the same forms as
    /// [`run_at`](NewJob::run_at) ([`IntoWhen`]).
    pub fn expected_at(mut self, when: impl IntoWhen) -> Self {
        set_option(
            &mut self.expected_at,
            &mut self.bad_option,
            "expected_at",
            when.into_when(),
        );
        self
    }

    /// Sets how many attempts the job gets.
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// Checks every field; stores call this before they change anything.
    pub fn validate(&self) -> Result<()> {
        if let Some((what, reason)) = &self.bad_option {
            return Err(Error::invalid(what, reason.clone()));
        }
        validate_queue_name(&self.queue)?;
        if self.max_attempts == 0 {
            return Err(Error::invalid("max_attempts", "must be at least 1"));
        }
        if i32::try_from(self.max_attempts).is_err() {
            return Err(Error::invalid("max_attempts", "must fit in an i32"));
        }
        if let Some(w) = &self.run_at {
            w.validate("run_at")?;
        }
        if let Some(w) = &self.expected_at {
            w.validate("expected_at")?;
        }
        if nesting(&self.payload) > MAX_PAYLOAD_NESTING {
            return Err(Error::invalid(
                "payload",
                format!("arrays and objects nest deeper than {MAX_PAYLOAD_NESTING} levels"),
            ));
        }
        validate_json("payload", &self.payload)?;
        if self.serial_key.is_some() && self.cursor_key.is_some() {
            return Err(Error::invalid(
                "key",
                "a job has a serial key or a cursor key, not both",
            ));
        }
        if let Some((key, _)) = self.key() {
            validate_key(key)?;
        }
        validate_span("keep_history", self.keep_history)?;
        validate_span("timeout", self.timeout)?;
        if let Some((key, scope)) = &self.unique {
            validate_key(key)?;
            if self.cursor_key.is_some() {
                return Err(Error::invalid(
                    "unique",
                    "a job has a cursor key or a uniqueness key, not both",
                ));
            }
            if let Unique::For(d) = scope {
                if d.as_micros() == 0 || *d > MAX_DURATION {
                    return Err(Error::invalid(
                        "unique",
                        "a period must be at least a microsecond and at most 100 years",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Checks an optional span (a retention, a time limit): longer than zero, at most
/// [`MAX_DURATION`].
pub(crate) fn validate_span(what: &'static str, span: Option<Duration>) -> Result<()> {
    match span {
        Some(d) if d.is_zero() || d > MAX_DURATION => Err(Error::invalid(
            what,
            "must be longer than zero and at most 100 years",
        )),
        _ => Ok(()),
    }
}

/// How deep arrays and objects may nest in a payload: what serde_json reads back (its
/// recursion limit), so that a job put is a job a worker can decode.
pub const MAX_PAYLOAD_NESTING: usize = 127;

/// How deep arrays and objects nest in `v` (0 for a scalar), counted no further than one
/// past [`MAX_PAYLOAD_NESTING`], so the recursion stays shallow whatever `v` holds.
fn nesting(v: &Value) -> usize {
    fn below(v: &Value, depth: usize) -> usize {
        if depth > MAX_PAYLOAD_NESTING {
            return depth;
        }
        let deepest = |children: &mut dyn Iterator<Item = &Value>| {
            children
                .map(|c| below(c, depth + 1))
                .max()
                .unwrap_or(depth + 1)
        };
        match v {
            Value::Array(a) => deepest(&mut a.iter()),
            Value::Object(o) => deepest(&mut o.values()),
            _ => depth,
        }
    }
    below(v, 0)
}

/// Checks JSON a store is to keep (a payload, a result, a key state, a progress report): no
/// NUL character in any string or object key, which PostgreSQL's `jsonb` cannot store.
/// `what` names it in the error.
pub fn validate_json(what: &'static str, v: &Value) -> Result<()> {
    if holds_nul(v) {
        return Err(Error::invalid(
            what,
            "holds a NUL character (\\u0000), which PostgreSQL cannot store",
        ));
    }
    Ok(())
}

/// Whether any string or object key in `v` holds a NUL character. Recursion (no allocation)
/// goes 32 levels deep; below that a stack of its own takes over, so no nesting depth
/// overflows the thread's.
fn holds_nul(v: &Value) -> bool {
    fn walk(v: &Value, depth: usize) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            _ if depth >= 32 => walk_deep(v),
            Value::Array(a) => a.iter().any(|c| walk(c, depth + 1)),
            Value::Object(o) => o
                .iter()
                .any(|(k, c)| k.contains('\0') || walk(c, depth + 1)),
            _ => false,
        }
    }
    fn walk_deep(v: &Value) -> bool {
        let mut left = vec![v];
        while let Some(v) = left.pop() {
            match v {
                Value::String(s) if s.contains('\0') => return true,
                Value::Array(a) => left.extend(a.iter()),
                Value::Object(o) => {
                    for (k, c) in o {
                        if k.contains('\0') {
                            return true;
                        }
                        left.push(c);
                    }
                }
                _ => {}
            }
        }
        false
    }
    walk(v, 0)
}

/// Checks a serial or cursor key: 1 to [`MAX_KEY_LEN`] bytes, no control characters.
pub fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(Error::invalid(
            "key",
            format!("must be 1 to {MAX_KEY_LEN} bytes, not {}", key.len()),
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(Error::invalid("key", "must not contain control characters"));
    }
    Ok(())
}

/// Checks a queue name: 1 to [`MAX_QUEUE_NAME_LEN`] bytes, no control characters.
pub fn validate_queue_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("queue name", "must not be empty"));
    }
    if name.len() > MAX_QUEUE_NAME_LEN {
        return Err(Error::invalid(
            "queue name",
            format!("{} bytes is longer than {MAX_QUEUE_NAME_LEN}", name.len()),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid(
            "queue name",
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Checks a delay ([`QueueStore::snooze`](crate::QueueStore::snooze)): at most
/// [`MAX_DURATION`].
pub fn validate_delay(delay: Duration) -> Result<()> {
    if delay > MAX_DURATION {
        return Err(Error::invalid("delay", "must be at most 100 years"));
    }
    Ok(())
}

/// Checks a lease or extension length: more than zero, at most [`MAX_DURATION`].
pub fn validate_lease(lease: Duration) -> Result<()> {
    if lease.is_zero() {
        return Err(Error::invalid("lease", "must be longer than zero"));
    }
    if lease > MAX_DURATION {
        return Err(Error::invalid("lease", "must be at most 100 years"));
    }
    Ok(())
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its `run_at`.
    Scheduled,
    /// Claimable now.
    Ready,
    /// Held under a live lease.
    Running,
    /// Out of attempts; kept for inspection until retried, cancelled, purged or pruned.
    Failed,
    /// Cancelled while it ran ([`QueueStore::cancel`](crate::QueueStore::cancel)); kept for
    /// inspection until cancelled again, purged or pruned, as a failed job is.
    Cancelled,
}

impl JobState {
    /// The lowercase name used in SQL and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Ready => "ready",
            JobState::Running => "running",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Parses [`JobState::as_str`] back.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "scheduled" => JobState::Scheduled,
            "ready" => JobState::Ready,
            "running" => JobState::Running,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            _ => return None,
        })
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job as the store holds it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// Its queue.
    pub queue: String,
    /// Its JSON payload, shared: cloning a job (as the in-memory store does for each claim)
    /// copies no part of it.
    pub payload: Arc<Value>,
    /// Its priority (higher first).
    pub priority: i32,
    /// Its deadline, if any.
    pub expected_at: Option<DateTime<Utc>>,
    /// The earliest time it may be claimed: its schedule while it waits, its lease expiry while
    /// it runs, the time it failed or was cancelled once it did.
    pub run_at: DateTime<Utc>,
    /// Its state now.
    pub state: JobState,
    /// How many times it has been claimed since it was put or last retried.
    pub attempts: u32,
    /// How many attempts it gets.
    pub max_attempts: u32,
    /// The error of its last failed attempt.
    pub last_error: Option<String>,
    /// When it was put.
    pub created_at: DateTime<Utc>,
    /// Its serial key, if it has one.
    pub serial_key: Option<String>,
    /// Its cursor key, if it has one.
    pub cursor_key: Option<String>,
    /// How long a record of it is kept once it completes.
    pub keep_history: Option<Duration>,
    /// The longest one attempt at it may run ([`NewJob::timeout`]).
    pub timeout: Option<Duration>,
    /// Its uniqueness key and how long it holds it ([`NewJob::unique`]).
    pub unique: Option<(String, Unique)>,
    /// What its handler last reported of its progress
    /// ([`TaskContext::progress`](crate::TaskContext::progress)), kept across attempts.
    pub progress: Option<Value>,
}

impl Job {
    /// A ready job with default options, for stores to fill in (the struct is
    /// `#[non_exhaustive]`, so stores outside this crate build jobs through this).
    pub fn new(
        id: JobId,
        queue: impl Into<String>,
        payload: impl Into<Arc<Value>>,
        at: DateTime<Utc>,
    ) -> Self {
        Job {
            id,
            queue: queue.into(),
            payload: payload.into(),
            priority: 0,
            expected_at: None,
            run_at: at,
            state: JobState::Ready,
            attempts: 0,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            last_error: None,
            created_at: at,
            serial_key: None,
            cursor_key: None,
            keep_history: None,
            timeout: None,
            unique: None,
            progress: None,
        }
    }

    /// The job's key, serial or cursor, and whether it is a cursor key.
    pub fn key(&self) -> Option<(&str, bool)> {
        match (&self.serial_key, &self.cursor_key) {
            (_, Some(k)) => Some((k, true)),
            (Some(k), None) => Some((k, false)),
            (None, None) => None,
        }
    }

    /// Decodes the payload into a typed value.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T> {
        Ok(T::deserialize(&*self.payload)?)
    }
}

/// Proof of holding one attempt at one job: a fencing token. Every claim of a job issues a new
/// token, so a holder whose lease expired and was reclaimed can change nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The job held.
    pub job_id: JobId,
    /// The token of this attempt.
    pub token: i64,
}

impl Lease {
    /// A fresh random token for a new attempt (the memory store's; the SQL stores' claim
    /// statement draws its own). Tokens are only ever compared together with the job id, so 64
    /// random bits make a collision between two attempts of one job negligible.
    pub fn new_token() -> i64 {
        fastrand::i64(..)
    }
}

/// A job handed out by [`QueueStore::claim`](crate::QueueStore::claim), with its lease.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ClaimedJob {
    /// The job, in state [`JobState::Running`], `attempts` already counting this one.
    pub job: Job,
    /// The lease to complete, fail, extend or release it with.
    pub lease: Lease,
    /// The state of the job's key when it was claimed (`Some(Value::Null)` if never set);
    /// `None` for a job without a key.
    pub key_state: Option<Value>,
}

impl ClaimedJob {
    /// Pairs a job with its lease.
    pub fn new(job: Job, lease: Lease) -> Self {
        ClaimedJob {
            job,
            lease,
            key_state: None,
        }
    }

    /// Sets the key state handed out with the job.
    pub fn with_key_state(mut self, state: Option<Value>) -> Self {
        self.key_state = state;
        self
    }

    /// The job's id.
    pub fn id(&self) -> JobId {
        self.job.id
    }

    /// When the lease runs out unless extended.
    pub fn lease_expires_at(&self) -> DateTime<Utc> {
        self.job.run_at
    }

    /// Decodes the payload into a typed value.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T> {
        self.job.payload()
    }
}

/// What to claim: the parameters of [`QueueStore::claim`](crate::QueueStore::claim).
///
/// ```
/// use pq_api::Claim;
/// use std::time::Duration;
/// let claim = Claim::new(["emails", "reports"]).limit(10).lease(Duration::from_secs(60));
/// assert_eq!(claim.limit, 10);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Claim {
    /// The queues to claim from.
    pub queues: Vec<String>,
    /// At most this many jobs (1 to [`MAX_CLAIM_LIMIT`]).
    pub limit: u32,
    /// How long each claimed job is held before others may claim it again.
    pub lease: Duration,
}

impl Claim {
    /// Claims one job from these queues under a [`DEFAULT_LEASE`].
    pub fn new<Q: Into<String>>(queues: impl IntoIterator<Item = Q>) -> Self {
        Claim {
            queues: queues.into_iter().map(Into::into).collect(),
            limit: 1,
            lease: DEFAULT_LEASE,
        }
    }

    /// Claims at most `limit` jobs.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = limit;
        self
    }

    /// Holds each job for `lease`.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Checks every field; stores call this before they change anything.
    pub fn validate(&self) -> Result<()> {
        if self.queues.is_empty() {
            return Err(Error::invalid("queues", "name at least one queue"));
        }
        for q in &self.queues {
            validate_queue_name(q)?;
        }
        if self.limit == 0 || self.limit > MAX_CLAIM_LIMIT {
            return Err(Error::invalid(
                "limit",
                format!("{} is not between 1 and {MAX_CLAIM_LIMIT}", self.limit),
            ));
        }
        validate_lease(self.lease)
    }

    /// The queue names without repeats, in the order first given.
    pub fn distinct_queues(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::with_capacity(self.queues.len());
        for q in &self.queues {
            if !out.contains(q) {
                out.push(q.clone());
            }
        }
        out
    }
}

/// How an attempt failed: the parameters of [`QueueStore::fail`](crate::QueueStore::fail).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Failure {
    /// What went wrong; recorded as the job's `last_error`.
    pub error: String,
    /// When to try again if attempts are left (`None`: at once).
    pub retry_at: Option<When>,
    /// Give up now: the job becomes [`JobState::Failed`] even with attempts left (a payload
    /// that can never decode, an error the handler marks as permanent).
    pub give_up: bool,
}

impl Failure {
    /// A failure with this message, retried at once if attempts are left.
    pub fn new(error: impl Into<String>) -> Self {
        Failure {
            error: error.into(),
            retry_at: None,
            give_up: false,
        }
    }

    /// Fails the job for good, whatever attempts are left; [`QueueStore::retry`](crate::QueueStore::retry)
    /// still restarts it.
    pub fn give_up(mut self) -> Self {
        self.give_up = true;
        self
    }

    /// Retries at `when` if attempts are left.
    pub fn retry_at(mut self, when: impl Into<When>) -> Self {
        self.retry_at = Some(when.into());
        self
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        match &self.retry_at {
            Some(w) => w.validate("retry_at"),
            None => Ok(()),
        }
    }

    /// The message as stores record it: each NUL character, which PostgreSQL's `text` cannot
    /// hold, replaced by U+FFFD (the replacement character), so that a handler's error is
    /// always recorded.
    ///
    /// ```
    /// use pq_api::Failure;
    /// assert_eq!(Failure::new("a\0b").recorded_error(), "a\u{fffd}b");
    /// assert_eq!(Failure::new("plain").recorded_error(), "plain");
    /// ```
    pub fn recorded_error(&self) -> Cow<'_, str> {
        if self.error.contains('\0') {
            Cow::Owned(self.error.replace('\0', "\u{fffd}"))
        } else {
            Cow::Borrowed(&self.error)
        }
    }
}

/// A job done: the parameters of [`QueueStore::complete_many`](crate::QueueStore::complete_many).
///
/// ```
/// use pq_api::{Done, JobId, Lease};
/// let lease = Lease { job_id: JobId(7), token: 42 };
/// let done = Done::new(lease)
///     .result(serde_json::json!({"sent": 3}))
///     .key_state(serde_json::json!({"cursor": "2026-11-23"}));
/// assert_eq!(done.lease, lease);
/// let plain: Done = lease.into();
/// assert!(plain.result.is_none());
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Done {
    /// The lease the job was claimed under.
    pub lease: Lease,
    /// What the job produced, kept in its history record (if it keeps one).
    pub result: Option<Value>,
    /// The new state of the job's key (serial or cursor), saved as the job completes; `None`
    /// leaves the state as it was. Ignored for a job without a key.
    pub key_state: Option<Value>,
}

impl Done {
    /// The job held by `lease` is done; nothing else to record.
    pub fn new(lease: Lease) -> Self {
        Done {
            lease,
            result: None,
            key_state: None,
        }
    }

    /// Records `result` in the job's history record.
    pub fn result(mut self, result: Value) -> Self {
        self.result = Some(result);
        self
    }

    /// Saves `state` as the new state of the job's key.
    pub fn key_state(mut self, state: Value) -> Self {
        self.key_state = Some(state);
        self
    }

    /// Checks what it records ([`validate_json`]); stores call this for every completion of
    /// a call before they change anything.
    pub fn validate(&self) -> Result<()> {
        if let Some(result) = &self.result {
            validate_json("result", result)?;
        }
        if let Some(state) = &self.key_state {
            validate_json("key_state", state)?;
        }
        Ok(())
    }
}

impl From<Lease> for Done {
    fn from(lease: Lease) -> Self {
        Done::new(lease)
    }
}

impl From<&Lease> for Done {
    fn from(lease: &Lease) -> Self {
        Done::new(*lease)
    }
}

/// The record of a completed job that asked to be kept ([`NewJob::keep_history`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FinishedJob {
    /// Its id.
    pub id: JobId,
    /// Its queue.
    pub queue: String,
    /// Its payload.
    pub payload: Arc<Value>,
    /// Its serial key, if it had one.
    pub serial_key: Option<String>,
    /// Its cursor key, if it had one.
    pub cursor_key: Option<String>,
    /// Its priority.
    pub priority: i32,
    /// The attempts it took, the successful one included.
    pub attempts: u32,
    /// What it produced ([`Done::result`]).
    pub result: Option<Value>,
    /// When it was put.
    pub created_at: DateTime<Utc>,
    /// When it completed.
    pub finished_at: DateTime<Utc>,
    /// When the record goes at the next [`QueueStore::cleanup_history`](crate::QueueStore::cleanup_history).
    pub keep_until: DateTime<Utc>,
}

impl FinishedJob {
    /// A record of `job`, done with `result` at `finished_at`, kept until `keep_until`: for
    /// stores outside this crate (the struct is `#[non_exhaustive]`).
    pub fn new(
        job: Job,
        result: Option<Value>,
        finished_at: DateTime<Utc>,
        keep_until: DateTime<Utc>,
    ) -> Self {
        FinishedJob {
            id: job.id,
            queue: job.queue,
            payload: job.payload,
            serial_key: job.serial_key,
            cursor_key: job.cursor_key,
            priority: job.priority,
            attempts: job.attempts,
            result,
            created_at: job.created_at,
            finished_at,
            keep_until,
        }
    }
}

/// How many jobs of one queue are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct QueueStats {
    /// Waiting for their `run_at`.
    pub scheduled: u64,
    /// Claimable now.
    pub ready: u64,
    /// Held under a live lease.
    pub running: u64,
    /// Out of attempts.
    pub failed: u64,
    /// Cancelled while they ran.
    pub cancelled: u64,
}

impl QueueStats {
    /// All jobs in the queue.
    pub fn total(&self) -> u64 {
        self.scheduled + self.ready + self.running + self.failed + self.cancelled
    }

    /// Each state with its count, in the order of [`JobState`]'s variants.
    ///
    /// ```
    /// use pq_api::{JobState, QueueStats};
    /// let mut stats = QueueStats::default();
    /// stats.add(JobState::Ready, 2);
    /// assert_eq!(stats.by_state()[1], (JobState::Ready, 2));
    /// ```
    pub fn by_state(&self) -> [(JobState, u64); 5] {
        [
            (JobState::Scheduled, self.scheduled),
            (JobState::Ready, self.ready),
            (JobState::Running, self.running),
            (JobState::Failed, self.failed),
            (JobState::Cancelled, self.cancelled),
        ]
    }

    /// Adds one job in `state`.
    pub fn add(&mut self, state: JobState, n: u64) {
        match state {
            JobState::Scheduled => self.scheduled += n,
            JobState::Ready => self.ready += n,
            JobState::Running => self.running += n,
            JobState::Failed => self.failed += n,
            JobState::Cancelled => self.cancelled += n,
        }
    }
}

/// A duration in whole microseconds, the resolution PostgreSQL keeps; saturates at `i64::MAX`.
pub fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::holds_nul;

    #[test]
    fn nul_characters_are_found_at_any_depth_in_strings_and_keys() {
        let nest =
            |inner, depth: usize| (0..depth).fold(inner, |v, i| json!({ format!("k{i}"): [v] }));
        for depth in [0, 1, 31, 32, 33, 200] {
            assert!(
                holds_nul(&nest(json!("a\u{0}"), depth)),
                "string at {depth}"
            );
            assert!(
                holds_nul(&nest(json!({"a\u{0}": 1}), depth)),
                "key at {depth}"
            );
            assert!(
                !holds_nul(&nest(json!({"a\\u0000": "b"}), depth)),
                "none at {depth}"
            );
        }
        assert!(!holds_nul(&json!([1, true, null, 2.5, "plain"])));
    }
}

//! # pq-memory: the in-memory `QueueStore`
//!
//! [`MemoryStore`] keeps the whole [`QueueStore`] contract in memory, with the same semantics
//! as the PostgreSQL stores (it passes the same conformance suite): swap it in for unit tests
//! through `Arc<dyn QueueStore>`. It is safe to share between tasks and threads, and
//! [`QueueStore::wait`] is woken without polling.
//!
//! ```
//! use pq_api::{Claim, QueueStore, QueueStoreExt};
//! use pq_memory::MemoryStore;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let store = MemoryStore::new();
//! let id = store.put("thumbnails", &serde_json::json!({"image": 7})).await?;
//! let claimed = store.claim(&Claim::new(["thumbnails"])).await?;
//! assert_eq!(claimed[0].id(), id);
//! store.complete(&claimed[0].lease).await?;
//! assert_eq!(store.stats("thumbnails").await?.total(), 0);
//! # Ok::<(), pq_api::Error>(())
//! # }).unwrap();
//! ```

use std::collections::hash_map::Entry as Slot;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, DurationRound, SubsecRound, TimeDelta, Utc};
use pq_api::validate::validate_queue_name;
use pq_api::{
    Claim, ClaimedJob, Done, Error, Failure, FinishedJob, Job, JobFilter, JobId, JobState, Lease,
    NewJob, Pruned, QueueConfig, QueueInfo, QueueSetting, QueueStats, QueueStore, Result, Tally,
    Throughput, Unique, DEFAULT_RETENTION, THROUGHPUT_KEPT,
};
use serde_json::Value;
use tokio::sync::{broadcast, Notify};
use tokio::time::Instant;

/// The claim order: priority descending, `expected_at` ascending (none last), `run_at`
/// ascending, id ascending. Timestamps in microseconds, as PostgreSQL keeps them.
type OrderKey = (i64, i64, i64, i64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    Queued,
    Running,
    Failed,
}

#[derive(Debug, Clone)]
struct Entry {
    job: Job,
    stored: Stored,
    token: Option<i64>,
    /// Cancelled while it ran (stored as failed, as the SQL stores keep it).
    cancelled: bool,
}

impl Entry {
    fn key(&self) -> OrderKey {
        let j = &self.job;
        (
            -i64::from(j.priority),
            j.expected_at.map_or(i64::MAX, |t| t.timestamp_micros()),
            j.run_at.timestamp_micros(),
            j.id.0,
        )
    }

    /// The contract's state, as `pq-api/src/postgres/sql/state.sql` computes it.
    fn state(&self, now: DateTime<Utc>) -> JobState {
        let j = &self.job;
        match self.stored {
            Stored::Failed if self.cancelled => JobState::Cancelled,
            Stored::Failed => JobState::Failed,
            Stored::Running if j.run_at > now => JobState::Running,
            _ if j.attempts >= j.max_attempts => JobState::Failed,
            _ if j.run_at > now => JobState::Scheduled,
            _ => JobState::Ready,
        }
    }

    fn claimable(&self, now: DateTime<Utc>) -> bool {
        self.stored != Stored::Failed
            && self.job.run_at <= now
            && self.job.attempts < self.job.max_attempts
    }

    /// The queue and key of a keyed job.
    fn key_id(&self) -> Option<KeyId> {
        self.job
            .key()
            .map(|(k, _)| (self.job.queue.clone(), k.to_owned()))
    }

    fn holds(&self, lease: &Lease) -> bool {
        self.stored == Stored::Running && self.token == Some(lease.token)
    }

    fn view(&self, now: DateTime<Utc>) -> Job {
        self.view_in(&self.job.queue, now)
    }

    /// The job as a caller sees it, its queue name copied from `queue` (the same name): a
    /// claim passes its own, already in cache, rather than read each job's copy.
    fn view_in(&self, queue: &str, now: DateTime<Utc>) -> Job {
        let j = &self.job;
        let mut job = Job::new(j.id, queue, j.payload.clone(), j.created_at);
        job.priority = j.priority;
        job.expected_at = j.expected_at;
        job.run_at = j.run_at;
        job.state = self.state(now);
        job.attempts = j.attempts;
        job.max_attempts = j.max_attempts;
        job.last_error.clone_from(&j.last_error);
        job.serial_key.clone_from(&j.serial_key);
        job.cursor_key.clone_from(&j.cursor_key);
        job.keep_history = j.keep_history;
        job.timeout = j.timeout;
        job.unique.clone_from(&j.unique);
        job.progress.clone_from(&j.progress);
        job
    }

    /// Whether the job ended badly (failed, cancelled, or out of attempts with its last lease
    /// run out) before `cutoff`.
    fn ended_before(&self, now: DateTime<Utc>, cutoff: DateTime<Utc>) -> bool {
        matches!(self.state(now), JobState::Failed | JobState::Cancelled)
            && self.job.run_at < cutoff
    }
}

/// `d` kept to the microsecond, as PostgreSQL keeps it.
fn to_micros(d: Duration) -> Duration {
    Duration::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A queue and a key: keys are per queue.
type KeyId = (String, String);

/// What the store keeps per key (the SQL stores' `<table>_keys` row).
#[derive(Debug, Default)]
struct KeyRow {
    /// The job holding the key, and until when.
    running: Option<(i64, DateTime<Utc>)>,
    state: Option<Value>,
}

impl KeyRow {
    /// Whether another job than `id` holds the key under a live lease.
    fn held_by_other(&self, id: i64, now: DateTime<Utc>) -> bool {
        self.running
            .is_some_and(|(holder, until)| holder != id && until > now)
    }
}

/// The claim index (the SQL stores' partial claim index and key index).
///
/// Unlike the SQL index, the per-queue order holds only the waiting jobs: a running job is
/// in `running` instead, a hash set, as most jobs complete before their leases run out. A
/// claim looks through `running` for leases that ran out only once `lease_floor` has
/// passed. (A running job in the ordered set cost a tree removal and insertion per claim
/// and a removal per completion, a large part of the in-memory worker's time.)
#[derive(Debug, Default)]
struct Index {
    /// Per queue, its waiting jobs (neither running nor failed) in claim order.
    order: HashMap<String, BTreeSet<OrderKey>, FastHash>,
    /// Per key, its non-failed jobs (running ones included) in claim order.
    by_key: HashMap<KeyId, BTreeSet<OrderKey>, FastHash>,
    /// The running jobs.
    running: HashSet<i64, FastHash>,
    /// No running job's lease runs out before this (microseconds; may be earlier than the
    /// earliest lease, never later).
    lease_floor: i64,
}

/// Where a job sits in the [`Index`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slots {
    /// In its queue's order, if it waits.
    order: Option<OrderKey>,
    /// In its key's order, if it is not failed.
    key: Option<OrderKey>,
    /// Whether it runs.
    running: bool,
}

impl Slots {
    const NONE: Slots = Slots {
        order: None,
        key: None,
        running: false,
    };

    fn of(entry: &Entry) -> Slots {
        let key = (entry.stored != Stored::Failed).then(|| entry.key());
        let running = entry.stored == Stored::Running;
        Slots {
            order: key.filter(|_| !running),
            key,
            running,
        }
    }
}

impl Index {
    /// Moves `entry` of `queue` (its own, or the same name from elsewhere) from slots
    /// `before` to slots `after`.
    fn shift(&mut self, queue: &str, entry: &Entry, before: Slots, after: Slots) {
        if after.running {
            // A lease may also have been shortened (extended by less than was left).
            self.lease_floor = self.lease_floor.min(entry.job.run_at.timestamp_micros());
        }
        if before == after {
            return;
        }
        if before.running != after.running {
            if after.running {
                if self.running.is_empty() {
                    self.lease_floor = entry.job.run_at.timestamp_micros();
                }
                self.running.insert(entry.job.id.0);
            } else {
                self.running.remove(&entry.job.id.0);
            }
        }
        if before.order != after.order {
            match self.order.get_mut(queue) {
                Some(set) => move_in(set, before.order, after.order),
                None => {
                    if let Some(new) = after.order {
                        self.order.insert(queue.to_owned(), BTreeSet::from([new]));
                    }
                }
            }
        }
        if before.key == after.key {
            return;
        }
        if let Some(k) = entry.key_id() {
            match self.by_key.entry(k) {
                Slot::Occupied(mut set) => {
                    move_in(set.get_mut(), before.key, after.key);
                    if set.get().is_empty() {
                        set.remove();
                    }
                }
                Slot::Vacant(v) => {
                    if let Some(new) = after.key {
                        v.insert(BTreeSet::from([new]));
                    }
                }
            }
        }
    }
}

/// Moves a job within one index set, from `before` to `after`.
fn move_in(set: &mut BTreeSet<OrderKey>, before: Option<OrderKey>, after: Option<OrderKey>) {
    if let Some(old) = before {
        set.remove(&old);
    }
    if let Some(new) = after {
        set.insert(new);
    }
}

/// Hashes the store's map keys (job ids, queue names, keys) without SipHash: this store
/// lives in a test process and holds no outsider's keys, so there is no flooding to resist.
#[derive(Debug, Default, Clone, Copy)]
struct FastHash;

impl std::hash::BuildHasher for FastHash {
    type Hasher = FastHasher;
    fn build_hasher(&self) -> FastHasher {
        FastHasher(0)
    }
}

/// The hasher of [`FastHash`].
#[derive(Debug)]
struct FastHasher(u64);

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(GOLDEN);
        }
    }

    fn write_i64(&mut self, id: i64) {
        // hashbrown picks the bucket from the low bits and a tag from the top 7. The id
        // itself in the low bits puts consecutive jobs in neighbouring buckets, so a claim
        // or completion of a batch (consecutive ids, mostly) walks memory in order instead of
        // missing the cache once per job; the top bits come from a multiplication so the
        // tags still tell neighbours apart.
        let id = u64::from_ne_bytes(id.to_ne_bytes());
        self.0 = id ^ (id.wrapping_mul(GOLDEN) & !(u64::MAX >> 7));
    }
}

#[derive(Debug, Default)]
struct Inner {
    next_id: i64,
    jobs: HashMap<i64, Entry, FastHash>,
    index: Index,
    keys: HashMap<KeyId, KeyRow, FastHash>,
    /// Per cursor key, its pending job: put and never claimed.
    pending: HashMap<KeyId, i64, FastHash>,
    /// Per uniqueness key held for a period, the job put last with it and the period's end.
    periods: HashMap<KeyId, (i64, DateTime<Utc>), FastHash>,
    history: HashMap<i64, FinishedJob, FastHash>,
    /// Per queue with settings, its settings.
    configs: HashMap<String, QueueConfig, FastHash>,
    /// Per limited queue, the places taken (the SQL stores' `<table>_slots`).
    places: HashMap<String, Places, FastHash>,
    /// The retention of queues without their own; `None`: [`DEFAULT_RETENTION`].
    retention: Option<Duration>,
    /// Per minute and queue, the jobs workers reported finished: completed, failed.
    throughput: BTreeMap<(DateTime<Utc>, String), (u64, u64)>,
}

/// The places of a limited queue that are taken.
#[derive(Debug, Default)]
struct Places {
    /// Under its concurrency limit: the job, its lease token, until when.
    running: Vec<(i64, i64, DateTime<Utc>)>,
    /// Under its rate limit: until when each start counts.
    started: Vec<DateTime<Utc>>,
}

impl Places {
    /// Drops the places whose time has passed.
    fn expire(&mut self, now: DateTime<Utc>) {
        self.running.retain(|p| p.2 > now);
        self.started.retain(|&until| until > now);
    }

    /// Frees the concurrency place of the job `id` held under `token`.
    fn free(&mut self, id: i64, token: Option<i64>) -> bool {
        let before = self.running.len();
        self.running.retain(|p| !(p.0 == id && Some(p.1) == token));
        self.running.len() != before
    }
}

impl Inner {
    /// The job holding the uniqueness key `key` of `queue` now ([`NewJob::unique`]): one put
    /// with a period that has not ended, else the first pending (or, for
    /// [`Unique::WhileActive`], running) job put with it.
    fn unique_holder(&self, queue: &str, key: &str, now: DateTime<Utc>) -> Option<i64> {
        let id = (queue.to_owned(), key.to_owned());
        if let Some(&(job, until)) = self.periods.get(&id) {
            if until > now {
                return Some(job);
            }
        }
        self.jobs
            .values()
            .filter(|e| e.job.queue == queue && e.stored != Stored::Failed)
            .filter(|e| e.state(now) != JobState::Failed)
            .filter(|e| match &e.job.unique {
                Some((k, Unique::WhileActive)) => k == key,
                Some((k, Unique::WhilePending)) => k == key && e.token.is_none(),
                _ => false,
            })
            .map(|e| e.job.id.0)
            .min()
    }

    /// How many more jobs of `queue` a claim may start now (`None`: no limit), after
    /// dropping the places whose time has passed.
    fn room(&mut self, queue: &str, now: DateTime<Utc>) -> Option<usize> {
        let config = self.configs.get(queue)?;
        let (conc, rate) = (config.concurrency, config.rate);
        if conc.is_none() && rate.is_none() {
            return None;
        }
        let places = self.places.entry(queue.to_owned()).or_default();
        places.expire(now);
        let left = |limit: u32, taken: usize| {
            usize::try_from(limit)
                .unwrap_or(usize::MAX)
                .saturating_sub(taken)
        };
        let c = conc.map(|n| left(n, places.running.len()));
        let r = rate.map(|r| left(r.jobs, places.started.len()));
        c.into_iter().chain(r).min()
    }

    /// When `queue` next has room for a job: `None` if never (paused), the distant past if
    /// now or unlimited.
    fn gate(&self, queue: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let Some(config) = self.configs.get(queue) else {
            return Some(DateTime::<Utc>::MIN_UTC);
        };
        if config.paused {
            return None;
        }
        let empty = Places::default();
        let places = self.places.get(queue).unwrap_or(&empty);
        // The time the `limit`-th latest place is free: the earliest `until` among those taken
        // once there are `limit` of them.
        let free_at = |limit: u32, mut untils: Vec<DateTime<Utc>>| {
            untils.retain(|&u| u > now);
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            if untils.len() < limit {
                return DateTime::<Utc>::MIN_UTC;
            }
            untils.sort_unstable();
            untils[untils.len() - limit]
        };
        let mut at = DateTime::<Utc>::MIN_UTC;
        if let Some(n) = config.concurrency {
            at = at.max(free_at(n, places.running.iter().map(|p| p.2).collect()));
        }
        if let Some(r) = config.rate {
            at = at.max(free_at(r.jobs, places.started.clone()));
        }
        Some(at)
    }

    /// Frees the concurrency place the job `id` held under `token`; true if one was freed.
    fn unseat(&mut self, queue: &str, id: i64, token: Option<i64>) -> bool {
        self.places
            .get_mut(queue)
            .is_some_and(|p| p.free(id, token))
    }

    fn index(&mut self, entry: &Entry) {
        self.index
            .shift(&entry.job.queue, entry, Slots::NONE, Slots::of(entry));
    }

    fn unindex(&mut self, entry: &Entry) {
        self.index
            .shift(&entry.job.queue, entry, Slots::of(entry), Slots::NONE);
    }

    /// Whether a claim may take this claimable job: it has no key, or it comes first among
    /// its key's claimable jobs and no other job holds the key.
    fn key_allows(&self, entry: &Entry, now: DateTime<Utc>) -> bool {
        let Some(k) = entry.key_id() else {
            return true;
        };
        if self
            .keys
            .get(&k)
            .is_some_and(|row| row.held_by_other(entry.job.id.0, now))
        {
            return false;
        }
        let head = self.index.by_key.get(&k).and_then(|set| {
            set.iter()
                .find(|o| self.jobs.get(&o.3).is_some_and(|e| e.claimable(now)))
        });
        head.is_some_and(|o| o.3 == entry.job.id.0)
    }

    /// Frees the key job `id` holds, saving `state` if given; true if a key was freed.
    fn free_key(&mut self, key: Option<KeyId>, id: i64, state: Option<Value>) -> bool {
        let Some(row) = key.and_then(|k| self.keys.get_mut(&k)) else {
            return false;
        };
        if row.running.is_none_or(|(holder, _)| holder != id) {
            return false;
        }
        row.running = None;
        if state.is_some() {
            row.state = state;
        }
        true
    }

    /// Applies `change` to a job in place, keeping the order index in step.
    fn update<T>(&mut self, id: i64, change: impl FnOnce(&mut Entry) -> T) -> Option<T> {
        self.update_in(id, None, |e, _| change(e))
    }

    /// [`Inner::update`] for a job known to be in `queue` (the claim's name for it, so the
    /// job's own copy is not read); `change` gets the queue name too.
    fn update_in<T>(
        &mut self,
        id: i64,
        queue: Option<&str>,
        change: impl FnOnce(&mut Entry, &str) -> T,
    ) -> Option<T> {
        let entry = self.jobs.get_mut(&id)?;
        // `change` may not rename the queue, but it holds the entry mutably: a copy.
        let own;
        let queue = match queue {
            Some(q) => q,
            None => {
                own = entry.job.queue.clone();
                own.as_str()
            }
        };
        let before = Slots::of(entry);
        let out = change(entry, queue);
        self.index.shift(queue, entry, before, Slots::of(entry));
        Some(out)
    }

    fn remove(&mut self, id: i64) -> Option<Entry> {
        let entry = self.jobs.remove(&id)?;
        self.unindex(&entry);
        if let Some(k) = entry.key_id() {
            if self.pending.get(&k) == Some(&id) {
                self.pending.remove(&k);
            }
        }
        Some(entry)
    }

    fn held(&self, lease: &Lease) -> Result<&Entry> {
        self.jobs
            .get(&lease.job_id.0)
            .filter(|e| e.holds(lease))
            .ok_or_else(|| self.lost(lease))
    }

    /// The earliest time a job of `queues` may be claimable: a keyed job not before a live
    /// lease on its key runs out.
    fn next_run(&self, queues: &[String]) -> Option<DateTime<Utc>> {
        let now = Utc::now();
        let gates: HashMap<&str, DateTime<Utc>> = queues
            .iter()
            .filter_map(|q| self.gate(q, now).map(|g| (q.as_str(), g)))
            .collect();
        let waiting = queues
            .iter()
            .filter_map(|q| self.index.order.get(q))
            .flat_map(|set| set.iter())
            .filter_map(|k| self.jobs.get(&k.3));
        let running = self
            .index
            .running
            .iter()
            .filter_map(|id| self.jobs.get(id))
            .filter(|e| queues.contains(&e.job.queue));
        waiting
            .chain(running)
            .filter(|e| e.job.attempts < e.job.max_attempts)
            .filter_map(|e| {
                let gate = *gates.get(e.job.queue.as_str())?;
                let held = e
                    .key_id()
                    .and_then(|k| self.keys.get(&k))
                    .and_then(|row| row.running)
                    .filter(|&(_, until)| until > now)
                    .map(|(_, until)| until);
                let at = held.map_or(e.job.run_at, |until| until.max(e.job.run_at));
                Some(at.max(gate))
            })
            .min()
    }

    /// The error for a lease that holds nothing: [`Error::Cancelled`] if its job was
    /// cancelled under it.
    fn lost(&self, lease: &Lease) -> Error {
        match self.jobs.get(&lease.job_id.0) {
            Some(e) if e.cancelled && e.token == Some(lease.token) => {
                Error::Cancelled(lease.job_id)
            }
            _ => Error::LeaseLost(lease.job_id),
        }
    }
}

/// The in-memory store. Cloning gives another handle on the same jobs.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    wake: Arc<Notify>,
    /// The ids of running jobs cancelled, for [`QueueStore::cancel_requested`].
    cancels: broadcast::Sender<i64>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            inner: Arc::default(),
            wake: Arc::default(),
            cancels: broadcast::channel(256).0,
        }
    }
}

fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn after(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    // Whole microseconds, the resolution PostgreSQL keeps; validated durations fit.
    now + TimeDelta::microseconds(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long [`QueueStore::prune`] keeps failed and cancelled jobs of queues without a
    /// retention of their own; default [`DEFAULT_RETENTION`]. Rejects a period of zero or
    /// above [`MAX_DURATION`](pq_api::MAX_DURATION).
    pub fn set_retention(&self, retention: Duration) -> Result<()> {
        QueueSetting::Retention(Some(retention)).validate()?;
        self.lock().retention = Some(retention);
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied change (every change is
        // applied through `Inner::update`), so a poisoned lock is safe to keep using.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl QueueStore for MemoryStore {
    async fn put_many(&self, jobs: Vec<NewJob>) -> Result<Vec<JobId>> {
        for job in &jobs {
            job.validate()?;
        }
        // Valid, the jobs are put: nothing below fails.
        pq_api::metrics::record_put(jobs.iter().map(|j| j.queue.as_str()));
        let now = now();
        let mut ids = Vec::with_capacity(jobs.len());
        {
            let mut inner = self.lock();
            for new in jobs {
                let key = new
                    .key()
                    .map(|(k, cursor)| ((new.queue.clone(), k.to_owned()), cursor));
                if let Some((k, true)) = &key {
                    if let Some(&pending) = inner.pending.get(k) {
                        ids.push(JobId(pending));
                        continue;
                    }
                }
                if let Some((k, _)) = &new.unique {
                    if let Some(holder) = inner.unique_holder(&new.queue, k, now) {
                        ids.push(JobId(holder));
                        continue;
                    }
                }
                inner.next_id += 1;
                let id = inner.next_id;
                let mut job = Job::new(JobId(id), new.queue, new.payload, now);
                job.priority = new.priority;
                job.expected_at = new.expected_at.map(|w| w.resolve(now).trunc_subsecs(6));
                job.run_at = new.run_at.map_or(now, |w| w.resolve(now).trunc_subsecs(6));
                job.max_attempts = new.max_attempts;
                job.serial_key = new.serial_key;
                job.cursor_key = new.cursor_key;
                job.keep_history = new.keep_history;
                // Kept to the microsecond, as PostgreSQL keeps it.
                job.timeout = new.timeout.map(to_micros);
                job.unique = new.unique.map(|(k, scope)| match scope {
                    Unique::For(d) => (k, Unique::For(to_micros(d))),
                    other => (k, other),
                });
                if let Some((k, Unique::For(d))) = &job.unique {
                    let until = TimeDelta::from_std(*d)
                        .ok()
                        .and_then(|d| now.checked_add_signed(d))
                        .unwrap_or(DateTime::<Utc>::MAX_UTC);
                    let held = (job.queue.clone(), k.clone());
                    inner.periods.insert(held, (id, until));
                }
                let entry = Entry {
                    job,
                    stored: Stored::Queued,
                    token: None,
                    cancelled: false,
                };
                if let Some((k, cursor)) = key {
                    if cursor {
                        inner.pending.insert(k.clone(), id);
                    }
                    inner.keys.entry(k).or_default();
                }
                inner.index(&entry);
                inner.jobs.insert(id, entry);
                ids.push(JobId(id));
            }
        }
        self.wake.notify_waiters();
        Ok(ids)
    }

    async fn claim(&self, claim: &Claim) -> Result<Vec<ClaimedJob>> {
        claim.validate()?;
        let now = now();
        let limit = usize::try_from(claim.limit).unwrap_or(usize::MAX);
        let mut inner = self.lock();
        let queues = claim.distinct_queues();
        // What each queue may start: nothing if paused, its room if limited.
        let rooms: Vec<Option<usize>> = queues
            .iter()
            .map(|q| match inner.configs.get(q) {
                Some(c) if c.paused => Some(0),
                _ => inner.room(q, now),
            })
            .collect();
        // Sized for one queue's worth up front: grown from empty, its reallocations were
        // ~8% of the in-memory worker's time in a profile.
        let mut picked: Vec<(OrderKey, usize)> = Vec::with_capacity(limit);
        let now_us = now.timestamp_micros();
        if inner.index.lease_floor <= now_us {
            // Some lease may have run out: its job is claimable again, in claim order with
            // the waiting ones. The floor becomes the earliest lease left running (an expired
            // one not taken below keeps it in the past, and the next claim looks again).
            let mut floor = i64::MAX;
            for id in &inner.index.running {
                let Some(e) = inner.jobs.get(id) else {
                    continue;
                };
                let until = e.job.run_at.timestamp_micros();
                floor = floor.min(until);
                if until > now_us {
                    continue;
                }
                let Some(qi) = queues.iter().position(|q| *q == e.job.queue) else {
                    continue;
                };
                if rooms[qi] == Some(0) {
                    continue;
                }
                if e.claimable(now) && inner.key_allows(e, now) {
                    picked.push((e.key(), qi));
                }
            }
            inner.index.lease_floor = floor;
        }
        for (qi, q) in queues.iter().enumerate() {
            let Some(set) = inner.index.order.get(q) else {
                continue;
            };
            let take = rooms[qi].map_or(limit, |room| room.min(limit));
            picked.extend(
                set.iter()
                    .filter(|k| {
                        inner
                            .jobs
                            .get(&k.3)
                            .is_some_and(|e| e.claimable(now) && inner.key_allows(e, now))
                    })
                    .take(take)
                    .map(|&k| (k, qi)),
            );
        }
        picked.sort_unstable();
        if rooms.iter().any(Option::is_some) {
            let mut left = rooms.clone();
            picked.retain(|&(_, qi)| match &mut left[qi] {
                Some(0) => false,
                Some(n) => {
                    *n -= 1;
                    true
                }
                None => true,
            });
        }
        picked.truncate(limit);
        let token = Lease::new_token();
        let expires = after(now, claim.lease);
        let mut out = Vec::with_capacity(picked.len());
        for (order, qi) in picked {
            let id = order.3;
            let claimed = inner.update_in(id, Some(&queues[qi]), |e, queue| {
                e.stored = Stored::Running;
                e.token = Some(token);
                e.job.attempts += 1;
                e.job.run_at = expires;
                let lease = Lease {
                    job_id: e.job.id,
                    token,
                };
                (ClaimedJob::new(e.view_in(queue, now), lease), e.key_id())
            });
            let Some((mut claimed, key)) = claimed else {
                continue;
            };
            if rooms[qi].is_some() {
                let rate = inner.configs.get(&queues[qi]).and_then(|c| c.rate);
                let places = inner.places.entry(queues[qi].clone()).or_default();
                places.running.push((id, token, expires));
                if let Some(rate) = rate {
                    places.started.push(after(now, rate.per));
                }
            }
            if let Some(k) = key {
                if inner.pending.get(&k) == Some(&id) {
                    inner.pending.remove(&k);
                }
                let row = inner.keys.entry(k).or_default();
                row.running = Some((id, expires));
                claimed = claimed.with_key_state(Some(row.state.clone().unwrap_or(Value::Null)));
            }
            out.push(claimed);
        }
        Ok(out)
    }

    async fn complete_many(&self, done: &[Done]) -> Result<Vec<JobId>> {
        done.iter().try_for_each(Done::validate)?;
        let now = now();
        let mut freed = false;
        let mut completed = Vec::with_capacity(done.len());
        {
            let mut inner = self.lock();
            for d in done {
                if inner.held(&d.lease).is_err() {
                    continue;
                }
                let Some(entry) = inner.remove(d.lease.job_id.0) else {
                    continue;
                };
                freed |= inner.free_key(entry.key_id(), entry.job.id.0, d.key_state.clone());
                freed |= inner.unseat(&entry.job.queue, entry.job.id.0, entry.token);
                if let Some(keep) = entry.job.keep_history {
                    let record =
                        FinishedJob::new(entry.job, d.result.clone(), now, after(now, keep));
                    inner.history.insert(record.id.0, record);
                }
                completed.push(d.lease.job_id);
            }
        }
        if freed {
            self.wake.notify_waiters();
        }
        Ok(completed)
    }

    async fn fail(&self, lease: &Lease, failure: Failure) -> Result<JobState> {
        failure.validate()?;
        let now = now();
        let state = {
            let mut inner = self.lock();
            let held = inner.held(lease)?;
            let (key, queue) = (held.key_id(), held.job.queue.clone());
            inner.free_key(key, lease.job_id.0, None);
            inner.unseat(&queue, lease.job_id.0, Some(lease.token));
            inner.update(lease.job_id.0, |e| {
                e.job.last_error = Some(failure.recorded_error().into_owned());
                if !failure.give_up && e.job.attempts < e.job.max_attempts {
                    e.stored = Stored::Queued;
                    e.job.run_at = failure
                        .retry_at
                        .map_or(now, |w| w.resolve(now).trunc_subsecs(6));
                } else {
                    e.stored = Stored::Failed;
                    e.job.run_at = now;
                }
                e.state(now)
            })
        };
        self.wake.notify_waiters();
        state.ok_or(Error::LeaseLost(lease.job_id))
    }

    async fn extend(&self, lease: &Lease, lease_for: Duration) -> Result<DateTime<Utc>> {
        pq_api::validate::validate_lease(lease_for)?;
        let expires = after(now(), lease_for);
        let mut inner = self.lock();
        let held = inner.held(lease)?;
        let (key, queue) = (held.key_id(), held.job.queue.clone());
        if let Some(places) = inner.places.get_mut(&queue) {
            for p in &mut places.running {
                if p.0 == lease.job_id.0 && p.1 == lease.token {
                    p.2 = expires;
                }
            }
        }
        if let Some(row) = key.and_then(|k| inner.keys.get_mut(&k)) {
            if let Some((holder, until)) = row.running.as_mut() {
                if *holder == lease.job_id.0 {
                    *until = expires;
                }
            }
        }
        inner
            .update(lease.job_id.0, |e| e.job.run_at = expires)
            .map(|()| expires)
            .ok_or(Error::LeaseLost(lease.job_id))
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        self.snooze(lease, Duration::ZERO).await
    }

    async fn snooze(&self, lease: &Lease, delay: Duration) -> Result<()> {
        pq_api::validate::validate_delay(delay)?;
        let now = now();
        let at = (now + TimeDelta::from_std(delay).unwrap_or(TimeDelta::MAX)).trunc_subsecs(6);
        {
            let mut inner = self.lock();
            let held = inner.held(lease)?;
            let (key, queue) = (held.key_id(), held.job.queue.clone());
            inner.free_key(key, lease.job_id.0, None);
            inner.unseat(&queue, lease.job_id.0, Some(lease.token));
            inner.update(lease.job_id.0, |e| {
                e.stored = Stored::Queued;
                e.job.attempts = e.job.attempts.saturating_sub(1);
                e.job.run_at = at;
            });
        }
        self.wake.notify_waiters();
        Ok(())
    }

    async fn cancel(&self, id: JobId) -> Result<()> {
        let now = now();
        let mut inner = self.lock();
        let state = inner.jobs.get(&id.0).ok_or(Error::NotFound(id))?.state(now);
        if state != JobState::Running {
            inner.remove(id.0);
            return Ok(());
        }
        // Its key and its place stay taken until its lease runs out, as in the SQL stores.
        inner.update(id.0, |e| {
            e.stored = Stored::Failed;
            e.cancelled = true;
            e.job.run_at = now;
        });
        drop(inner);
        let _ = self.cancels.send(id.0);
        Ok(())
    }

    async fn cancel_requested(&self, id: JobId) {
        let mut rx = self.cancels.subscribe();
        loop {
            match rx.recv().await {
                Ok(heard) if heard != id.0 => continue,
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
                _ => return,
            }
        }
    }

    async fn set_progress(&self, lease: &Lease, progress: Value) -> Result<()> {
        pq_api::validate::validate_json("progress", &progress)?;
        let mut inner = self.lock();
        inner.held(lease)?;
        inner.update(lease.job_id.0, |e| e.job.progress = Some(progress));
        Ok(())
    }

    async fn configure_queue(&self, queue: &str, setting: QueueSetting) -> Result<()> {
        pq_api::validate::validate_setting(queue, &setting)?;
        {
            let mut inner = self.lock();
            let config = inner.configs.get(queue).copied().unwrap_or_default();
            let config = config.with(setting);
            if config.is_default() {
                inner.configs.remove(queue);
            } else {
                inner.configs.insert(queue.to_owned(), config);
            }
        }
        self.wake.notify_waiters();
        Ok(())
    }

    async fn queues(&self) -> Result<Vec<QueueInfo>> {
        let now = now();
        let inner = self.lock();
        let mut out: BTreeMap<String, QueueInfo> = inner
            .configs
            .iter()
            .map(|(q, c)| {
                (
                    q.clone(),
                    QueueInfo::new(q.clone(), *c, QueueStats::default()),
                )
            })
            .collect();
        for e in inner.jobs.values() {
            let info = out.entry(e.job.queue.clone()).or_insert_with(|| {
                QueueInfo::new(
                    e.job.queue.clone(),
                    QueueConfig::default(),
                    QueueStats::default(),
                )
            });
            let state = e.state(now);
            info.stats.add(state, 1);
            if state == JobState::Ready {
                let age = (now - e.job.run_at).to_std().unwrap_or_default();
                info.oldest_ready = Some(info.oldest_ready.map_or(age, |a| a.max(age)));
            }
        }
        Ok(out.into_values().collect())
    }

    async fn record_throughput(&self, tallies: &[Tally]) -> Result<()> {
        for t in tallies {
            validate_queue_name(&t.queue)?;
        }
        let minute = now()
            .duration_trunc(TimeDelta::minutes(1))
            .unwrap_or_else(|_| now());
        let mut inner = self.lock();
        for t in tallies {
            let n = inner
                .throughput
                .entry((minute, t.queue.clone()))
                .or_default();
            n.0 = n.0.saturating_add(t.completed);
            n.1 = n.1.saturating_add(t.failed);
        }
        Ok(())
    }

    async fn throughput(&self, since: Duration) -> Result<Vec<Throughput>> {
        let back = TimeDelta::from_std(since).unwrap_or(TimeDelta::MAX);
        let from = now()
            .checked_sub_signed(back)
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
            .duration_trunc(TimeDelta::minutes(1))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let inner = self.lock();
        Ok(inner
            .throughput
            .range((from, String::new())..)
            .map(|((minute, queue), &(c, f))| Throughput::new(queue.clone(), *minute, c, f))
            .collect())
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>> {
        filter.validate()?;
        let now = now();
        let inner = self.lock();
        let limit = usize::try_from(filter.limit).unwrap_or(usize::MAX);
        let mut found: Vec<&Entry> = inner
            .jobs
            .values()
            .filter(|e| filter.admits(&e.job, e.state(now)))
            .collect();
        found.sort_unstable_by_key(|e| std::cmp::Reverse(e.job.id));
        Ok(found.into_iter().take(limit).map(|e| e.view(now)).collect())
    }

    async fn prune(&self) -> Result<Pruned> {
        let now = now();
        let mut inner = self.lock();
        let default = inner.retention.unwrap_or(DEFAULT_RETENTION);
        let ended: Vec<i64> = inner
            .jobs
            .values()
            .filter(|e| {
                let keep = inner
                    .configs
                    .get(&e.job.queue)
                    .and_then(|c| c.retention)
                    .unwrap_or(default);
                let cutoff = TimeDelta::from_std(keep)
                    .ok()
                    .and_then(|d| now.checked_sub_signed(d))
                    .unwrap_or(DateTime::<Utc>::MIN_UTC);
                e.ended_before(now, cutoff)
            })
            .map(|e| e.job.id.0)
            .collect();
        for id in &ended {
            inner.remove(*id);
        }
        let idle: Vec<KeyId> = inner
            .keys
            .iter()
            .filter(|(k, row)| {
                row.state.is_none()
                    && row.running.is_none_or(|(_, until)| until <= now)
                    && !inner.index.by_key.contains_key(*k)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in &idle {
            inner.keys.remove(k);
        }
        let history = inner.history.len();
        inner.history.retain(|_, f| f.keep_until > now);
        let kept = TimeDelta::from_std(THROUGHPUT_KEPT).unwrap_or(TimeDelta::MAX);
        inner
            .throughput
            .retain(|(minute, _), _| *minute >= now - kept);
        inner.periods.retain(|_, &mut (_, until)| until > now);
        let n = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        Ok(Pruned::new(
            n(ended.len()),
            n(idle.len()),
            n(history - inner.history.len()),
        ))
    }

    async fn retry(&self, id: JobId) -> Result<()> {
        let now = now();
        {
            let mut inner = self.lock();
            let state = inner.jobs.get(&id.0).ok_or(Error::NotFound(id))?.state(now);
            if state != JobState::Failed {
                return Err(Error::InvalidState { id, state });
            }
            inner.update(id.0, |e| {
                e.stored = Stored::Queued;
                e.job.attempts = 0;
                e.job.run_at = now;
            });
        }
        self.wake.notify_waiters();
        Ok(())
    }

    async fn job(&self, id: JobId) -> Result<Job> {
        let now = now();
        let inner = self.lock();
        inner
            .jobs
            .get(&id.0)
            .map(|e| e.view(now))
            .ok_or(Error::NotFound(id))
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats> {
        let now = now();
        let inner = self.lock();
        let mut stats = QueueStats::default();
        for e in inner.jobs.values().filter(|e| e.job.queue == queue) {
            stats.add(e.state(now), 1);
        }
        Ok(stats)
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        let mut inner = self.lock();
        let ids: Vec<i64> = inner
            .jobs
            .values()
            .filter(|e| e.job.queue == queue)
            .map(|e| e.job.id.0)
            .collect();
        for id in &ids {
            if let Some(entry) = inner.remove(*id) {
                inner.free_key(entry.key_id(), *id, None);
            }
        }
        if let Some(places) = inner.places.get_mut(queue) {
            places.running.clear();
        }
        Ok(u64::try_from(ids.len()).unwrap_or(u64::MAX))
    }

    async fn key_state(&self, queue: &str, key: &str) -> Result<Option<Value>> {
        let inner = self.lock();
        Ok(inner
            .keys
            .get(&(queue.to_owned(), key.to_owned()))
            .map(|row| row.state.clone().unwrap_or(Value::Null)))
    }

    async fn finished(&self, id: JobId) -> Result<FinishedJob> {
        self.lock()
            .history
            .get(&id.0)
            .cloned()
            .ok_or(Error::NotFound(id))
    }

    async fn history(&self, queue: &str, limit: u32) -> Result<Vec<FinishedJob>> {
        let inner = self.lock();
        let mut out: Vec<FinishedJob> = inner
            .history
            .values()
            .filter(|f| f.queue == queue)
            .cloned()
            .collect();
        out.sort_unstable_by_key(|f| std::cmp::Reverse((f.finished_at, f.id)));
        out.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Ok(out)
    }

    async fn cleanup_history(&self) -> Result<u64> {
        let now = now();
        let mut inner = self.lock();
        let before = inner.history.len();
        inner.history.retain(|_, f| f.keep_until > now);
        inner.periods.retain(|_, &mut (_, until)| until > now);
        Ok(u64::try_from(before - inner.history.len()).unwrap_or(u64::MAX))
    }

    async fn wait(&self, queues: &[String], timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            // Register for wake-ups before looking, so a put between the look and the sleep
            // is not missed.
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next = self.lock().next_run(queues);
            let now = now();
            let mut until = deadline;
            if let Some(next) = next {
                match (next - now).to_std() {
                    Ok(d) if !d.is_zero() => until = until.min(Instant::now() + d),
                    _ => return Ok(true),
                }
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(until) => {
                    if until >= deadline {
                        let next = self.lock().next_run(queues);
                        return Ok(next.is_some_and(|n| n <= Utc::now()));
                    }
                }
            }
        }
    }
}

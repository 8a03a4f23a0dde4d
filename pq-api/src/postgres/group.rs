//! Single puts sent together: a group commit.
//!
//! A lone `put` is bound by its commit: the round trip, the WAL flush, and the `NOTIFY`,
//! which PostgreSQL serialises across committing transactions. When several callers put one
//! job each at the same time, the store sends them in one statement instead: one insert, one
//! commit, one notification for all of them. The first caller to find no send in progress
//! starts a task that sends whatever has gathered, and again while more gathers; every caller
//! waits for its own answer, its job's id or an error of its own (see [`Group`]).
//!
//! Only jobs put on their own by a store's `put_many` (and `put`, `enqueue`) ride together,
//! and only jobs without a cursor key or a uniqueness key, whose insert folds or refuses rows
//! by what else the statement holds. A caller's own transaction (`put_many_in`) is never
//! involved. Why, and what it measured, is in the design notes (docs/design.md, "Single puts").

use std::sync::{Mutex, PoisonError};

use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::job::{JobId, NewJob};

/// The most jobs one grouped statement carries.
pub const MAX_GROUP: usize = 1000;

/// A put waiting to be sent.
pub struct Waiting {
    /// The job, already validated.
    pub job: NewJob,
    /// Where its caller waits for the answer.
    pub reply: oneshot::Sender<Result<JobId>>,
}

/// The puts gathered for the next statement, and whether a task is sending them.
#[derive(Default)]
pub struct Group {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    waiting: Vec<Waiting>,
    sending: bool,
}

impl Group {
    /// Whether `job` may ride with others: it has neither a cursor key nor a uniqueness key.
    pub fn admits(job: &NewJob) -> bool {
        job.unique.is_none() && !matches!(job.key(), Some((_, true)))
    }

    /// Adds a put; true when no task is sending, and the caller must start one.
    pub fn join(&self, put: Waiting) -> bool {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.waiting.push(put);
        !std::mem::replace(&mut s.sending, true)
    }

    /// The next puts to send, at most [`MAX_GROUP`], without those whose callers stopped
    /// waiting (their jobs are not put). Empty when none is left: the sending task then ends,
    /// and the next [`Group::join`] starts another.
    pub fn next(&self) -> Vec<Waiting> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.waiting.retain(|w| !w.reply.is_closed());
        if s.waiting.is_empty() {
            s.sending = false;
            return Vec::new();
        }
        let n = s.waiting.len().min(MAX_GROUP);
        s.waiting.drain(..n).collect()
    }

    /// The sending task was stopped before it was done (its runtime shut down): the puts still
    /// waiting are answered that they were not made, and the next [`Group::join`] starts a new
    /// task.
    pub fn abandon(&self) {
        let waiting = {
            let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            s.sending = false;
            std::mem::take(&mut s.waiting)
        };
        for w in waiting {
            let _ = w.reply.send(Err(Error::Unavailable(
                "the store's task sending puts stopped; this job was not put".into(),
            )));
        }
    }
}

/// Calls [`Group::abandon`] when dropped, unless [`Sending::done`] was called first.
pub struct Sending<'a> {
    group: &'a Group,
    done: bool,
}

impl<'a> Sending<'a> {
    /// Guards the sending task of `group`.
    pub fn new(group: &'a Group) -> Self {
        Sending { group, done: false }
    }

    /// The task ended as it should: [`Group::next`] found nothing left.
    pub fn done(mut self) {
        self.done = true;
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.group.abandon();
        }
    }
}

/// A copy of `e`, a retryable error of a statement that carried several callers' jobs, for
/// each of them: the same variant, its message and its source's.
pub fn for_each_caller(e: &Error) -> Error {
    let text = match std::error::Error::source(e) {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    };
    match e {
        Error::Conflict(_) => Error::Conflict(text.into()),
        _ => Error::Unavailable(text.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(n: u64) -> (Waiting, oneshot::Receiver<Result<JobId>>) {
        let (reply, rx) = oneshot::channel();
        let job = NewJob::from_json("q", serde_json::json!({ "n": n }));
        (Waiting { job, reply }, rx)
    }

    #[test]
    fn the_first_join_starts_a_sender_and_the_rest_ride_along() {
        let g = Group::default();
        let (a, _ra) = put(1);
        let (b, _rb) = put(2);
        assert!(g.join(a));
        assert!(!g.join(b));
        assert_eq!(g.next().len(), 2);
        assert!(g.next().is_empty());
        let (c, _rc) = put(3);
        assert!(g.join(c), "the sender ended, so the next put starts one");
    }

    #[test]
    fn puts_whose_callers_left_are_not_sent() {
        let g = Group::default();
        let (a, ra) = put(1);
        let (b, _rb) = put(2);
        g.join(a);
        g.join(b);
        drop(ra);
        let sent = g.next();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].job.payload["n"], 2);
    }

    #[test]
    fn a_group_holds_at_most_max_group_jobs() {
        let g = Group::default();
        let mut answers = Vec::new();
        for n in 0..(MAX_GROUP as u64 + 5) {
            let (w, rx) = put(n);
            g.join(w);
            answers.push(rx);
        }
        assert_eq!(g.next().len(), MAX_GROUP);
        assert_eq!(g.next().len(), 5);
    }

    #[test]
    fn an_abandoned_sender_answers_the_waiting_and_lets_a_new_one_start() {
        let g = Group::default();
        let (a, mut ra) = put(1);
        assert!(g.join(a));
        drop(Sending::new(&g));
        assert!(matches!(ra.try_recv(), Ok(Err(Error::Unavailable(_)))));
        let (b, _rb) = put(2);
        assert!(g.join(b));
    }

    #[test]
    fn only_jobs_without_cursor_or_uniqueness_keys_ride_together() {
        let plain = NewJob::from_json("q", serde_json::json!(1));
        assert!(Group::admits(&plain));
        assert!(Group::admits(&plain.clone().serial_key("k")));
        assert!(!Group::admits(&plain.clone().cursor_key("k")));
        assert!(!Group::admits(
            &plain.unique("u", crate::Unique::WhilePending)
        ));
    }
}

//! How the command prints queues and jobs: aligned tables for people, JSON for scripts.

use std::fmt::Write as _;
use std::time::Duration;

use pq_api::{FinishedJob, Job, QueueConfig, QueueInfo};
use serde_json::{json, Value};

/// A duration as people read it, to the second ("1h 2m 3s"; "0s" under a second).
pub(crate) fn age(d: Duration) -> String {
    let whole = Duration::from_secs(d.as_secs());
    if whole.is_zero() {
        return "0s".into();
    }
    humantime::format_duration(whole).to_string()
}

/// A queue's settings in a few words ("paused, concurrency 5"), or "-".
pub(crate) fn settings(c: &QueueConfig) -> String {
    let mut parts = Vec::new();
    if c.paused {
        parts.push("paused".to_string());
    }
    if let Some(n) = c.concurrency {
        parts.push(format!("concurrency {n}"));
    }
    if let Some(r) = c.rate {
        parts.push(format!("rate {}/{}", r.jobs, age(r.per)));
    }
    if let Some(d) = c.retention {
        parts.push(format!("retention {}", age(d)));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

/// Rows of cells as a table with a header, columns padded to their widest cell; numbers
/// (columns whose header is upper case and marked `#`) are right-aligned.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header
        .iter()
        .map(|h| h.trim_end_matches('#').len())
        .collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = (usize, &str)>| {
        let mut text = String::new();
        for (i, cell) in cells {
            let right = header[i].ends_with('#');
            let w = widths[i];
            if i > 0 {
                text.push_str("  ");
            }
            if right {
                let _ = write!(text, "{cell:>w$}");
            } else {
                let _ = write!(text, "{cell:<w$}");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().map(|h| h.trim_end_matches('#')).enumerate());
    for row in rows {
        line(&mut row.iter().map(String::as_str).enumerate());
    }
    out
}

/// The queues as a table.
pub(crate) fn queue_table(queues: &[QueueInfo]) -> String {
    if queues.is_empty() {
        return "no queues: no jobs and no settings\n".into();
    }
    let rows: Vec<Vec<String>> = queues
        .iter()
        .map(|q| {
            let s = &q.stats;
            vec![
                q.name.clone(),
                s.scheduled.to_string(),
                s.ready.to_string(),
                s.running.to_string(),
                s.failed.to_string(),
                s.cancelled.to_string(),
                q.oldest_ready.map_or("-".into(), age),
                settings(&q.config),
            ]
        })
        .collect();
    table(
        &[
            "QUEUE",
            "SCHEDULED#",
            "READY#",
            "RUNNING#",
            "FAILED#",
            "CANCELLED#",
            "OLDEST READY#",
            "SETTINGS",
        ],
        &rows,
    )
}

/// A queue as JSON: durations in seconds (fractions allowed).
pub(crate) fn queue_json(q: &QueueInfo) -> Value {
    let s = &q.stats;
    json!({
        "queue": q.name,
        "scheduled": s.scheduled,
        "ready": s.ready,
        "running": s.running,
        "failed": s.failed,
        "cancelled": s.cancelled,
        "oldest_ready_secs": q.oldest_ready.map(|d| d.as_secs_f64()),
        "paused": q.config.paused,
        "concurrency": q.config.concurrency,
        "rate": q.config.rate.map(|r| json!({"jobs": r.jobs, "per_secs": r.per.as_secs_f64()})),
        "retention_secs": q.config.retention.map(|d| d.as_secs_f64()),
    })
}

/// The first line of `text`, cut to `max` characters.
pub(crate) fn first_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or("");
    if line.chars().count() > max || text.lines().nth(1).is_some() {
        let cut: String = line.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        line.to_string()
    }
}

/// Jobs as a table.
pub(crate) fn job_table(jobs: &[Job]) -> String {
    if jobs.is_empty() {
        return "no jobs\n".into();
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.0.to_string(),
                j.queue.clone(),
                j.state.to_string(),
                format!("{}/{}", j.attempts, j.max_attempts),
                j.run_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                j.last_error
                    .as_deref()
                    .map_or("-".into(), |e| first_line(e, 60)),
            ]
        })
        .collect();
    table(
        &[
            "ID#",
            "QUEUE",
            "STATE",
            "ATTEMPTS#",
            "RUN AT (UTC)",
            "LAST ERROR",
        ],
        &rows,
    )
}

/// A job as JSON.
pub(crate) fn job_json(j: &Job) -> Value {
    json!({
        "id": j.id,
        "queue": j.queue,
        "state": j.state,
        "payload": *j.payload,
        "priority": j.priority,
        "attempts": j.attempts,
        "max_attempts": j.max_attempts,
        "run_at": j.run_at,
        "created_at": j.created_at,
        "expected_at": j.expected_at,
        "last_error": j.last_error,
        "serial_key": j.serial_key,
        "cursor_key": j.cursor_key,
        "unique_key": j.unique.as_ref().map(|(k, _)| k),
        "timeout_secs": j.timeout.map(|d| d.as_secs_f64()),
        "progress": j.progress,
    })
}

/// What `run_at` means in a job's state.
pub(crate) fn run_at_label(j: &Job) -> &'static str {
    match j.state {
        pq_api::JobState::Running => "lease expires",
        pq_api::JobState::Failed | pq_api::JobState::Cancelled => "ended",
        _ => "runs at",
    }
}

/// A job, field by field.
pub(crate) fn job_text(j: &Job) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "job {} in {}: {}", j.id.0, j.queue, j.state);
    let _ = writeln!(out, "attempts       {}/{}", j.attempts, j.max_attempts);
    let _ = writeln!(out, "priority       {}", j.priority);
    let _ = writeln!(out, "created        {}", j.created_at);
    let _ = writeln!(out, "{:<14} {}", run_at_label(j), j.run_at);
    if let Some(at) = j.expected_at {
        let _ = writeln!(out, "expected by    {at}");
    }
    for (what, key) in [("serial key", &j.serial_key), ("cursor key", &j.cursor_key)] {
        if let Some(k) = key {
            let _ = writeln!(out, "{what:<14} {k}");
        }
    }
    if let Some((k, _)) = &j.unique {
        let _ = writeln!(out, "unique key     {k}");
    }
    if let Some(t) = j.timeout {
        let _ = writeln!(out, "time limit     {}", age(t));
    }
    if let Some(p) = &j.progress {
        let _ = writeln!(out, "progress       {p}");
    }
    if let Some(e) = &j.last_error {
        let _ = writeln!(out, "last error     {e}");
    }
    let payload = serde_json::to_string_pretty(&*j.payload).unwrap_or_default();
    let _ = write!(out, "payload\n{payload}");
    out
}

/// A completed job's record as JSON.
pub(crate) fn finished_json(f: &FinishedJob) -> Value {
    json!({
        "id": f.id,
        "queue": f.queue,
        "state": "completed",
        "payload": *f.payload,
        "attempts": f.attempts,
        "result": f.result,
        "created_at": f.created_at,
        "finished_at": f.finished_at,
        "keep_until": f.keep_until,
    })
}

/// A completed job's record, field by field.
pub(crate) fn finished_text(f: &FinishedJob) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "job {} in {}: completed", f.id.0, f.queue);
    let _ = writeln!(out, "attempts       {}", f.attempts);
    let _ = writeln!(out, "created        {}", f.created_at);
    let _ = writeln!(out, "completed      {}", f.finished_at);
    let _ = writeln!(out, "kept until     {}", f.keep_until);
    if let Some(r) = &f.result {
        let _ = writeln!(out, "result         {r}");
    }
    let payload = serde_json::to_string_pretty(&*f.payload).unwrap_or_default();
    let _ = write!(out, "payload\n{payload}");
    out
}

/// What `pq health` found.
pub(crate) struct Health {
    max_wait: Duration,
    /// Each queue checked, with its oldest ready job's wait.
    queues: Vec<(String, Option<Duration>)>,
}

/// Checks `queues` (only those named in `only`, unless it is empty).
pub(crate) fn health(queues: &[QueueInfo], only: &[String], max_wait: Duration) -> Health {
    let mut checked: Vec<(String, Option<Duration>)> = queues
        .iter()
        .filter(|q| only.is_empty() || only.contains(&q.name))
        .map(|q| (q.name.clone(), q.oldest_ready))
        .collect();
    // A queue asked for by name that holds nothing is healthy: nothing waits in it.
    for name in only {
        if !checked.iter().any(|(q, _)| q == name) {
            checked.push((name.clone(), None));
        }
    }
    Health {
        max_wait,
        queues: checked,
    }
}

impl Health {
    fn stuck(&self, wait: Option<Duration>) -> bool {
        wait.is_some_and(|w| w > self.max_wait)
    }

    /// Whether no queue is stuck.
    pub(crate) fn healthy(&self) -> bool {
        self.queues.iter().all(|(_, w)| !self.stuck(*w))
    }

    /// One line a queue.
    pub(crate) fn text(&self) -> String {
        let mut out = String::new();
        for (q, wait) in &self.queues {
            let status = if self.stuck(*wait) { "STUCK" } else { "ok" };
            let waited = wait.map_or("no ready jobs".into(), |w| {
                format!("oldest ready job waited {}", age(w))
            });
            let _ = writeln!(out, "{status:<5}  {q}: {waited}");
        }
        let _ = writeln!(
            out,
            "{}: {} queues, longest allowed wait {}",
            if self.healthy() {
                "healthy"
            } else {
                "unhealthy"
            },
            self.queues.len(),
            age(self.max_wait)
        );
        out
    }

    /// The report as JSON.
    pub(crate) fn json(&self) -> Value {
        let queues: Vec<Value> = self
            .queues
            .iter()
            .map(|(q, w)| {
                json!({
                    "queue": q,
                    "oldest_ready_secs": w.map(|d| d.as_secs_f64()),
                    "stuck": self.stuck(*w),
                })
            })
            .collect();
        json!({
            "healthy": self.healthy(),
            "max_wait_secs": self.max_wait.as_secs_f64(),
            "queues": queues,
        })
    }
}

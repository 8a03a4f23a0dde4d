//! `pq serve`: the web dashboard. Server-rendered HTML, no scripts: the overview of queues
//! (counts by state, the oldest ready job's wait, jobs finished per minute over the last 15
//! minutes from the workers' throughput reports, the backlog sampled by the dashboard, pause
//! and resume), the failed jobs with their errors, lists of jobs by queue and state, a page a
//! job, a search by id, and the queues' gauges for Prometheus at `/metrics`.
//!
//! Read-only unless started with `--allow-actions`; actions are form posts, refused when they
//! come from another site's page (their `Origin` is not this server's).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, DurationRound, Utc};
use pq_api::{
    Error, FinishedJob, Job, JobFilter, JobId, JobState, QueueInfo, QueueStore, QueueStoreExt,
};
use serde::Deserialize;

use crate::show::{age, first_line, run_at_label, settings};
use crate::Failed;

/// How many samples of the queues the overview's chart keeps (15 minutes at one every 5 s).
const SAMPLES_KEPT: usize = 180;

/// What the dashboard holds: the store, whether actions are allowed, and the chart's samples.
struct App {
    store: Arc<dyn QueueStore>,
    actions: bool,
    samples: Mutex<VecDeque<Sample>>,
}

/// The queues' counts at one moment.
struct Sample {
    at: DateTime<Utc>,
    /// Per queue: jobs waiting (scheduled or ready), running.
    queues: BTreeMap<String, (u64, u64)>,
}

impl App {
    fn record(&self, queues: &[QueueInfo]) {
        let sample = Sample {
            at: Utc::now(),
            queues: queues
                .iter()
                .map(|q| {
                    let s = &q.stats;
                    (q.name.clone(), (s.scheduled + s.ready, s.running))
                })
                .collect(),
        };
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        if samples.len() == SAMPLES_KEPT {
            samples.pop_front();
        }
        samples.push_back(sample);
    }
}

/// Serves the dashboard on `bind` until the process is stopped (Ctrl-C).
pub(crate) async fn serve(
    store: Arc<dyn QueueStore>,
    bind: &str,
    actions: bool,
    sample_every: Duration,
) -> Result<(), Failed> {
    let app = Arc::new(App {
        store,
        actions,
        samples: Mutex::new(VecDeque::new()),
    });
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| Failed(format!("cannot listen on {bind}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failed(format!("cannot listen on {bind}: {e}")))?;
    let sampler = tokio::spawn(sample(Arc::clone(&app), sample_every));
    let router = Router::new()
        .route("/", get(overview))
        .route("/jobs", get(jobs))
        .route("/jobs/{id}", get(job))
        .route("/search", get(search))
        .route("/metrics", get(metrics))
        .route("/queues/{queue}/{action}", post(queue_action))
        .route("/jobs/{id}/{action}", post(job_action))
        .with_state(app);
    println!(
        "pq: serving the dashboard on http://{addr}/ ({})",
        if actions {
            "actions allowed"
        } else {
            "read-only"
        }
    );
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    sampler.abort();
    served.map_err(|e| Failed(format!("the dashboard stopped: {e}")))
}

/// Samples the queues for the chart every `every`.
async fn sample(app: Arc<App>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    loop {
        tick.tick().await;
        match app.store.queues().await {
            Ok(queues) => app.record(&queues),
            Err(e) => tracing::warn!(error = %e, "the dashboard could not sample the queues"),
        }
    }
}

/// A page's failure: the store's error, shown as a page with a fitting status.
struct PageError(StatusCode, String);

impl From<Error> for PageError {
    fn from(e: Error) -> Self {
        let status = match e {
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::InvalidArgument { .. } | Error::InvalidState { .. } => StatusCode::BAD_REQUEST,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        PageError(status, e.to_string())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let body = page(
            "Error",
            &format!(
                "<h1>{}</h1><p class=error>{}</p><p><a href=\"/\">Back to the queues</a></p>",
                self.0,
                esc(&self.1)
            ),
        );
        (self.0, Html(body)).into_response()
    }
}

type PageResult = Result<Html<String>, PageError>;

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes text for a URL's query or path part.
fn url_part(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

const STYLE: &str =
    "body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}\
header{background:#1d2330;color:#fff;padding:10px 24px;display:flex;gap:24px;align-items:center}\
header a{color:#fff;text-decoration:none;font-weight:600}header form{margin-left:auto}\
main{padding:16px 24px}h1{font-size:20px}h2{font-size:16px;margin-top:28px}\
table{border-collapse:collapse;background:#fff;min-width:60%}\
th,td{padding:6px 10px;border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:top}\
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#eef0f3}\
.paused{color:#a15c00;font-weight:600}.error{color:#b00020}.muted{color:#6b7280}\
pre{background:#fff;border:1px solid #e3e6ea;padding:10px;overflow:auto;max-width:100ch}\
button{cursor:pointer}form.inline{display:inline}svg{background:#fff;border:1px solid #e3e6ea}\
dl{display:grid;grid-template-columns:max-content auto;gap:4px 16px}dt{color:#6b7280}";

/// A whole page around `body`.
fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>{} · pq</title>\
         <style>{STYLE}</style></head><body><header><a href=\"/\">pq</a>\
         <a href=\"/jobs?state=failed\">Failed</a><a href=\"/jobs\">Jobs</a>\
         <form action=\"/search\"><input name=id placeholder=\"Job id\" size=10 \
         aria-label=\"Job id\"> <button>Find</button></form></header><main>{body}</main>\
         </body></html>",
        esc(title)
    )
}

/// A button that posts `action` to `path`, when actions are allowed.
fn button(app: &App, path: &str, label: &str, class: &str) -> String {
    if !app.actions {
        return String::new();
    }
    format!(
        "<form class=inline method=post action=\"{}\"><button class=\"{class}\">{label}</button>\
         </form>",
        esc(path)
    )
}

/// How many minutes of throughput the overview shows.
const MINUTES_SHOWN: i64 = 15;

/// The bars of a queue's jobs finished per minute, from the store's throughput records
/// (`records`: minute → completed, failed), the last [`MINUTES_SHOWN`] minutes.
fn throughput_chart(records: &BTreeMap<DateTime<Utc>, (u64, u64)>, now: DateTime<Utc>) -> String {
    const W: f64 = 240.0;
    const H: f64 = 40.0;
    let this_minute = now
        .duration_trunc(chrono::TimeDelta::minutes(1))
        .unwrap_or(now);
    let minutes: Vec<(u64, u64)> = (0..MINUTES_SHOWN)
        .rev()
        .map(|back| {
            let minute = this_minute - chrono::TimeDelta::minutes(back);
            records.get(&minute).copied().unwrap_or((0, 0))
        })
        .collect();
    let top = minutes.iter().map(|&(c, f)| c + f).max().unwrap_or(0);
    let (done, failed) = minutes
        .iter()
        .fold((0, 0), |(c, f), &(mc, mf)| (c + mc, f + mf));
    let last = minutes.last().copied().unwrap_or((0, 0));
    let mut bars = String::new();
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    if top > 0 {
        let slot = W / MINUTES_SHOWN as f64;
        for (i, &(c, f)) in minutes.iter().enumerate() {
            let x = i as f64 * slot + 1.0;
            let hc = c as f64 / top as f64 * (H - 2.0);
            let hf = f as f64 / top as f64 * (H - 2.0);
            let _ = write!(
                bars,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{hc:.1}\" fill=\"#16a34a\"/>\
                 <rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{hf:.1}\" fill=\"#dc2626\"/>",
                H - hc,
                slot - 2.0,
                H - hc - hf,
                slot - 2.0,
            );
        }
    }
    format!(
        "<svg class=throughput width={W} height={H} viewBox=\"0 0 {W} {H}\" role=img \
         aria-label=\"{done} completed and {failed} failed in the last {MINUTES_SHOWN} minutes\">\
         <title>jobs finished per minute, last {MINUTES_SHOWN} minutes: {done} completed (green), \
         {failed} failed (red); this minute so far {}</title>{bars}</svg>\
         <div class=muted>{done} done, {failed} failed in {MINUTES_SHOWN} min</div>",
        last.0 + last.1
    )
}

/// The line of a queue's waiting jobs over the samples kept.
fn backlog_chart(samples: &VecDeque<Sample>, queue: &str) -> String {
    const W: f64 = 160.0;
    const H: f64 = 40.0;
    let points: Vec<u64> = samples
        .iter()
        .map(|s| s.queues.get(queue).map_or(0, |&(waiting, _)| waiting))
        .collect();
    if points.len() < 2 {
        return "<span class=muted>gathering…</span>".into();
    }
    let top = points.iter().copied().max().unwrap_or(0).max(1);
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    let line = {
        let step = W / (points.len() - 1) as f64;
        points
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let y = H - (n as f64 / top as f64) * (H - 2.0) - 1.0;
                format!("{:.1},{y:.1}", i as f64 * step)
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let span = samples
        .back()
        .zip(samples.front())
        .map(|(b, f)| (b.at - f.at).to_std().unwrap_or_default())
        .unwrap_or_default();
    format!(
        "<svg class=backlog width={W} height={H} viewBox=\"0 0 {W} {H}\" role=img \
         aria-label=\"jobs waiting in {q} over the last {span}\">\
         <title>jobs waiting (scheduled or ready), last {span}, peak {top}</title>\
         <polyline fill=none stroke=\"#2563eb\" stroke-width=1.5 points=\"{line}\"/></svg>",
        q = esc(queue),
        span = age(span),
    )
}

async fn overview(State(app): State<Arc<App>>) -> PageResult {
    let queues = app.store.queues().await?;
    let since = Duration::from_secs(60 * u64::try_from(MINUTES_SHOWN).unwrap_or(15));
    let mut throughput: BTreeMap<String, BTreeMap<DateTime<Utc>, (u64, u64)>> = BTreeMap::new();
    for r in app.store.throughput(since).await? {
        throughput
            .entry(r.queue)
            .or_default()
            .insert(r.minute, (r.completed, r.failed));
    }
    let now = Utc::now();
    let none = BTreeMap::new();
    let failed = app
        .store
        .list_jobs(&JobFilter::new().state(JobState::Failed).limit(20))
        .await?;
    let mut body = String::from("<h1>Queues</h1>");
    if queues.is_empty() {
        body.push_str("<p class=muted>No queues yet: no jobs, no settings.</p>");
    } else {
        body.push_str(
            "<table id=queues><tr><th>Queue</th><th>Scheduled</th><th>Ready</th>\
             <th>Running</th><th>Failed</th><th>Cancelled</th><th>Oldest ready</th>\
             <th>Finished per minute</th><th>Waiting</th><th>Settings</th><th></th></tr>",
        );
        let samples = app.samples.lock().unwrap_or_else(PoisonError::into_inner);
        for q in &queues {
            let s = &q.stats;
            let link = |state: &str, n: u64| {
                format!(
                    "<td class=n><a href=\"/jobs?queue={}&amp;state={state}\">{n}</a></td>",
                    url_part(&q.name)
                )
            };
            let toggle = if q.config.paused {
                button(
                    &app,
                    &format!("/queues/{}/resume", url_part(&q.name)),
                    "Resume",
                    "resume",
                )
            } else {
                button(
                    &app,
                    &format!("/queues/{}/pause", url_part(&q.name)),
                    "Pause",
                    "pause",
                )
            };
            let _ = write!(
                body,
                "<tr data-queue=\"{name}\"><td><a href=\"/jobs?queue={qp}\">{name}</a>{paused}</td>\
                 {}{}{}{}{}<td class=n>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{toggle}</td></tr>",
                link("scheduled", s.scheduled),
                link("ready", s.ready),
                link("running", s.running),
                link("failed", s.failed),
                link("cancelled", s.cancelled),
                q.oldest_ready.map_or("-".into(), age),
                throughput_chart(throughput.get(&q.name).unwrap_or(&none), now),
                backlog_chart(&samples, &q.name),
                esc(&settings(&q.config)),
                name = esc(&q.name),
                qp = url_part(&q.name),
                paused = if q.config.paused {
                    " <span class=paused>paused</span>"
                } else {
                    ""
                },
            );
        }
        body.push_str("</table>");
    }
    body.push_str("<h2>Failed jobs</h2>");
    if failed.is_empty() {
        body.push_str("<p class=muted id=failed>No failed jobs.</p>");
    } else {
        body.push_str(&job_rows("failed", &app, &failed));
    }
    Ok(Html(page("Queues", &body)))
}

/// Jobs as a table, with retry buttons for failed ones.
fn job_rows(id: &str, app: &App, jobs: &[Job]) -> String {
    let mut out = format!(
        "<table id={id}><tr><th>Id</th><th>Queue</th><th>State</th><th>Attempts</th>\
         <th>Runs at / ended</th><th>Last error</th><th></th></tr>"
    );
    for j in jobs {
        let action = match j.state {
            JobState::Failed => button(app, &format!("/jobs/{}/retry", j.id.0), "Retry", "retry"),
            _ => String::new(),
        };
        let _ = write!(
            out,
            "<tr data-job=\"{id}\"><td><a href=\"/jobs/{id}\">{id}</a></td><td>{}</td>\
             <td>{}</td><td class=n>{}/{}</td><td>{}</td><td class=error>{}</td>\
             <td>{action}</td></tr>",
            esc(&j.queue),
            j.state,
            j.attempts,
            j.max_attempts,
            j.run_at.format("%Y-%m-%d %H:%M:%S"),
            esc(&j
                .last_error
                .as_deref()
                .map_or(String::new(), |e| first_line(e, 120))),
            id = j.id.0,
        );
    }
    out.push_str("</table>");
    out
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    queue: Option<String>,
    state: Option<String>,
    before: Option<i64>,
}

async fn jobs(State(app): State<Arc<App>>, Query(q): Query<ListQuery>) -> PageResult {
    let mut filter = JobFilter::new().limit(50);
    filter.queue = q.queue.filter(|s| !s.is_empty());
    filter.before = q.before.map(JobId);
    if let Some(s) = q.state.as_deref().filter(|s| !s.is_empty()) {
        let state = JobState::parse(s)
            .ok_or_else(|| PageError(StatusCode::BAD_REQUEST, format!("not a state: {s}")))?;
        filter.state = Some(state);
    }
    let list = app.store.list_jobs(&filter).await?;
    let title = match (&filter.queue, filter.state) {
        (Some(q), Some(s)) => format!("{s} jobs of {q}"),
        (Some(q), None) => format!("Jobs of {q}"),
        (None, Some(s)) => format!("{s} jobs"),
        (None, None) => "Jobs".into(),
    };
    let mut body = format!("<h1>{}</h1>", esc(&title));
    if list.is_empty() {
        body.push_str("<p class=muted>No jobs.</p>");
    } else {
        body.push_str(&job_rows("jobs", &app, &list));
    }
    if let (Some(last), true) = (list.last(), list.len() == 50) {
        let mut next = format!("/jobs?before={}", last.id);
        if let Some(q) = &filter.queue {
            let _ = write!(next, "&queue={}", url_part(q));
        }
        if let Some(s) = filter.state {
            let _ = write!(next, "&state={s}");
        }
        let _ = write!(body, "<p><a href=\"{}\">Older jobs</a></p>", esc(&next));
    }
    Ok(Html(page(&title, &body)))
}

async fn job(State(app): State<Arc<App>>, Path(id): Path<i64>) -> PageResult {
    let id = JobId(id);
    match app.store.job(id).await {
        Ok(job) => Ok(Html(page(&format!("Job {id}"), &job_page(&app, &job)))),
        Err(Error::NotFound(_)) => {
            let done = app.store.finished(id).await.map_err(|e| match e {
                Error::NotFound(_) => PageError(
                    StatusCode::NOT_FOUND,
                    format!(
                        "No job {}: it never existed, or it completed or was removed \
                         without a history record.",
                        id.0
                    ),
                ),
                e => e.into(),
            })?;
            Ok(Html(page(&format!("Job {id}"), &finished_page(&done))))
        }
        Err(e) => Err(e.into()),
    }
}

fn pretty(v: &serde_json::Value) -> String {
    esc(&serde_json::to_string_pretty(v).unwrap_or_default())
}

fn job_page(app: &App, j: &Job) -> String {
    let mut out = format!(
        "<h1>Job {} <span class=muted>in <a href=\"/jobs?queue={}\">{}</a></span></h1>\
         <dl id=job><dt>State</dt><dd id=state>{}</dd><dt>Attempts</dt><dd>{} of {}</dd>\
         <dt>Priority</dt><dd>{}</dd><dt>Put</dt><dd>{}</dd><dt>{}</dt><dd>{}</dd>",
        j.id,
        url_part(&j.queue),
        esc(&j.queue),
        j.state,
        j.attempts,
        j.max_attempts,
        j.priority,
        j.created_at,
        run_at_label(j),
        j.run_at,
    );
    if j.state == JobState::Running {
        let left = (j.run_at - Utc::now()).to_std().unwrap_or_default();
        let _ = write!(out, "<dt>Lease</dt><dd>held, {} left</dd>", age(left));
    }
    let mut field = |name: &str, value: Option<String>| {
        if let Some(v) = value {
            let _ = write!(out, "<dt>{name}</dt><dd>{}</dd>", esc(&v));
        }
    };
    field("Expected by", j.expected_at.map(|t| t.to_string()));
    field("Serial key", j.serial_key.clone());
    field("Cursor key", j.cursor_key.clone());
    field("Unique key", j.unique.as_ref().map(|(k, _)| k.clone()));
    field("Time limit", j.timeout.map(age));
    field("Progress", j.progress.as_ref().map(|p| p.to_string()));
    out.push_str("</dl>");
    if let Some(e) = &j.last_error {
        let _ = write!(out, "<h2>Last error</h2><pre class=error>{}</pre>", esc(e));
    }
    let _ = write!(out, "<h2>Payload</h2><pre>{}</pre>", pretty(&j.payload));
    let mut actions = String::new();
    if j.state == JobState::Failed {
        actions.push_str(&button(
            app,
            &format!("/jobs/{}/retry", j.id.0),
            "Retry",
            "retry",
        ));
    }
    actions.push_str(&button(
        app,
        &format!("/jobs/{}/cancel", j.id.0),
        "Cancel",
        "cancel",
    ));
    if !actions.is_empty() {
        let _ = write!(out, "<p>{actions}</p>");
    }
    out
}

fn finished_page(f: &FinishedJob) -> String {
    let mut out = format!(
        "<h1>Job {} <span class=muted>in {}</span></h1><dl id=job><dt>State</dt>\
         <dd id=state>completed</dd><dt>Attempts</dt><dd>{}</dd><dt>Put</dt><dd>{}</dd>\
         <dt>Completed</dt><dd>{}</dd><dt>Record kept until</dt><dd>{}</dd></dl>",
        f.id,
        esc(&f.queue),
        f.attempts,
        f.created_at,
        f.finished_at,
        f.keep_until
    );
    if let Some(r) = &f.result {
        let _ = write!(out, "<h2>Result</h2><pre>{}</pre>", pretty(r));
    }
    let _ = write!(out, "<h2>Payload</h2><pre>{}</pre>", pretty(&f.payload));
    out
}

#[derive(Debug, Deserialize)]
struct SearchQuery {
    id: String,
}

async fn search(Query(q): Query<SearchQuery>) -> Result<Redirect, PageError> {
    let id: i64 = q.id.trim().trim_start_matches('#').parse().map_err(|_| {
        PageError(
            StatusCode::BAD_REQUEST,
            format!("{:?} is not a job id (a whole number)", q.id),
        )
    })?;
    Ok(Redirect::to(&format!("/jobs/{id}")))
}

/// Refuses an action when actions are off, or when it comes from another site's page.
fn allowed(app: &App, headers: &HeaderMap) -> Result<(), PageError> {
    if !app.actions {
        return Err(PageError(
            StatusCode::FORBIDDEN,
            "This dashboard is read-only: start it with `pq serve --allow-actions`.".into(),
        ));
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match (origin, host) {
        (None, _) => Ok(()),
        (Some(o), Some(h)) if o.split_once("://").is_some_and(|(_, rest)| rest == h) => Ok(()),
        _ => Err(PageError(
            StatusCode::FORBIDDEN,
            "An action from another site's page is refused.".into(),
        )),
    }
}

/// Where to go after an action: back to the page it came from, on this site.
fn back(headers: &HeaderMap) -> Redirect {
    let to = headers
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.split_once("://"))
        .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_string()))
        .unwrap_or_else(|| "/".into());
    Redirect::to(&to)
}

async fn queue_action(
    State(app): State<Arc<App>>,
    Path((queue, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Redirect, PageError> {
    allowed(&app, &headers)?;
    match action.as_str() {
        "pause" => app.store.pause(&queue).await?,
        "resume" => app.store.resume(&queue).await?,
        _ => {
            return Err(PageError(
                StatusCode::NOT_FOUND,
                format!("no action {action}"),
            ))
        }
    }
    Ok(back(&headers))
}

async fn job_action(
    State(app): State<Arc<App>>,
    Path((id, action)): Path<(i64, String)>,
    headers: HeaderMap,
) -> Result<Redirect, PageError> {
    allowed(&app, &headers)?;
    match action.as_str() {
        "retry" => app.store.retry(JobId(id)).await?,
        "cancel" => app.store.cancel(JobId(id)).await?,
        _ => {
            return Err(PageError(
                StatusCode::NOT_FOUND,
                format!("no action {action}"),
            ))
        }
    }
    Ok(back(&headers))
}

/// The queues' gauges in Prometheus' text format: jobs by queue and state, and each queue's
/// oldest ready job's wait.
async fn metrics(State(app): State<Arc<App>>) -> Result<Response, PageError> {
    let queues = app.store.queues().await?;
    let text = prometheus_text(&queues);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// Escapes a label value for Prometheus' text format.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub(crate) fn prometheus_text(queues: &[QueueInfo]) -> String {
    let mut out = String::from(
        "# HELP pq_queue_jobs Jobs in the queue, by state.\n# TYPE pq_queue_jobs gauge\n",
    );
    for q in queues {
        for (state, n) in q.stats.by_state() {
            let _ = writeln!(
                out,
                "pq_queue_jobs{{queue=\"{}\",state=\"{state}\"}} {n}",
                label(&q.name)
            );
        }
    }
    out.push_str(
        "# HELP pq_queue_oldest_ready_seconds How long the queue's oldest ready job has waited \
         (0: none ready).\n# TYPE pq_queue_oldest_ready_seconds gauge\n",
    );
    for q in queues {
        let _ = writeln!(
            out,
            "pq_queue_oldest_ready_seconds{{queue=\"{}\"}} {}",
            label(&q.name),
            q.oldest_ready.map_or(0.0, |d| d.as_secs_f64())
        );
    }
    out.push_str(
        "# HELP pq_queue_paused Whether the queue is paused.\n# TYPE pq_queue_paused gauge\n",
    );
    for q in queues {
        let _ = writeln!(
            out,
            "pq_queue_paused{{queue=\"{}\"}} {}",
            label(&q.name),
            u8::from(q.config.paused)
        );
    }
    out
}

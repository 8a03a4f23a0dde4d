//! `pq serve` against PostgreSQL: its pages and gauges over plain HTTP, and a retry clicked
//! in a real browser (headless Chromium, driven over WebDriver by chromedriver).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a test's verdict

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use pq_api::postgres::QueueTable;
use pq_api::{Claim, Failure, JobId, JobState, QueueStore, QueueStoreExt};
use pq_conformance::postgres::{database_url, fresh_schema};
use pq_sqlx::SqlxStore;
use serde_json::{json, Value};

/// A running `pq serve`, stopped when dropped.
struct Served {
    child: Child,
    base: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `pq serve` on a free port of 127.0.0.1 for the queue table in `schema`.
fn serve(url: &str, schema: &str, extra: &[&str]) -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pq"))
        .args(["serve", "--bind", "127.0.0.1:0", "--schema", schema])
        .args(extra)
        .env("DATABASE_URL", url)
        .stdout(Stdio::piped())
        .spawn()
        .expect("pq serve starts");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("piped stdout");
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("pq serve said no address: {line:?}"))
        .trim_end_matches('/')
        .to_string();
    Served { child, base }
}

/// An HTTP response: status, headers (lower-case names), body.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on its own connection.
fn http(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Response {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut stream = TcpStream::connect(host).unwrap_or_else(|e| panic!("{url}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let body = body.unwrap_or("");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    // Read the head, then as much body as it announces: a server may keep the connection
    // open after answering, whatever the request asked.
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "{url}: the connection closed before a whole head");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = raw.split_off(head_end);
    if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while body.len() < len {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "{url}: the connection closed before the whole body");
            body.extend_from_slice(&buf[..n]);
        }
    } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        while !body.ends_with(b"0\r\n\r\n") {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "{url}: the connection closed before the last chunk");
            body.extend_from_slice(&buf[..n]);
        }
        body = dechunk(&String::from_utf8_lossy(&body)).into_bytes();
    } else {
        stream.read_to_end(&mut body).unwrap();
    }
    let body = String::from_utf8_lossy(&body).into_owned();
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A store on a fresh, migrated schema, holding a failed job in "emails" (returned), a ready
/// one, and a paused queue "reports" with a scheduled job.
async fn seeded() -> (String, String, SqlxStore, JobId) {
    let url = database_url().await;
    let schema = fresh_schema();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let table = QueueTable::new(&schema, "pq_jobs").unwrap();
    let store = SqlxStore::with_table(pool, table).await.unwrap();
    let failed = store
        .put("emails", &json!({"to": "<b>a@example.com</b>"}))
        .await
        .unwrap();
    let claimed = store
        .claim(&Claim::new(["emails"]).lease(Duration::from_secs(60)))
        .await
        .unwrap();
    let failure = Failure::new("smtp: 550 <no such user>").give_up();
    store.fail(&claimed[0].lease, failure).await.unwrap();
    for i in 0..3 {
        store.put("emails", &json!({"n": i})).await.unwrap();
    }
    store
        .put_many(vec![
            pq_api::NewJob::from_json("reports", json!({})).run_at(Duration::from_secs(3600))
        ])
        .await
        .unwrap();
    store.pause("reports").await.unwrap();
    // What workers of "emails" reported finished this minute.
    let tally = [pq_api::Tally::new("emails", 42, 1)];
    store.record_throughput(&tally).await.unwrap();
    (url, schema, store, failed)
}

#[tokio::test]
async fn pages_show_queues_failed_jobs_a_job_and_gauges() {
    let (url, schema, store, failed) = seeded().await;
    let f = failed.0;
    let served = serve(&url, &schema, &[]);
    let base = &served.base;

    let page = http("GET", &format!("{base}/"), &[], None);
    assert_eq!(page.status, 200);
    let html = page.body;
    assert!(html.contains("<tr data-queue=\"emails\">"), "{html}");
    assert!(html.contains("<tr data-queue=\"reports\">"), "{html}");
    assert!(html.contains("<span class=paused>paused</span>"), "{html}");
    assert!(html.contains(&format!("<tr data-job=\"{f}\">")), "{html}");
    assert!(
        html.contains("smtp: 550 &lt;no such user&gt;"),
        "errors are shown, escaped: {html}"
    );
    assert!(
        !html.contains("method=post"),
        "a read-only dashboard offers no actions"
    );

    let page = http("GET", &format!("{base}/jobs/{f}"), &[], None);
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("<dd id=state>failed</dd>"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("&lt;b&gt;a@example.com&lt;/b&gt;"),
        "{}",
        page.body
    );
    let page = http(
        "GET",
        &format!("{base}/jobs?queue=emails&state=ready"),
        &[],
        None,
    );
    assert_eq!(page.status, 200);
    assert_eq!(
        page.body.matches("<tr data-job=").count(),
        3,
        "{}",
        page.body
    );
    assert_eq!(
        http("GET", &format!("{base}/jobs/987654"), &[], None).status,
        404
    );
    assert_eq!(
        http("GET", &format!("{base}/jobs?state=asleep"), &[], None).status,
        400
    );

    let found = http("GET", &format!("{base}/search?id=%20{f}"), &[], None);
    assert_eq!(found.status, 303);
    assert_eq!(
        found.header("location"),
        Some(format!("/jobs/{f}").as_str())
    );
    assert_eq!(
        http("GET", &format!("{base}/search?id=abc"), &[], None).status,
        400
    );

    let gauges = http("GET", &format!("{base}/metrics"), &[], None);
    assert_eq!(gauges.status, 200);
    assert!(gauges
        .body
        .contains("pq_queue_jobs{queue=\"emails\",state=\"failed\"} 1\n"));
    assert!(gauges
        .body
        .contains("pq_queue_jobs{queue=\"emails\",state=\"ready\"} 3\n"));
    assert!(gauges
        .body
        .contains("pq_queue_paused{queue=\"reports\"} 1\n"));
    assert!(gauges
        .body
        .contains("pq_queue_oldest_ready_seconds{queue=\"emails\"} "));

    let refused = http("POST", &format!("{base}/jobs/{f}/retry"), &[], None);
    assert_eq!(refused.status, 403);
    assert_eq!(store.job(failed).await.unwrap().state, JobState::Failed);
}

#[tokio::test]
async fn actions_change_the_store_unless_they_come_from_another_site() {
    let (url, schema, store, failed) = seeded().await;
    let f = failed.0;
    let served = serve(&url, &schema, &["--allow-actions"]);
    let base = &served.base;
    let host = base.trim_start_matches("http://");

    let evil = [("Origin", "http://evil.example")];
    let refused = http("POST", &format!("{base}/queues/emails/pause"), &evil, None);
    assert_eq!(refused.status, 403);
    let paused =
        |qs: &[pq_api::QueueInfo], q: &str| qs.iter().any(|i| i.name == q && i.config.paused);
    assert!(!paused(&store.queues().await.unwrap(), "emails"));

    let origin = format!("http://{host}");
    let referer = format!("http://{host}/jobs?queue=emails");
    let ours = [("Origin", origin.as_str()), ("Referer", referer.as_str())];
    let done = http("POST", &format!("{base}/queues/emails/pause"), &ours, None);
    assert_eq!(done.status, 303);
    assert_eq!(done.header("location"), Some("/jobs?queue=emails"));
    assert!(paused(&store.queues().await.unwrap(), "emails"));
    http("POST", &format!("{base}/queues/emails/resume"), &ours, None);
    assert!(!paused(&store.queues().await.unwrap(), "emails"));

    let done = http("POST", &format!("{base}/jobs/{f}/retry"), &ours, None);
    assert_eq!(done.status, 303);
    assert_eq!(store.job(failed).await.unwrap().state, JobState::Ready);
    let again = http("POST", &format!("{base}/jobs/{f}/retry"), &ours, None);
    assert_eq!(again.status, 400, "only a failed job can be retried");
    let done = http("POST", &format!("{base}/jobs/{f}/cancel"), &ours, None);
    assert_eq!(done.status, 303);
    assert!(matches!(
        store.job(failed).await,
        Err(pq_api::Error::NotFound(_))
    ));
}

/// chromedriver, on a free port, stopped when dropped.
struct Driver {
    child: Child,
    base: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn chromedriver() -> Driver {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "chromedriver cannot start ({e}): install Debian's chromium and chromium-driver \
                 packages (scripts/test.sh does)"
            )
        });
    let driver = Driver {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "chromedriver never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    driver
}

/// A WebDriver command: its `value`, or a panic saying what the driver answered.
fn webdriver(method: &str, url: &str, body: Option<Value>) -> Value {
    let text = body.map(|b| b.to_string());
    let r = http(method, url, &[], text.as_deref());
    let answer: Value =
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{method} {url}: {e}: {}", r.body));
    assert_eq!(r.status, 200, "{method} {url}: {answer}");
    answer["value"].clone()
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_clicked_in_a_browser_takes_the_job_off_the_failed_list() {
    let (url, schema, store, failed) = seeded().await;
    let f = failed.0;
    let served = serve(
        &url,
        &schema,
        &["--allow-actions", "--sample-every", "100ms"],
    );
    // Some work while the chart samples, so the overview has a line to draw.
    for i in 0..5 {
        store.put("emails", &json!({"n": i})).await.unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    let base = served.base.clone();
    let shot = tokio::task::spawn_blocking(move || {
        let driver = chromedriver();
        let session = webdriver(
            "POST",
            &format!("{}/session", driver.base),
            Some(json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1280,720"
                ]}
            }}})),
        );
        let id = session["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        let s = format!("{}/session/{id}", driver.base);
        webdriver(
            "POST",
            &format!("{s}/url"),
            Some(json!({"url": format!("{base}/")})),
        );
        let png = webdriver("GET", &format!("{s}/screenshot"), None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("a base64 screenshot"))
            .expect("base64");
        let row = format!("#failed tr[data-job=\"{f}\"]");
        let find = |css: &str| {
            webdriver(
                "POST",
                &format!("{s}/elements"),
                Some(json!({"using": "css selector", "value": css})),
            )
        };
        let buttons = find(&format!("{row} button.retry"));
        let Some(button) = buttons[0][ELEMENT].as_str().map(str::to_string) else {
            let source = webdriver("GET", &format!("{s}/source"), None);
            panic!("no retry button for job {f} ({buttons}) on the page:\n{source}");
        };
        webdriver(
            "POST",
            &format!("{s}/element/{button}/click"),
            Some(json!({})),
        );
        let start = Instant::now();
        while find(&row).as_array().is_some_and(|rows| !rows.is_empty()) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the retried job stayed on the failed list"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let shown = webdriver("GET", &format!("{s}/url"), None);
        webdriver("DELETE", &s, None);
        (png, shown)
    })
    .await
    .unwrap();
    let (png, shown) = shot;
    assert_eq!(shown.as_str(), Some(format!("{}/", served.base).as_str()));
    assert_eq!(store.job(failed).await.unwrap().state, JobState::Ready);
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-overview.png");
    std::fs::write(&path, &png).unwrap();
    println!("screenshot of the overview: {}", path.display());
}

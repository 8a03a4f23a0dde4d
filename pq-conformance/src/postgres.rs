//! A PostgreSQL server for tests, and a fresh schema name per case.
//!
//! [`database_url`] returns `PQ_TEST_DATABASE_URL` when it is set. Otherwise it starts one
//! server per test binary through testcontainers, from the image `PQ_TEST_PG_IMAGE`
//! (default `postgres:16`, or our locally built `pq-postgres:15` when the repository's
//! `scripts/build-pg-image.sh` has made it). The server preloads `pg_stat_statements`.
//! The container is removed when the test binary exits.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{GenericImage, ImageExt};
use tokio::sync::OnceCell;

/// The image built by `scripts/build-pg-image.sh`, used when it exists locally.
pub const LOCAL_IMAGE: &str = "pq-postgres:15";

static URL: OnceCell<String> = OnceCell::const_new();

/// The URL of the test server, starting it on first use.
pub async fn database_url() -> String {
    if let Ok(url) = std::env::var("PQ_TEST_DATABASE_URL") {
        return url;
    }
    URL.get_or_init(start_container).await.clone()
}

fn image_name() -> (String, String) {
    let wanted = std::env::var("PQ_TEST_PG_IMAGE").ok().unwrap_or_else(|| {
        let local = std::process::Command::new("docker")
            .args(["image", "inspect", LOCAL_IMAGE])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if local { LOCAL_IMAGE } else { "postgres:16" }.to_string()
    });
    match wanted.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name.to_string(), tag.to_string()),
        _ => (wanted, "latest".to_string()),
    }
}

async fn start_container() -> String {
    let (name, tag) = image_name();
    let container = GenericImage::new(name.clone(), tag.clone())
        .with_exposed_port(5432.tcp())
        // Both the official image and ours say this on stdout after initdb, then the real
        // server logs readiness on stderr (the official image's first "ready" line is a
        // temporary server's, hence the pair).
        .with_wait_for(WaitFor::message_on_stdout(
            "PostgreSQL init process complete",
        ))
        .with_wait_for(WaitFor::message_on_stderr(
            "database system is ready to accept connections",
        ))
        .with_env_var("POSTGRES_PASSWORD", "postgres")
        .with_cmd([
            "postgres",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "max_connections=400",
            "-c",
            "shared_preload_libraries=pg_stat_statements",
        ])
        .with_startup_timeout(Duration::from_secs(120))
        .start()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "could not start PostgreSQL from image {name}:{tag} ({e}); build it with \
                 scripts/build-pg-image.sh or set PQ_TEST_DATABASE_URL"
            )
        });
    let host = container.get_host().await.expect("container host");
    let port = container
        .get_host_port_ipv4(5432)
        .await
        .expect("container port");
    remove_on_exit(container.id());
    // The container must outlive this runtime and every test in the binary; its removal is
    // left to the watcher started above, not to Drop (which needs this runtime).
    std::mem::forget(container);
    format!("postgres://postgres:postgres@{host}:{port}/postgres")
}

/// Starts a watcher process that removes the container once this test process has exited:
/// statics are never dropped, so nothing inside the process can do it.
fn remove_on_exit(id: &str) {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; docker rm -fv {id} >/dev/null 2>&1",
        pid = std::process::id()
    );
    let _ = std::process::Command::new("sh")
        .args(["-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

/// A schema name no other case of any process uses.
pub fn fresh_schema() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "pq_test_{}_{}_{:08x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        fastrand::u32(..)
    )
}

//! Every statement pq runs, rendered for the default table, against the golden file
//! `tests/golden/statements.sql`: a change to any SQL text fails this test until the golden
//! file is rewritten with it (`PQ_BLESS=1 cargo test -p pq-api --test golden`), so the
//! change shows in review.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a test's verdict

use pq_api::postgres::{
    begin_bounded, migrations, MigrationStatements, QueueTable, Statements, HANDLER_IDLE_TIMEOUT,
};

fn rendered() -> String {
    let table = QueueTable::default();
    let mut out = String::from(
        "-- Every statement pq runs, rendered for the default table \"public\".\"pq_jobs\".\n\
         -- Written by pq-api/tests/golden.rs (PQ_BLESS=1); do not edit by hand.\n",
    );
    let mut section = |name: &str, text: &str| {
        out.push_str(&format!("\n-- {name}\n{}\n", text.trim_end()));
    };
    for (name, text) in Statements::new(&table).all() {
        section(&name, &text);
    }
    section(
        "begin, transactional handler",
        &begin_bounded(HANDLER_IDLE_TIMEOUT),
    );
    let m = MigrationStatements::new(&table);
    section("migrations: lock", &m.lock);
    section("migrations: prepare", &m.prepare);
    section("migrations: applied", &m.applied);
    section("migrations: record", &m.record);
    for step in migrations(&table) {
        section(
            &format!("migration {}: {}", step.version, step.description),
            &step.sql,
        );
    }
    out
}

#[test]
fn every_statement_matches_the_golden_file() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/statements.sql");
    let now = rendered();
    if std::env::var_os("PQ_BLESS").is_some() {
        std::fs::write(path, &now).unwrap();
        return;
    }
    let golden = std::fs::read_to_string(path).unwrap_or_default();
    if golden != now {
        let first = golden
            .lines()
            .zip(now.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(golden.lines().count().min(now.lines().count()));
        panic!(
            "the rendered SQL differs from {path} from line {}: review the change, then \
             rewrite the file with PQ_BLESS=1 cargo test -p pq-api --test golden\n\
             golden: {:?}\nnow:    {:?}",
            first + 1,
            golden.lines().nth(first),
            now.lines().nth(first)
        );
    }
}

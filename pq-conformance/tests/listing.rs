//! `suite!` runs every case the modules define: a case written but not listed would never run.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a test's verdict

use std::collections::BTreeSet;
use std::path::Path;

/// Every `area::case`: a public async fn taking the store, in `src/<area>.rs`.
fn defined_cases(src: &Path) -> BTreeSet<String> {
    let mut cases = BTreeSet::new();
    for area in pq_conformance::AREAS {
        let text = std::fs::read_to_string(src.join(format!("{area}.rs"))).unwrap();
        for (at, _) in text.match_indices("pub async fn ") {
            let rest = &text[at + "pub async fn ".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let params = &rest[name.len()..rest.find(')').unwrap()];
            if params.contains("Arc<dyn QueueStore>") {
                cases.insert(format!("{area}::{name}"));
            }
        }
    }
    cases
}

/// Every `area::case` named in the macros of `src/lib.rs`.
fn listed_cases(lib: &str) -> BTreeSet<String> {
    lib.lines()
        .map(str::trim)
        .filter_map(|l| l.strip_suffix(','))
        .filter(|l| {
            l.split_once("::").is_some_and(|(area, case)| {
                pq_conformance::AREAS.contains(&area)
                    && case.chars().all(|c| c.is_alphanumeric() || c == '_')
            })
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn suite_lists_every_case_the_modules_define() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let defined = defined_cases(&src);
    let listed = listed_cases(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
    assert!(defined.len() > 50, "found the cases: {}", defined.len());
    let missing: Vec<_> = defined.difference(&listed).collect();
    assert!(missing.is_empty(), "cases never run by suite!: {missing:?}");
    let unknown: Vec<_> = listed.difference(&defined).collect();
    assert!(unknown.is_empty(), "listed but not defined: {unknown:?}");
}

#[test]
fn a_store_skips_an_area_out_loud_and_a_misspelt_area_fails() {
    assert!(pq_conformance::skipped("[history, keys]", "keys", "k"));
    assert!(!pq_conformance::skipped("[history]", "put", "p"));
    assert!(!pq_conformance::skipped("[]", "put", "p"));
    assert!(std::panic::catch_unwind(|| pq_conformance::skipped("[histroy]", "put", "p")).is_err());
}

//! Examples live in this package; see the `[[example]]` targets.
//!
//! This library holds nothing but the project's Markdown files, compiled as doctests so that
//! every Rust snippet in them stays true (this package depends on every crate they use).

/// The README's Rust snippets.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

/// BENCHMARKS.md's Rust snippets, should it have any.
#[cfg(doctest)]
#[doc = include_str!("../../BENCHMARKS.md")]
struct BenchmarksDoctests;

/// CONTRIBUTING.md's Rust snippets, should it have any.
#[cfg(doctest)]
#[doc = include_str!("../../CONTRIBUTING.md")]
struct ContributingDoctests;

/// The design notes' Rust snippets, should they have any.
#[cfg(doctest)]
#[doc = include_str!("../../docs/design.md")]
struct DesignDoctests;

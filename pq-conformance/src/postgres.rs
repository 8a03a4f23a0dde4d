//! PostgreSQL harness (filled in below).

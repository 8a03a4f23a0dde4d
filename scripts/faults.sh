#!/usr/bin/env bash
# The fault suite (examples/faults.rs): jobs run through worker processes while PostgreSQL is
# restarted, paused, cut off and has its connections killed, and workers are killed and
# signalled; prints a table per store, scenario and mode, and exits non-zero if a row misses
# the bar. `--quick` runs the short subset CI runs. Needs Docker and the test image.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-pg-image.sh
cargo build -q -p pq-examples --example faults
exec ./target/debug/examples/faults "$@"

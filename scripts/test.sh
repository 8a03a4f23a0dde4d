#!/usr/bin/env bash
# Runs every test: the conformance suite on the memory, sqlx and diesel stores, the PostgreSQL
# behaviour tests and the doc tests. PostgreSQL comes from testcontainers, started from the
# image built here (once) out of Debian's packages; set PQ_TEST_DATABASE_URL to use an existing
# server instead. The dashboard's browser test drives Debian's headless Chromium through
# chromedriver: scripts/install-chromium.sh installs both when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-chromium.sh
if [ -z "${PQ_TEST_DATABASE_URL:-}" ]; then
  bash scripts/build-pg-image.sh
fi
cargo test --workspace "$@"

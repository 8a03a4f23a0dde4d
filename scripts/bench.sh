#!/usr/bin/env bash
# Runs the benchmark (examples/bench.rs) on every store against a throwaway PostgreSQL server
# started from the locally built image, with default durability settings (fsync and
# synchronous_commit on) and shared_buffers=1GB. Its data directory is a Docker volume on the
# host's disk: the container's own filesystem is the storage driver's (fuse-overlayfs here),
# where every WAL flush goes through FUSE; measured, that cost a third of the end-to-end
# throughput and made runs minutes apart differ by half. Extra arguments go to the program
# (`--quick`, `--json`, `--jobs N`, ...). Set DATABASE_URL to use an existing server instead.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${DATABASE_URL:-}" ]; then
  bash scripts/build-pg-image.sh
  name="pq-bench-$$"
  docker run -d --name "$name" -v /var/lib/postgresql/data -e POSTGRES_PASSWORD=bench "${PQ_TEST_PG_IMAGE:-pq-postgres:15}" \
    postgres -c shared_buffers=1GB -c max_connections=200 >/dev/null
  trap 'docker rm -fv "$name" >/dev/null' EXIT
  ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$name")
  # Straight to the container's address: the port proxy would add to every round trip.
  export DATABASE_URL="postgres://postgres:bench@$ip:5432/postgres"
  for _ in $(seq 1 120); do
    if docker logs "$name" 2>&1 | grep -q "PostgreSQL init process complete" &&
      docker exec "$name" pg_isready -q -h 127.0.0.1 2>/dev/null; then
      break
    fi
    sleep 0.5
  done
fi
# PQ_BENCH_DEBUG=1 runs the debug build: figures that mean nothing, but a quick check (in CI)
# that every phase still runs against the current schema and statements.
if [ -n "${PQ_BENCH_DEBUG:-}" ]; then
  cargo run -q -p pq-examples --example bench -- "$@"
else
  cargo run --release -q -p pq-examples --example bench -- "$@"
fi

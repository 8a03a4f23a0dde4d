#!/usr/bin/env bash
# Runs the benchmark (examples/bench.rs) on every store against a throwaway PostgreSQL server
# started from the locally built image, with default durability settings (fsync and
# synchronous_commit on) and shared_buffers=1GB. Its data directory is a Docker volume on the
# host's disk: the container's own filesystem is the storage driver's (fuse-overlayfs here),
# where every WAL flush goes through FUSE; measured, that cost a third of the end-to-end
# throughput and made runs minutes apart differ by half. Extra arguments go to the program
# (`--quick`, `--json`, `--jobs N`, ...). Set DATABASE_URL to use an existing server instead.
#
# `--compare` runs the comparison profile (the program's `--compare`) twice: first on a server
# with PostgreSQL's stock settings, as other queues are measured, then on the tuned one above;
# each prints its own table, headed by its profile.
set -euo pipefail
cd "$(dirname "$0")/.."

compare=""
for a in "$@"; do
  if [ "$a" = "--compare" ]; then compare=1; fi
done

run() {
  # PQ_BENCH_DEBUG=1 runs the debug build: figures that mean nothing, but a quick check (in
  # CI) that every phase still runs against the current schema and statements.
  if [ -n "${PQ_BENCH_DEBUG:-}" ]; then
    cargo run -q -p pq-examples --example bench -- "$@"
  else
    cargo run --release -q -p pq-examples --example bench -- "$@"
  fi
}

# Starts a throwaway server with the given settings and sets DATABASE_URL to it.
start() {
  bash scripts/build-pg-image.sh
  local name="pq-bench-$$-$1"
  shift
  docker run -d --name "$name" -v /var/lib/postgresql/data -e POSTGRES_PASSWORD=bench \
    "${PQ_TEST_PG_IMAGE:-pq-postgres:15}" postgres "$@" >/dev/null
  started+=("$name")
  local ip
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
}

started=()
trap 'for n in "${started[@]}"; do docker rm -fv "$n" >/dev/null; done' EXIT
tuned=(-c shared_buffers=1GB -c max_connections=200)

if [ -n "${DATABASE_URL:-}" ]; then
  run "$@"
elif [ -n "$compare" ]; then
  echo "## Stock PostgreSQL settings"
  start stock
  run "$@"
  docker rm -fv "${started[0]}" >/dev/null
  started=()
  echo
  echo "## Tuned: shared_buffers=1GB"
  start tuned "${tuned[@]}"
  run "$@"
else
  start tuned "${tuned[@]}"
  run "$@"
fi

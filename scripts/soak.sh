#!/usr/bin/env bash
# Runs the soak (examples/soak.rs) against a throwaway PostgreSQL server started from the
# locally built image, as scripts/bench.sh does. Extra arguments go to the program
# (`--minutes N`, default 60 here; `--rate R` jobs a second). Set DATABASE_URL to use an
# existing server instead.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${DATABASE_URL:-}" ]; then
  bash scripts/build-pg-image.sh
  name="pq-soak-$$"
  docker run -d --name "$name" -v /var/lib/postgresql/data -e POSTGRES_PASSWORD=soak "${PQ_TEST_PG_IMAGE:-pq-postgres:15}" \
    postgres -c shared_buffers=256MB >/dev/null
  trap 'docker rm -fv "$name" >/dev/null' EXIT
  ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$name")
  export DATABASE_URL="postgres://postgres:soak@$ip:5432/postgres"
  for _ in $(seq 1 120); do
    if docker logs "$name" 2>&1 | grep -q "PostgreSQL init process complete" &&
      docker exec "$name" pg_isready -q -h 127.0.0.1 2>/dev/null; then
      break
    fi
    sleep 0.5
  done
fi
args=("$@")
if [[ " ${args[*]-} " != *" --minutes "* ]]; then
  args+=(--minutes 60)
fi
cargo run --release -q -p pq-examples --example soak -- "${args[@]}"

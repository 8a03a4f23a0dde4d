#!/usr/bin/env bash
# Mutation testing of the conformance suite: how many deliberately broken stores it catches.
#
#   bash scripts/mutants.sh memory   # cargo-mutants on pq-memory, against its conformance run
#   bash scripts/mutants.sh sql      # hand-written mutants of the shared SQL, against sqlx
#   bash scripts/mutants.sh          # both
#
# Every mutant must be caught (a test fails) or be listed with its reason: in
# .cargo/mutants.toml (exclude_re) for cargo-mutants, in ALLOWED of scripts/sql_mutants.py for
# the SQL ones.
# Prints the score of each part and exits non-zero if a mutant outside the lists survives.
set -euo pipefail
cd "$(dirname "$0")/.."
part="${1:-all}"
status=0

memory() {
  if ! cargo mutants --version >/dev/null 2>&1; then
    cargo install --locked cargo-mutants --version 27.1.0
  fi
  # The conformance suite on the memory store is pq-memory's own test target.
  cargo mutants --package pq-memory --test-package pq-memory \
    --cargo-test-arg=--test=conformance --output target/mutants --no-shuffle || true
  local out=target/mutants/mutants.out
  local caught missed timeout unviable
  caught=$(wc -l <"$out/caught.txt")
  missed=$(wc -l <"$out/missed.txt")
  timeout=$(wc -l <"$out/timeout.txt")
  unviable=$(wc -l <"$out/unviable.txt")
  echo "mutants (pq-memory): $caught caught, $timeout timed out (caught), $missed missed, $unviable unviable"
  if [ "$missed" -gt 0 ]; then
    echo "missed:"; cat "$out/missed.txt"
    status=1
  fi
}

sql() {
  python3 scripts/sql_mutants.py || status=1
}

mkdir -p target
case "$part" in
  memory) memory ;;
  sql) sql ;;
  all) memory; sql ;;
  *) echo "usage: scripts/mutants.sh [memory|sql|all]" >&2; exit 2 ;;
esac
exit "$status"

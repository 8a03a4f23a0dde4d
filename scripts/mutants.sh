#!/usr/bin/env bash
# Mutation testing of the conformance suite: how many deliberately broken stores it catches.
#
#   bash scripts/mutants.sh memory   # cargo-mutants on pq-memory, against its conformance run
#   bash scripts/mutants.sh written  # the hand-written mutants (scripts/mutants.py): memory
#                                    # store, shared SQL, PostgreSQL store, worker, by area
#   bash scripts/mutants.sh          # both
# Arguments after `written` go to scripts/mutants.py (`--part sql`, `--area unique`, `--list`).
#
# Every mutant must be caught (a test fails) or be listed with its reason: in
# .cargo/mutants.toml (exclude_re) for cargo-mutants, in ALLOWED of scripts/mutants.py for
# the hand-written ones.
# Prints the score of each part and exits non-zero if a mutant outside the lists survives.
set -euo pipefail
cd "$(dirname "$0")/.."
part="${1:-all}"
shift || true
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

written() {
  python3 scripts/mutants.py "$@" || status=1
}

mkdir -p target
case "$part" in
  memory) memory ;;
  written) written "$@" ;;
  all) memory; written ;;
  *) echo "usage: scripts/mutants.sh [memory|written|all] [mutants.py options]" >&2; exit 2 ;;
esac
exit "$status"

#!/usr/bin/env bash
# Checks the minimum Rust version the workspace declares (`rust-version` in Cargo.toml):
#  1. no dependency in Cargo.lock asks for a newer Rust;
#  2. clippy's `incompatible_msrv` finds no standard-library API newer than it;
#  3. the workspace builds with that toolchain, when it is installed (rustup cannot fetch one
#     on a machine without network access to it, and the check says so rather than pass).
set -euo pipefail
cd "$(dirname "$0")/.."
msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml | head -1)
echo "msrv: declared $msrv"

cargo metadata --format-version 1 --locked | python3 -c '
import json, sys
msrv = sys.argv[1]
def key(v):
    parts = [int(x) for x in v.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))
meta = json.load(sys.stdin)
resolved = {node["id"] for node in meta["resolve"]["nodes"]}
newer = [
    "%s %s needs Rust %s" % (p["name"], p["version"], p["rust_version"])
    for p in meta["packages"]
    if p["id"] in resolved and p.get("rust_version") and key(p["rust_version"]) > key(msrv)
]
if newer:
    sys.exit("msrv: dependencies need a newer Rust than " + msrv + ":\n  " + "\n  ".join(newer))
print("msrv: every locked dependency builds on Rust " + msrv)
' "$msrv"

cargo clippy -q --workspace --all-targets -- -D clippy::incompatible_msrv
echo "msrv: no standard-library API newer than $msrv"

if rustup toolchain list 2>/dev/null | grep -q "^$msrv"; then
  cargo "+$msrv" check -q --workspace --all-targets --locked
  echo "msrv: the workspace builds on Rust $msrv"
else
  echo "msrv: Rust $msrv is not installed here; building on it was not checked"
fi

#!/usr/bin/env python3
"""Compares the worker's hot path of two builds: interleaved short runs, paired ratios.

    python3 scripts/compare.py A B [--rounds 12] [--stores sqlx,diesel] [-- hotpath args]

A and B are commits (anything `git rev-parse` takes), or `.` for the working tree as it is.
Each is checked out in a worktree under the target directory, given the current
`examples/hotpath.rs` (the program keeps to API every compared commit has), and built in
release mode into a target directory of its own: two checkouts of one workspace share their
crates' build hashes, and in one target directory cargo takes the other checkout's build for
this one's (a first build of a commit takes a few minutes; later ones reuse it).

The runs alternate, A then B in one round and B then A in the next, on every store, so a host
that speeds up or slows down during the comparison moves both sides alike. Each round gives one
ratio B/A per figure; the report shows the geometric mean of those ratios and a 95% confidence
interval (Student's t on the log ratios). A change is real when its interval leaves 1.0.

It runs against DATABASE_URL if set, else a throwaway server from the locally built image
(`scripts/build-pg-image.sh`), as `scripts/bench.sh` does.
"""
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
WORK = os.path.join(TARGET, "compare")
# Two-sided 95% quantiles of Student's t, by degrees of freedom.
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26,
       10: 2.23, 11: 2.20, 12: 2.18, 13: 2.16, 14: 2.14, 15: 2.13, 16: 2.12, 17: 2.11,
       18: 2.10, 19: 2.09, 20: 2.09, 25: 2.06, 30: 2.04, 40: 2.02, 60: 2.00}
FIGURES = [  # (key, label, higher is better)
    ("worker", "worker, jobs/s", True),
    ("worker_c1", "worker at concurrency 1, jobs/s", True),
    ("pickup_p50_ms", "pickup p50, ms", False),
    ("pickup_p99_ms", "pickup p99, ms", False),
    ("put_many", "put_many x1000, jobs/s", True),
]


def sh(*cmd, cwd=ROOT, env=None, capture=False):
    r = subprocess.run(cmd, cwd=cwd, env=env, check=True, text=True,
                       stdout=subprocess.PIPE if capture else None)
    return r.stdout.strip() if capture else None


def build(rev):
    """Builds the hot-path program at `rev`; returns the path of its binary."""
    os.makedirs(os.path.join(WORK, "bin"), exist_ok=True)
    env = dict(os.environ, CARGO_TARGET_DIR=TARGET)
    target = TARGET
    if rev == ".":
        name, tree = "worktree", ROOT
    else:
        name = sh("git", "rev-parse", "--short=10", rev + "^{commit}", capture=True)
        tree = os.path.join(WORK, name)
        if not os.path.isdir(tree):
            sh("git", "worktree", "add", "--detach", "--force", tree, name)
        shutil.copy(os.path.join(ROOT, "examples", "hotpath.rs"),
                    os.path.join(tree, "examples", "hotpath.rs"))
        manifest = os.path.join(tree, "examples", "Cargo.toml")
        with open(manifest) as f:
            text = f.read()
        if 'name = "hotpath"' not in text:
            with open(manifest, "a") as f:
                f.write('\n[[example]]\nname = "hotpath"\npath = "hotpath.rs"\n')
        target = os.path.join(WORK, "target-" + name)
        env["CARGO_TARGET_DIR"] = target
    print(f"building {rev} ({name})", file=sys.stderr)
    sh("cargo", "build", "--release", "-q", "-p", "pq-examples", "--example", "hotpath",
       cwd=tree, env=env)
    out = os.path.join(WORK, "bin", f"hotpath-{name}")
    shutil.copy(os.path.join(target, "release", "examples", "hotpath"), out)
    return out


def start_server():
    """Starts a throwaway server; returns its URL and a function that removes it."""
    sh("bash", "scripts/build-pg-image.sh")
    name = f"pq-compare-{os.getpid()}"
    image = os.environ.get("PQ_TEST_PG_IMAGE", "pq-postgres:15")
    sh("docker", "run", "-d", "--name", name, "-v", "/var/lib/postgresql/data",
       "-e", "POSTGRES_PASSWORD=bench", image, "postgres", "-c", "shared_buffers=1GB",
       "-c", "max_connections=200", capture=True)

    def remove():
        subprocess.run(["docker", "rm", "-fv", name], stdout=subprocess.DEVNULL)
    ip = sh("docker", "inspect", "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name, capture=True)
    for _ in range(240):
        logs = subprocess.run(["docker", "logs", name], text=True, capture_output=True)
        ready = subprocess.run(["docker", "exec", name, "pg_isready", "-q", "-h", "127.0.0.1"])
        if "init process complete" in logs.stdout + logs.stderr and ready.returncode == 0:
            break
        time.sleep(0.5)
    return f"postgres://postgres:bench@{ip}:5432/postgres", remove


def interval(ratios):
    """Geometric mean of the ratios and its 95% confidence interval."""
    logs = [math.log(r) for r in ratios if r > 0 and math.isfinite(r)]
    mean = statistics.fmean(logs)
    if len(logs) < 2:
        return math.exp(mean), float("nan"), float("nan")
    df = len(logs) - 1
    t = T95[max(k for k in T95 if k <= df)]
    half = t * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def main():
    argv = sys.argv[1:]
    extra = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    rounds, stores, revs = 12, ["sqlx", "diesel"], []
    it = iter(argv)
    for a in it:
        if a == "--rounds":
            rounds = int(next(it))
        elif a == "--stores":
            stores = next(it).split(",")
        elif a in ("-h", "--help"):
            print(__doc__)
            return
        else:
            revs.append(a)
    if len(revs) != 2:
        sys.exit("usage: compare.py A B [--rounds N] [--stores sqlx,diesel] [-- hotpath args]")
    bins = [build(r) for r in revs]
    url, remove = os.environ.get("DATABASE_URL"), None
    if not url:
        url, remove = start_server()
    runs = {s: ([], []) for s in stores}
    try:
        for rnd in range(rounds):
            order = [0, 1] if rnd % 2 == 0 else [1, 0]
            for store in stores:
                for side in order:
                    out = sh(bins[side], "--store", store, *extra, capture=True,
                             env=dict(os.environ, DATABASE_URL=url))
                    runs[store][side].append(json.loads(out.splitlines()[-1]))
            print(f"round {rnd + 1}/{rounds} done", file=sys.stderr)
    finally:
        if remove:
            remove()
    a, b = revs
    print(f"# {b} against {a}: {rounds} interleaved rounds, ratio B/A, 95% CI\n")
    print(f"| store | figure | {a} (median) | {b} (median) | B/A | 95% CI | verdict |")
    print("|---|---|---:|---:|---:|---|---|")
    for store in stores:
        ra, rb = runs[store]
        for key, label, higher in FIGURES:
            xa = [r[key] for r in ra]
            xb = [r[key] for r in rb]
            g, lo, hi = interval([y / x if x else float("nan") for x, y in zip(xa, xb)])
            if lo > 1:
                verdict = "B better" if higher else "B worse"
            elif hi < 1:
                verdict = "B worse" if higher else "B better"
            else:
                verdict = "no difference seen"
            print(f"| {store} | {label} | {statistics.median(xa):,.2f} | "
                  f"{statistics.median(xb):,.2f} | {g:.3f} | {lo:.3f}–{hi:.3f} | {verdict} |")


if __name__ == "__main__":
    main()

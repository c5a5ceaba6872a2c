"""A Redis Cluster master killed under load: per-shard hit figures, before (a base commit) and after.

    python bench/cluster_failover.py                 # base = 8bddd0f, the commit before issue 20's fix
    python bench/cluster_failover.py --base main

Runs tests/test_redis_failover.py with `-s` twice: once on this tree, once on the base commit's
gateway/ (exported with `git archive` to a temporary folder, with this tree's test and cluster
fixture copied in, so both runs drive the same load at the same kind of cluster). Prints the
tables the test prints: requests, pairs and cache hits per phase (before the kill, down until the
replica is promoted, after) and shard (the killed master's, or a healthy one's). On the base the
test's assertions fail; that is the point. About a minute; needs redis-server and redis-cli.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST = "tests/test_redis_failover.py"
CARRIED = [TEST, "tests/support/redis_cluster.py"]


def run(tree: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-s", TEST],
        cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, timeout=600,
    )
    tables, keep = [], False
    for line in result.stdout.splitlines():
        if "promoted)" in line:
            keep = True
        elif keep and not line.startswith("  "):
            keep = False
        if keep:
            tables.append(line)
    summary = [line for line in result.stdout.splitlines() if " passed" in line or " failed" in line]
    return "\n".join([*tables, *summary[-1:]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="8bddd0f", help="the commit to compare with (default 8bddd0f)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="failover-base-") as folder:
        base = Path(folder)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.base], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
        for path in CARRIED:
            shutil.copy(ROOT / path, base / path)
        print(f"## before: {args.base}\n{run(base)}\n")
    print(f"## after: this tree\n{run(ROOT)}")


if __name__ == "__main__":
    main()

"""What a benchmark's JSON says besides its figures: the commit, the machine, the libraries.

pyperf's habit: a result that does not name what it ran on cannot be compared with another.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
# The libraries on the request path, and the gateway itself (its distribution's name).
LIBRARIES = ("aiohttp", "redis", "orjson", "pydantic", "hiredis", "pyperf", "rerank-gateway")


def commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout

    try:
        return {"sha": git("rev-parse", "HEAD").strip(), "dirty": bool(git("status", "--porcelain").strip())}
    except (OSError, subprocess.CalledProcessError) as exc:  # not a checkout (an sdist, an exported tree)
        return {"sha": None, "dirty": None, "error": str(exc)}


def _proc_field(path: str, name: str) -> str | None:
    try:
        with open(path) as lines:
            for line in lines:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    memory = _proc_field("/proc/meminfo", "MemTotal")  # "16315412 kB"
    return {
        "cpu_model": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_bytes": int(memory.split()[0]) * 1024 if memory else None,
        "load_average": list(os.getloadavg()),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def write(path: Path, name: str, argv: list[str], started: datetime, seconds: float,
          figures: dict[str, float]) -> None:
    document = {
        "benchmark": name,
        "argv": argv,
        "command": " ".join([Path(sys.executable).name, "-m", "bench", "run", name, "--", *argv]),
        "started": started.isoformat(timespec="seconds"),
        "wall_seconds": round(seconds, 3),
        "commit": commit(),
        "machine": machine(),
        "versions": versions(),
        "figures": figures,
    }
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")


def now() -> datetime:
    return datetime.now(UTC)

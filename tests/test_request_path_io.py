"""From the first request on, serving imports no module and opens no file: either fails with EMFILE
when a crowd of clients holds every descriptor (the ledger's first strptime did, a 500)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from gateway.observability.metrics import MULTIPROC_DIR_ENV
from tests.support.config import EMULATOR_KEY
from tests.support.processes import REPO

pytestmark = [pytest.mark.processes, pytest.mark.slow]


@pytest.mark.parametrize("metrics", ["one process", "multi-process"])
def test_the_request_path_imports_and_opens_nothing_from_the_first_request_on(metrics: str, tmp_path: Path):
    environ = {**os.environ, "EMULATOR_KEY": EMULATOR_KEY}
    environ.pop(MULTIPROC_DIR_ENV, None)
    if metrics == "multi-process":  # prometheus-client keeps a file per kind of value and process
        environ[MULTIPROC_DIR_ENV] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "tests.support.request_path_io"], cwd=REPO, capture_output=True, text=True, timeout=60,
        env=environ,
    )
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout.splitlines()[-1])
    assert report["first"] == report["again"] == [200, 200, 200, 200, 422, 200]
    assert report["noted"] == []

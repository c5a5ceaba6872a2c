"""From the first request on, serving imports no module and opens no file: either fails with EMFILE
when a crowd of clients holds every descriptor (the ledger's first strptime did, a 500)."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from tests.support.config import EMULATOR_KEY
from tests.support.processes import REPO

pytestmark = [pytest.mark.processes, pytest.mark.slow]


def test_the_request_path_imports_and_opens_nothing_from_the_first_request_on():
    result = subprocess.run(
        [sys.executable, "-m", "tests.support.request_path_io"], cwd=REPO, capture_output=True, text=True, timeout=60,
        env={**os.environ, "EMULATOR_KEY": EMULATOR_KEY},
    )
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout.splitlines()[-1])
    assert report["first"] == report["again"] == [200, 200, 200, 200, 422, 200]
    assert report["noted"] == []

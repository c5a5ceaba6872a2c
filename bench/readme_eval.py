"""The README's eval figures, run rather than typed: both examples of "Choosing a fallback order".

    python -m bench run readme-eval                 # prints both tables
    python -m bench run readme-eval -- --write      # and writes them into README.md

Each example runs as the README says a user runs it: `rerank-gateway emulate` (with the faults the
README posts), the e5 servers of tests/support/embedding_reranker.py for local-models.toml (whose
ports it reads from E5_PORT, E5_ENPT_PORT and EMULATOR_PORT), and `rerank-gateway eval --out`.
The table and the recommendation are the CLI's own (gateway/evaluation/table.py), put between the
README's `<!-- eval:NAME -->` and `<!-- /eval:NAME -->` markers, so nothing in them is typed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.registry import Figures
from gateway.evaluation.recommend import format_recommendation
from gateway.evaluation.table import format_report
from tests.support.embedding_reranker import serving
from tests.support.processes import REPO, free_port, running

README = REPO / "README.md"
EXAMPLES = REPO / "examples"


def main(argv: Sequence[str] | None = None) -> Figures:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the tables into README.md")
    options = parser.parse_args(argv)
    blocks = {"word-overlap": _word_overlap(), "local-models": _local_models()}
    figures: Figures = {}
    for name, report in blocks.items():
        print(format_report(report), end="\n\n")
        metric = f"ndcg@{report['k']}"
        figures.update({f"{name}.{provider}.{metric}": entry[metric]
                        for provider, entry in report["providers"].items() if metric in entry})
    if options.write:
        text = README.read_text()
        for name, report in blocks.items():
            text = replace_block(text, name, readme_block(report))
        README.write_text(text)
        print(f"wrote {', '.join(blocks)} into {README}")
    return figures


def readme_block(report: dict[str, Any]) -> str:
    """The table, then the recommendation as the CLI prints it, in a code block."""
    table = format_report(report).split("\n\n")[1]
    costs = {name: entry["usd_per_1k_queries"] for name, entry in report["providers"].items()
             if "usd_per_1k_queries" in entry}
    lines = format_recommendation(report["model"], report["recommendation"], costs)
    return table + "\n\n```\n" + "\n".join(lines) + "\n```"


def replace_block(text: str, name: str, block: str) -> str:
    start, end = f"<!-- eval:{name} -->", f"<!-- /eval:{name} -->"
    before, found, rest = text.partition(start)
    if not found or end not in rest:
        raise SystemExit(f"README.md has no {start} ... {end} markers")
    return f"{before}{start}\n{block}\n{end}{rest.partition(end)[2]}"


def _word_overlap() -> dict[str, Any]:
    """Fireworks answering random scores, the Cohere-kind provider another scale (README's curls)."""
    port = free_port()
    with running(["emulate", "--port", str(port)], port):
        for provider, mode in (("fireworks", "random"), ("cohere", "rescale")):
            _post(f"http://127.0.0.1:{port}/_emulator/faults", {"provider": provider, "mode": mode})
        return _eval(EXAMPLES / "eval" / "emulator.toml", EXAMPLES / "eval-word-overlap", {"EMULATOR_PORT": str(port)})


def _local_models() -> dict[str, Any]:
    port = free_port()
    with ExitStack() as stack:
        e5 = stack.enter_context(serving("e5"))
        enpt = stack.enter_context(serving("e5-enpt"))
        stack.enter_context(running(["emulate", "--port", str(port)], port))
        env = {"EMULATOR_PORT": str(port), "E5_PORT": e5.rsplit(":", 1)[1], "E5_ENPT_PORT": enpt.rsplit(":", 1)[1]}
        return _eval(EXAMPLES / "eval" / "local-models.toml", EXAMPLES / "eval", env)


def _eval(config: Path, data: Path, env: dict[str, str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "report.json"
        subprocess.run(
            [sys.executable, "-m", "gateway", "eval", "--config", str(config), "--data", str(data), "--out", str(out)],
            cwd=REPO, env={**os.environ, "EMULATOR_KEY": "dev", **env}, check=True, stdout=subprocess.DEVNULL,
        )
        report: dict[str, Any] = json.loads(out.read_text())
        return report


def _post(url: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        answer.read()

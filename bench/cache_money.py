"""Score cache, table 3: what a knowledge base's traffic pays upstream, by cache design.

One seeded KB-like request stream (`workload.KbReplay`) goes through the real gateway in
front of the emulator three times, one request at a time so every run is the same replay:

- no cache: `Cache-Control: no-store`, so the gateway neither reads nor writes its cache;
- a whole-request cache, the way LiteLLM and Portkey cache: modelled here, in the bench's
  client, as an exact-body cache in front of the gateway (which still gets `no-store`);
- the gateway's per-pair cache, in a fresh Redis.

Tokens are the answers' `input_tokens`, what each request paid upstream; the emulator's own
counters (upstream calls, documents scored) cross-check them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.harness import (
    HEADERS,
    PRICE_PER_MILLION_TOKENS,
    Pinning,
    ProcessGroup,
    Server,
    cache_warnings_note,
    client_session,
    markdown,
    redis_url,
    start_emulator,
    start_gateway,
    start_redis,
)
from bench.workload import KbReplay

NO_STORE = {**HEADERS, "Cache-Control": "no-store"}
Json = dict[str, Any]
SECTION_TIMEOUT_S = 900.0


@dataclass
class Spend:
    """One way of caching, over the whole replay."""

    label: str
    requests_to_gateway: int = 0
    client_cache_hits: int = 0
    input_tokens: int = 0
    reported_cost: float = 0.0  # the answers' inference_status.cost, summed
    misses_in_headers: int = 0  # the X-Rerank-Cache misses, summed
    upstream_calls: int = 0  # from the emulator
    upstream_documents: int = 0  # from the emulator
    scores: list[list[float]] = field(default_factory=list, repr=False)  # per request, in order

    @property
    def dollars(self) -> float:
        return self.input_tokens * PRICE_PER_MILLION_TOKENS / 1e6


def run_money_section(replay: KbReplay, cache_timeout_ms: float, pinning: Pinning, workdir: Path
                      ) -> tuple[str, dict[str, float]]:
    bodies = replay.bodies()
    with ProcessGroup(workdir) as group:
        redis = start_redis(group, pinning.emulator)
        # No latency: it changes no token count, and the sequential replay stays short.
        emulator = start_emulator(group, pinning.emulator, latency_ms=0.0)
        # A generous Redis bound: a stall on a busy machine would otherwise skip the cache for a
        # second and charge the per-pair run for pairs it had cached; this table is about design.
        gateway = start_gateway(group, pinning.proxy, emulator, redis_url(redis), cache_timeout_ms)
        group.wait_ready()
        spends = asyncio.run(asyncio.wait_for(_replay_three_ways(bodies, gateway, emulator), SECTION_TIMEOUT_S))
        warnings = cache_warnings_note(gateway)
    notes = [_notes(replay, bodies, spends), f"The gateway's cache.timeout_ms: {cache_timeout_ms:g} ms."]
    figures: dict[str, float] = {f"{way}.{what}": value for way, spend in zip(("no_cache", "whole_request", "per_pair"), spends)
               for what, value in (("input_tokens", spend.input_tokens), ("upstream_pairs", spend.upstream_documents))}
    return "\n\n".join([render_table(spends), "\n".join(notes + warnings)]), figures


async def _replay_three_ways(bodies: Sequence[bytes], gateway: Server, emulator: Server) -> list[Spend]:
    async with client_session() as session:
        return [
            await _replay(session, Spend("no cache (no-store)"), bodies, gateway, emulator, NO_STORE),
            await _replay(session, Spend("whole-request cache (exact body, in the bench client)"),
                          bodies, gateway, emulator, NO_STORE, whole_request_cache={}),
            await _replay(session, Spend("gateway per-pair cache (fresh Redis)"), bodies, gateway, emulator, HEADERS),
        ]


async def _replay(session: aiohttp.ClientSession, spend: Spend, bodies: Sequence[bytes], gateway: Server,
                  emulator: Server, headers: Mapping[str, str],
                  whole_request_cache: dict[bytes, Json] | None = None) -> Spend:
    await _emulator_call(session, emulator, "POST", "/_emulator/reset")
    for body in bodies:
        cached = None if whole_request_cache is None else whole_request_cache.get(body)
        if cached is not None:
            spend.client_cache_hits += 1
            spend.scores.append(cached["scores"])
            continue
        answer = await _send(session, spend, gateway, body, headers)
        if whole_request_cache is not None:
            whole_request_cache[body] = answer
    stats = await _emulator_call(session, emulator, "GET", "/_emulator/stats")
    spend.upstream_calls = stats["requests"]["deepinfra"]
    spend.upstream_documents = stats["documents"]["deepinfra"]
    return spend


async def _send(session: aiohttp.ClientSession, spend: Spend, gateway: Server, body: bytes,
                headers: Mapping[str, str]) -> Json:
    async with session.post(gateway.url(), data=body, headers=headers) as resp:
        raw = await resp.read()
        cache_header = resp.headers.get("X-Rerank-Cache", "")
    if resp.status != 200:
        raise RuntimeError(f"gateway: HTTP {resp.status}: {raw[:300]!r}\n{gateway.log_tail()}")
    answer: Json = orjson.loads(raw)
    spend.requests_to_gateway += 1
    spend.input_tokens += answer["input_tokens"]
    spend.reported_cost += answer["inference_status"]["cost"]
    spend.misses_in_headers += _misses(cache_header)
    spend.scores.append(answer["scores"])
    return answer


def _misses(cache_header: str) -> int:
    """The M of `hits=H; misses=M`."""
    fields = dict(part.strip().split("=", 1) for part in cache_header.split(";"))
    return int(fields["misses"])


async def _emulator_call(session: aiohttp.ClientSession, emulator: Server, method: str, path: str) -> Json:
    async with session.request(method, emulator.url(path)) as resp:
        answer: Json = orjson.loads(await resp.read())
        return answer


# --- reporting --------------------------------------------------------------------------

def render_table(spends: Sequence[Spend]) -> str:
    baseline = spends[0]
    rows = [["cache", "requests to gateway", "upstream calls", "pairs scored upstream", "input tokens",
             f"$ at ${PRICE_PER_MILLION_TOKENS:g}/1M tokens", "saving vs no cache", "cross-checks"]]
    for spend in spends:
        saving = 1 - spend.input_tokens / baseline.input_tokens if baseline.input_tokens else 0.0
        rows.append([spend.label, f"{spend.requests_to_gateway:,}", f"{spend.upstream_calls:,}",
                     f"{spend.upstream_documents:,}", f"{spend.input_tokens:,}", f"${spend.dollars:.4f}",
                     f"{100 * saving:.1f}%", _cross_checks(spend, baseline)])
    return markdown(rows)


def _cross_checks(spend: Spend, baseline: Spend) -> str:
    checks = {
        "emulator documents = Σ header misses": spend.upstream_documents == spend.misses_in_headers,
        "Σ answered cost = $": abs(spend.reported_cost - spend.dollars) < 1e-9 + 1e-6 * spend.dollars,
        "scores = no cache's": spend.scores == baseline.scores,
    }
    failed = [name for name, ok in checks.items() if not ok]
    return "all ok" if not failed else "FAILED: " + "; ".join(failed)


def _notes(replay: KbReplay, bodies: Sequence[bytes], spends: Sequence[Spend]) -> str:
    pairs, distinct_pairs, distinct_queries = workload_facts(bodies)
    whole, per_pair = spends[1], spends[2]
    floor = "exactly that floor" if per_pair.upstream_documents == distinct_pairs else "NOT that floor"
    return (f"workload: {len(bodies):,} requests (seed {replay.seed}), {distinct_queries} distinct queries drawn "
            f"with Zipf-like repeats (s={replay.zipf_s:g} over {replay.distinct_queries}), {replay.candidates} "
            f"candidates of ~400 chars each; a repeat keeps {replay.overlap[0]:.0%}-{replay.overlap[1]:.0%} of the "
            f"query's previous candidates, the rest newly indexed. {pairs:,} pairs, {distinct_pairs:,} distinct: "
            f"a per-pair cache can at best score {distinct_pairs / pairs:.1%} of them upstream, and the gateway's scored "
            f"{per_pair.upstream_documents:,}, {floor}. The whole-request cache is "
            f"the bench client's exact-body dictionary, as LiteLLM/Portkey key theirs on the whole request; it "
            f"answered {whole.client_cache_hits} of {len(bodies):,}, since no repeat here is byte-identical. "
            "Every request is sent one at a time, so each run replays the same way.")


def workload_facts(bodies: Sequence[bytes]) -> tuple[int, int, int]:
    """(pairs, distinct pairs, distinct queries) of the replay."""
    seen: set[tuple[str, str]] = set()
    queries: set[str] = set()
    pairs = 0
    for body in bodies:
        request = orjson.loads(body)
        query = request["queries"][0]
        queries.add(query)
        pairs += len(request["documents"])
        seen.update((query, document) for document in request["documents"])
    return pairs, len(seen), len(queries)

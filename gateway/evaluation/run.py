"""Score a labelled set with every usable provider of a model, directly: no cache, no fallback.

Providers are scored one after another (so one's latency is not another's queueing), each with
a few queries in flight. A provider that fails a query beyond its retries is stopped and its
error reported; the others still are. The reference for agreement is the first provider in the
model's fallback order that scored, as the quality guard has it.

Eval calls are billed like any call: each goes through the gateway's GuardedCall, which reserves
against the provider's and the gateway's budgets, bills answers without usage by estimate and
settles what answered. The CLI passes the gateway's own ledger, so an eval spends the same
budgets the traffic does; a budget that refuses stops that provider like any other failure.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.budget import Ledger, MemoryLedger
from gateway.config import GatewayConfig
from gateway.errors import ProviderFailure
from gateway.evaluation.beir import Dataset
from gateway.evaluation.bm25 import Bm25Index
from gateway.evaluation.metrics import ndcg_at, precision_at, recall, reciprocal_rank_at
from gateway.evaluation.recommend import DEFAULT_NDCG_MARGIN, recommend
from gateway.models import Batch, Usage
from gateway.observability.metrics import GatewayMetrics
from gateway.providers.client import ProviderClient, build_clients
from gateway.quality.canary import script_of
from gateway.quality.tracker import AgreementTracker
from gateway.resilience.guarded_call import GuardedCall
from gateway.resilience.health import HealthBoard
from gateway.resilience.latency import LatencyTracker
from gateway.resilience.retry import full_jitter_backoff
from gateway.secrets import Secrets

Progress = Callable[[int], None]
_RETRY_BASE_SECONDS, _RETRY_CAP_SECONDS = 0.1, 2.0


@dataclass(frozen=True, slots=True)
class EvalSettings:
    k: int = 10  # cut-off of NDCG and MRR
    candidates: int = 40  # BM25 depth when the set brings no candidates.jsonl
    concurrency: int = 4  # queries in flight per provider
    max_retries: int = 2  # extra tries of a query after a transient failure
    ndcg_margin: float = DEFAULT_NDCG_MARGIN  # providers this close to the best NDCG@k are recommended


@dataclass(slots=True)
class _Scored:
    scores: dict[str, list[float]] = field(default_factory=dict)  # query id -> scores, candidate order
    latencies: list[float] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)


def first_stage(dataset: Dataset, query_ids: Sequence[str], depth: int) -> dict[str, list[str]]:
    """Each query's candidates in first-stage order: the set's own, or BM25's top `depth`."""
    if dataset.candidates is not None:
        return {query_id: dataset.candidates.get(query_id, []) for query_id in query_ids}
    index = Bm25Index(dataset.corpus)
    return {query_id: index.search(dataset.queries[query_id], depth) for query_id in query_ids}


def ranking_metrics(rankings: dict[str, list[str]], dataset: Dataset, k: int) -> dict[str, float]:
    def mean(metric: Callable[[list[str], dict[str, int]], float]) -> float:
        return round(sum(metric(rankings[q], dataset.qrels[q]) for q in rankings) / len(rankings), 4)

    return {
        "p@1": mean(lambda ranked, qrels: precision_at(ranked, qrels, 1)),
        "p@5": mean(lambda ranked, qrels: precision_at(ranked, qrels, 5)),
        f"ndcg@{k}": mean(lambda ranked, qrels: ndcg_at(ranked, qrels, k)),
        f"mrr@{k}": mean(lambda ranked, qrels: reciprocal_rank_at(ranked, qrels, k)),
    }


async def evaluate(config: GatewayConfig, model: str, dataset: Dataset, settings: EvalSettings,
                   on_progress: Progress = lambda done: None, ledger: Ledger | None = None) -> dict[str, Any]:
    """The report: {"lexical": metrics, "providers": {name: metrics, costs, agreement | error}, ...}.

    `ledger` bills the calls (started and closed by the caller); None: one of the run's own.
    """
    query_ids = dataset.judged_queries()
    candidates = first_stage(dataset, query_ids, settings.candidates)
    lexical: dict[str, Any] = dict(ranking_metrics(candidates, dataset, settings.k))
    # the ceiling of any reranker here: relevant passages the first stage did not bring are lost
    lexical["candidate_recall"] = round(
        sum(recall(candidates[q], dataset.qrels[q]) for q in query_ids) / len(query_ids), 4)
    providers: dict[str, dict[str, Any]] = {}
    scored: dict[str, _Scored] = {}
    clients = build_clients(config, Secrets.resolve(config))
    calls = _billing_calls(config, ledger or MemoryLedger())
    for name in config.models[model].fallback:
        client = clients[name]
        if (reason := client.unusable_reason(None)) is not None:
            providers[name] = {"skipped": reason}
            on_progress(len(query_ids))
            continue
        try:
            scored[name] = await _score_provider(calls, client, dataset, candidates, settings, on_progress)
        except ProviderFailure as failure:
            providers[name] = {"error": failure.reason}
    reference = next(iter(scored), None)
    languages = queries_by_language(dataset, query_ids)
    for name, result in scored.items():
        assert reference is not None
        providers[name] = _provider_report(result, scored[reference], candidates, dataset, settings.k, languages)
    if len(languages) > 1:
        lexical["by_language"] = {language: ranking_metrics({q: candidates[q] for q in ids}, dataset, settings.k)
                                  for language, ids in languages.items()}
    ordered = {name: providers[name] for name in config.models[model].fallback}
    metric = f"ndcg@{settings.k}"
    overall = recommend(ordered, metric, settings.ndcg_margin)
    notes = recommendation_notes(config, model, overall, ordered, reference)
    return {
        "model": model, "queries": len(query_ids), "k": settings.k,
        "first_stage": "candidates.jsonl" if dataset.candidates is not None else f"bm25 top {settings.candidates}",
        "candidates": candidate_counts(candidates),
        "reference": reference,
        "providers": ordered,
        "lexical": lexical,
        "languages": {language: len(ids) for language, ids in languages.items()},
        "recommendation": {**overall, "notes": notes},
        "recommendation_by_language": recommend_by_language(ordered, languages, metric, settings, overall),
    }


def queries_by_language(dataset: Dataset, query_ids: Sequence[str]) -> dict[str, list[str]]:
    """The judged queries by the script they are written in (Cyrillic, Han, Latin, ...): a
    provider may rank one language well and another at random, which a pooled figure hides."""
    found: dict[str, list[str]] = {}
    for query_id in query_ids:
        found.setdefault(script_of(dataset.queries[query_id]), []).append(query_id)
    return found


def recommendation_notes(config: GatewayConfig, model: str, advice: Mapping[str, Any],
                         providers: Mapping[str, Mapping[str, Any]], reference: str | None) -> list[str]:
    """What ops should know of the provider the recommendation puts first: off the reference's
    scale (its scores would not share the reference's cache until calibrated), or unpriced (its
    $/1k queries reads 0, so it came first as free)."""
    if not advice["fallback"]:
        return []
    first = advice["fallback"][0]
    entry, notes = providers[first], []
    mae, tolerance = entry.get("agreement_mae"), config.models[model].quality.agreement_tolerance
    if first != reference and mae is not None and mae > tolerance:
        notes.append(f"{first} is off the reference's scale (MAE {mae:.3f} > {tolerance:g}): its scores share "
                     f"{reference}'s cache only once calibrated, and scores of both are not comparable until then")
    if config.providers[first].price_per_million_tokens == 0:
        notes.append(f"{first} has no price in the config (price_per_million_tokens = 0): it came first as free")
    return notes


def recommend_by_language(
    providers: Mapping[str, Mapping[str, Any]], languages: Mapping[str, list[str]], metric: str,
    settings: EvalSettings, overall: Mapping[str, Any],
) -> dict[str, Any]:
    """A recommendation per language, for the languages whose best order starts elsewhere than the overall one."""
    if len(languages) < 2:
        return {}
    found = {}
    for language in languages:
        entries = {name: {**entry, **entry["by_language"][language]} if "by_language" in entry else entry
                   for name, entry in providers.items()}
        advice = recommend(entries, metric, settings.ndcg_margin)
        if advice["fallback"][:1] != overall["fallback"][:1]:
            found[language] = advice
    return found


def candidate_counts(candidates: dict[str, list[str]]) -> dict[str, float]:
    """How many candidates the queries really had: BM25 brings only passages sharing a term, and a
    given candidates.jsonl may be short, so "top 40" alone can overstate what was reranked."""
    counts = [len(ids) for ids in candidates.values()] or [0]
    return {"min": min(counts), "mean": round(sum(counts) / len(counts), 1), "max": max(counts)}


def _provider_report(result: _Scored, reference: _Scored, candidates: dict[str, list[str]],
                     dataset: Dataset, k: int, languages: Mapping[str, list[str]]) -> dict[str, Any]:
    rankings = {query_id: _rerank(candidates[query_id], result.scores.get(query_id, []))
                for query_id in candidates}
    by_language = {} if len(languages) < 2 else {
        "by_language": {language: ranking_metrics({q: rankings[q] for q in ids}, dataset, k)
                        for language, ids in languages.items()}}
    latencies = LatencyTracker(capacity=max(1, len(result.latencies)), min_samples=1)
    for seconds in result.latencies:
        latencies.record(seconds)
    agreement = AgreementTracker(max_samples=max(1, len(result.scores)), min_pairs=1)
    for query_id, scores in result.scores.items():
        agreement.add(reference.scores[query_id], scores)
    measured = agreement.current()
    per_thousand = 1000 / max(1, len(result.scores))
    return {
        **ranking_metrics(rankings, dataset, k),
        "latency_p50_ms": _milliseconds(latencies.quantile(0.5)),
        "latency_p95_ms": _milliseconds(latencies.quantile(0.95)),
        "tokens_per_1k_queries": round(result.usage.tokens * per_thousand),
        "usd_per_1k_queries": round(result.usage.cost_usd * per_thousand, 6),
        "agreement_mae": None if measured is None else round(measured.mae, 4),
        "agreement_kendall_tau": (None if measured is None or measured.kendall_tau is None
                                  else round(measured.kendall_tau, 4)),
        "queries_scored": len(result.scores),
        **by_language,
    }


def _rerank(candidates: list[str], scores: list[float]) -> list[str]:
    """Candidates by score, best first; ties keep first-stage order (sorted() is stable)."""
    if not scores:
        return candidates
    order = sorted(range(len(candidates)), key=lambda position: -scores[position])
    return [candidates[position] for position in order]


def _milliseconds(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _billing_calls(config: GatewayConfig, ledger: Ledger) -> GuardedCall:
    """The gateway's guarded call, retrying nothing itself: this run's own retries are per query."""
    once = config.model_copy(update={"resilience": config.resilience.model_copy(update={"max_retries": 0})})
    return GuardedCall(once, ledger, HealthBoard(once.resilience), GatewayMetrics())


async def _score_provider(calls: GuardedCall, client: ProviderClient, dataset: Dataset, candidates: dict[str, list[str]],
                          settings: EvalSettings, on_progress: Progress) -> _Scored:
    result, rng = _Scored(), random.Random()
    semaphore = asyncio.Semaphore(settings.concurrency)
    reported = 0

    async def score_query(query_id: str) -> None:
        nonlocal reported
        documents = [dataset.corpus[doc_id] for doc_id in candidates[query_id]]
        if documents:  # the first stage found nothing: nothing to rerank
            async with semaphore:
                started = time.perf_counter()
                scores, usage = await _score_with_retries(calls, client, dataset.queries[query_id], documents,
                                                          settings.max_retries, rng)
                result.latencies.append(time.perf_counter() - started)
            result.scores[query_id] = scores
            result.usage.add(usage)
        reported += 1
        on_progress(1)

    await client.start()
    tasks = [asyncio.ensure_future(score_query(query_id)) for query_id in candidates]
    try:
        await asyncio.gather(*tasks)
    except ProviderFailure:
        on_progress(len(tasks) - reported)  # the bar still ends full
        raise
    finally:
        for task in tasks:
            task.cancel()  # a failed provider's remaining queries would only fail too
        await client.close()
    return result


async def _score_with_retries(calls: GuardedCall, client: ProviderClient, query: str, documents: list[str], retries: int,
                              rng: random.Random) -> tuple[list[float], Usage]:
    for attempt in itertools.count():
        try:
            return await calls.score(client, Batch([query] * len(documents), documents, None), None)
        except ProviderFailure as failure:
            if not failure.transient or attempt >= retries:
                raise
            await asyncio.sleep(full_jitter_backoff(attempt, _RETRY_BASE_SECONDS, _RETRY_CAP_SECONDS, rng))
    raise AssertionError("unreachable")

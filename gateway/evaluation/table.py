"""The eval report as a Markdown table: readable in a terminal, pastable into a ticket or README."""

from __future__ import annotations

from typing import Any

from gateway.evaluation.recommend import format_recommendation

# (title, report key, format); {k} is the --k cut-off
_COLUMNS = (("P@1", "p@1", ".3f"), ("P@5", "p@5", ".3f"), ("NDCG@{k}", "ndcg@{k}", ".3f"),
            ("MRR@{k}", "mrr@{k}", ".3f"), ("cand. recall", "candidate_recall", ".3f"), ("p50 ms", "latency_p50_ms", ".1f"),
            ("p95 ms", "latency_p95_ms", ".1f"), ("tokens/1k q", "tokens_per_1k_queries", "d"),
            ("$/1k q", "usd_per_1k_queries", ".2g"), ("MAE", "agreement_mae", ".3f"),
            ("tau", "agreement_kendall_tau", ".3f"))


def format_report(report: dict[str, Any]) -> str:
    k = report["k"]
    header = ["provider", *(title.format(k=k) for title, _, _ in _COLUMNS)]
    rows = [_cells(f"lexical ({first_stage_label(report)})", report["lexical"], k)]
    notes = []
    for name, entry in report["providers"].items():
        if "error" in entry:
            notes.append(f"{name}: error: {entry['error']}")
        elif "skipped" in entry:
            notes.append(f"{name}: skipped: {entry['skipped']}")
        else:
            rows.append(_cells(f"{name} (reference)" if name == report["reference"] else name, entry, k))
    table = [_row(header), _row(["---"] * len(header)), *map(_row, rows)]
    summary = f"model {report['model']}, {report['queries']} queries"
    costs = {name: entry["usd_per_1k_queries"] for name, entry in report["providers"].items()
             if "usd_per_1k_queries" in entry}
    advice = format_recommendation(report["model"], report["recommendation"], costs)
    return "\n".join([summary, "", *table, *(["", *notes] if notes else []), "", *advice,
                      *_by_language(report, costs)])


def _by_language(report: dict[str, Any], costs: dict[str, float]) -> list[str]:
    """NDCG per language of the queries (by script), and a recommendation for each language whose
    best order starts elsewhere: a pooled figure can hide a provider that reads one language only."""
    languages = report.get("languages") or {}
    if len(languages) < 2:
        return []
    metric = f"ndcg@{report['k']}"
    scored = [name for name, entry in report["providers"].items() if "by_language" in entry]
    header = ["language (queries)", "lexical", *scored]
    rows = [[f"{language} ({count})", format(report["lexical"]["by_language"][language][metric], ".3f"),
             *(format(report["providers"][name]["by_language"][language][metric], ".3f") for name in scored)]
            for language, count in languages.items()]
    lines = ["", f"{metric.upper()} by language", _row(header), _row(["---"] * len(header)), *map(_row, rows)]
    for language, advice in (report.get("recommendation_by_language") or {}).items():
        lines += ["", f"for {language} queries:", *format_recommendation(report["model"], advice, costs)]
    return lines


def first_stage_label(report: dict[str, Any]) -> str:
    """"bm25 top 40: 9-40 per query, mean 23.4": what was reranked, not only what was asked for."""
    counts = report["candidates"]
    if counts["min"] == counts["max"]:
        return f"{report['first_stage']}: {counts['max']:g} per query"
    return f"{report['first_stage']}: {counts['min']:g}-{counts['max']:g} per query, mean {counts['mean']:g}"


def _cells(label: str, entry: dict[str, Any], k: int) -> list[str]:
    values = (entry.get(key.format(k=k)) for _, key, _ in _COLUMNS)
    return [label, *("—" if value is None else format(value, spec) for value, (_, _, spec) in zip(values, _COLUMNS))]


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"

"""The eval report as one self-contained HTML file: charts of quality against price and latency.

A pure function of the report `evaluate` returns (the same dict `--out` writes as JSON): inline
CSS and SVG, no script and no external asset, so the file opens anywhere and mails as one
attachment. Every string from the report goes through html.escape; keys a newer report adds are
ignored, and one it lacks shows as a dash.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gateway.evaluation.recommend import format_recommendation
from gateway.evaluation.table import first_stage_label

_QUALITY_COLOURS = ("#0969da", "#8250df")  # NDCG@k, P@5
_LEXICAL_COLOUR = "#8c959f"
_ROW, _LABEL_W, _BAR_W, _VALUE_W = 22, 190, 420, 70

Entry = Mapping[str, Any]


def render_report_html(report: Mapping[str, Any]) -> str:
    k = report.get("k", 10)
    rows = _scored_rows(report)
    title = f"rerank-gateway eval: {report.get('model', '?')}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>"
        f"<h1>{_e(title)}</h1>"
        f"<p class=\"muted\">{_e(str(report.get('queries', '?')))} queries · first stage "
        f"{_e(_first_stage(report))} · reference {_e(str(report.get('reference') or 'none'))}</p>"
        f"{_recommendation(report)}"
        f"<section><h2>Ranking quality, beside the first stage</h2>"
        f"{_quality_chart(rows, k)}</section>"
        "<section class=\"pair\">"
        f"<div><h2>USD per 1,000 queries</h2>{_metric_chart(rows, 'usd_per_1k_queries', _usd, 'cost')}</div>"
        f"<div><h2>p50 latency per query</h2>{_metric_chart(rows, 'latency_p50_ms', _ms, 'p50')}</div>"
        "</section>"
        f"<section><h2>Every figure</h2>{_table(rows, k)}{_notes(report)}</section>"
        f"{_by_language(report, rows, k)}"
        "</main></body></html>\n"
    )


def _first_stage(report: Mapping[str, Any]) -> str:
    if "candidates" in report:
        return first_stage_label(dict(report))
    return str(report.get("first_stage", "bm25"))


def _scored_rows(report: Mapping[str, Any]) -> list[tuple[str, Entry, bool]]:
    """(label, metrics, is the first stage) for BM25 and each provider that scored, in fallback order.

    A provider the recommendation keeps is labelled with its place in the recommended order."""
    order = (report.get("recommendation") or {}).get("fallback", [])
    # The first stage's full label ("bm25 top 40: 4-12 per query, mean 8.4") is in the heading.
    rows: list[tuple[str, Entry, bool]] = [("lexical (first stage)", report.get("lexical", {}), True)]
    for name, entry in report.get("providers", {}).items():
        if "error" not in entry and "skipped" not in entry:
            label = f"{name} (reference)" if name == report.get("reference") else name
            rows.append((f"#{order.index(name) + 1} {label}" if name in order else label, entry, False))
    return rows


def _recommendation(report: Mapping[str, Any]) -> str:
    """The recommended fallback order as the terminal prints it: what was compared, the line to paste."""
    advice = report.get("recommendation")
    if not advice:
        return ""
    costs = {name: entry["usd_per_1k_queries"] for name, entry in report.get("providers", {}).items()
             if "usd_per_1k_queries" in entry}
    lines = format_recommendation(str(report.get("model", "?")), advice, costs)
    paste = [f"<code>{_e(line)}</code>" if line.startswith("fallback = ") else _e(line) for line in lines]
    return f"<p class=\"advice\">{'<br>'.join(paste)}</p>"


def _by_language(report: Mapping[str, Any], rows: Sequence[tuple[str, Entry, bool]], k: int) -> str:
    """NDCG@k and P@5 per language of the queries, and each language's own recommendation: a
    pooled figure can hide a provider that reads one language only."""
    languages = report.get("languages") or {}
    if len(languages) < 2:
        return ""
    metrics = (f"ndcg@{k}", "p@5")
    scored = [(label, entry.get("by_language") or {}) for label, entry, _ in rows]
    head = "".join(f"<th>{_e(label)}<br>{_e(' · '.join(m.upper() for m in metrics))}</th>" for label, _ in scored)
    body = "".join(
        f"<tr><td>{_e(f'{language} ({count})')}</td>" + "".join(
            f"<td class=\"num\">{_e(' · '.join(_cell((found.get(language) or {}).get(m), '.3f') for m in metrics))}</td>"
            for _, found in scored
        ) + "</tr>"
        for language, count in languages.items()
    )
    costs = {name: entry["usd_per_1k_queries"] for name, entry in report.get("providers", {}).items()
             if "usd_per_1k_queries" in entry}
    advice = "".join(
        f"<p class=\"advice\"><b>{_e(language)}:</b> "
        + "<br>".join(f"<code>{_e(line)}</code>" if line.startswith("fallback = ") else _e(line)
                      for line in format_recommendation(str(report.get("model", "?")), found, costs))
        + "</p>"
        for language, found in (report.get("recommendation_by_language") or {}).items()
    )
    return (f"<section data-section=\"by-language\"><h2>By language of the query</h2>"
            f"<table><thead><tr><th>language (queries)</th>{head}</tr></thead><tbody>{body}</tbody></table>"
            f"{advice}</section>")


def _quality_chart(rows: Sequence[tuple[str, Entry, bool]], k: int) -> str:
    """Two bars per row (NDCG@k, P@5) on one 0..1 scale; the first stage's bars in grey."""
    metrics = (f"ndcg@{k}", "p@5")
    height = len(rows) * (2 * _ROW - 8) + 40
    shapes, drawn = [], 0
    for position, (label, entry, lexical) in enumerate(rows):
        top = 10 + position * (2 * _ROW - 8)
        shapes.append(f"<text x=\"{_LABEL_W - 8}\" y=\"{top + _ROW - 4}\" text-anchor=\"end\">{_e(label)}</text>")
        for line, (metric, colour) in enumerate(zip(metrics, _QUALITY_COLOURS, strict=True)):
            value = entry.get(metric)
            y = top + line * (_ROW - 6)
            if not isinstance(value, int | float):
                continue
            drawn += 1
            fill = _LEXICAL_COLOUR if lexical and line == 0 else colour
            opacity = " fill-opacity=\"0.55\"" if lexical else ""
            shapes.append(
                f"<rect x=\"{_LABEL_W}\" y=\"{y + 2}\" width=\"{max(value, 0.0) * _BAR_W:.1f}\" height=\"{_ROW - 10}\" "
                f"fill=\"{fill}\"{opacity}><title>{_e(f'{label} {metric} {value:.3f}')}</title></rect>"
                f"<text x=\"{_LABEL_W + max(value, 0.0) * _BAR_W + 4:.1f}\" y=\"{y + _ROW - 9}\" class=\"value\">"
                f"{_e(f'{metric} {value:.3f}')}</text>"
            )
    axis = "".join(
        f"<line x1=\"{_LABEL_W + tick * _BAR_W:.0f}\" y1=\"4\" x2=\"{_LABEL_W + tick * _BAR_W:.0f}\" y2=\"{height - 22}\" "
        f"class=\"grid\"/><text x=\"{_LABEL_W + tick * _BAR_W:.0f}\" y=\"{height - 8}\" text-anchor=\"middle\">{tick:g}</text>"
        for tick in (0, 0.25, 0.5, 0.75, 1)
    )
    legend = (f"<div class=\"legend\"><span><i style=\"background:{_QUALITY_COLOURS[0]}\"></i>NDCG@{k}</span>"
              f"<span><i style=\"background:{_QUALITY_COLOURS[1]}\"></i>P@5</span>"
              f"<span><i style=\"background:{_LEXICAL_COLOUR}\"></i>first stage (BM25 or given candidates)</span></div>")
    return _svg("quality", height, axis + "".join(shapes), drawn) + legend


def _metric_chart(rows: Sequence[tuple[str, Entry, bool]], key: str, fmt: Callable[[float], str], name: str) -> str:
    """One bar per provider that reports `key`; the first stage has no cost or latency of its own."""
    measured = [(label, float(entry[key])) for label, entry, lexical in rows
                if not lexical and isinstance(entry.get(key), int | float)]
    peak = max((value for _, value in measured), default=0.0) or 1.0
    width = _BAR_W / 2
    height = max(len(measured), 1) * _ROW + 16
    shapes = []
    for position, (label, value) in enumerate(measured):
        y = 6 + position * _ROW
        bar = value / peak * width
        shapes.append(
            f"<text x=\"{_LABEL_W - 8}\" y=\"{y + _ROW - 8}\" text-anchor=\"end\">{_e(label)}</text>"
            f"<rect x=\"{_LABEL_W}\" y=\"{y + 2}\" width=\"{bar:.1f}\" height=\"{_ROW - 8}\" fill=\"#1b7c83\"/>"
            f"<text x=\"{_LABEL_W + bar + 4:.1f}\" y=\"{y + _ROW - 8}\" class=\"value\">{_e(fmt(value))}</text>"
        )
    if not measured:
        shapes.append(f"<text x=\"{_LABEL_W}\" y=\"20\">no provider scored</text>")
    return _svg(name, height, "".join(shapes), len(measured), _LABEL_W + width + _VALUE_W + 10)


def _svg(name: str, height: int, body: str, drawn: int, width: int | float = _LABEL_W + _BAR_W + _VALUE_W + 40) -> str:
    return (f"<figure data-chart=\"{name}\" data-points=\"{drawn}\"><svg viewBox=\"0 0 {width:.0f} {height}\" "
            f"width=\"{width:.0f}\" height=\"{height}\" role=\"img\">{body}</svg></figure>")


# (title, key, format); {k} is the report's cut-off. The terminal table's columns, in its order.
_COLUMNS = (("P@1", "p@1", ".3f"), ("P@5", "p@5", ".3f"), ("NDCG@{k}", "ndcg@{k}", ".3f"),
            ("MRR@{k}", "mrr@{k}", ".3f"), ("cand. recall", "candidate_recall", ".3f"), ("p50 ms", "latency_p50_ms", ".1f"),
            ("p95 ms", "latency_p95_ms", ".1f"), ("tokens/1k q", "tokens_per_1k_queries", "d"),
            ("$/1k q", "usd_per_1k_queries", ".2g"), ("MAE", "agreement_mae", ".3f"),
            ("tau", "agreement_kendall_tau", ".3f"))


def _table(rows: Sequence[tuple[str, Entry, bool]], k: int) -> str:
    head = "".join(f"<th>{_e(title.format(k=k))}</th>" for title, _, _ in _COLUMNS)
    body = "".join(
        f"<tr><td>{_e(label)}</td>" + "".join(
            f"<td class=\"num\">{_e(_cell(entry.get(key.format(k=k)), spec))}</td>" for _, key, spec in _COLUMNS
        ) + "</tr>"
        for label, entry, _ in rows
    )
    return f"<table><thead><tr><th>provider</th>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any, spec: str) -> str:
    if value is None:
        return "—"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def _notes(report: Mapping[str, Any]) -> str:
    notes = [f"{name}: {'error' if 'error' in entry else 'skipped'}: {entry.get('error') or entry.get('skipped')}"
             for name, entry in report.get("providers", {}).items() if "error" in entry or "skipped" in entry]
    return "".join(f"<p class=\"bad\">{_e(note)}</p>" for note in notes)


def _usd(value: float) -> str:
    return "$0" if value == 0 else f"${value:.3g}"


def _ms(value: float) -> str:
    return f"{value:,.1f} ms"


def _e(text: str) -> str:
    return html.escape(text, quote=True)


_CSS = """
body{margin:0;background:#f6f8fa;color:#1f2328;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
main{max-width:1060px;margin:0 auto;padding:16px 24px 28px}
h1{font-size:21px;margin:0 0 2px}
h2{font-size:13px;margin:0 0 8px;text-transform:uppercase;letter-spacing:.04em;color:#656d76}
section{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:14px 16px;margin-bottom:12px}
section.pair{display:grid;grid-template-columns:1fr 1fr;gap:18px}
section.pair svg{max-width:100%;height:auto}
figure{margin:0}
svg text{font-size:12px;fill:#1f2328}svg text.value{font-size:11px;fill:#656d76}
.grid{stroke:#eaeef2}
.muted{color:#656d76;margin-top:0}
.advice{background:#ddf4ff;border:1px solid #80ccff;border-radius:8px;padding:8px 12px}
.advice code{font:600 13px ui-monospace,"DejaVu Sans Mono",monospace}
.bad{color:#cf222e}
.legend{display:flex;gap:14px;font-size:12px;color:#656d76;margin-top:4px}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px;vertical-align:-1px}
table{width:100%;border-collapse:collapse;font-variant-numeric:tabular-nums}
th{text-align:left;font-size:12px;color:#656d76;padding:6px 8px;border-bottom:1px solid #d0d7de;background:#f6f8fa}
td{padding:6px 8px;border-bottom:1px solid #eaeef2}.num{text-align:right}
"""

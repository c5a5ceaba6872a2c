"""The last hour on /status as small inline SVG charts: no script, no external asset.

Each chart is a pure function of a HistoryView's series; every label goes through html.escape.
A chart carries `data-chart` (its name) and `data-points` (the values it drew) so a test in a
real browser can tell a chart with traffic in it from an empty frame.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence

from gateway.observability.history import MINUTES, HistoryView, Series

_WIDTH, _HEIGHT = 320, 104
_LEFT, _TOP, _RIGHT, _BOTTOM = 14, 8, 4, 18  # room for the y labels and the time axis
_PLOT_W, _PLOT_H = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM
_OUTCOME_COLOURS = {"cache": "#1a7f37", "provider": "#0969da", "lexical": "#d4a72c", "error": "#cf222e"}
_PALETTE = ("#0969da", "#8250df", "#bf3989", "#1b7c83", "#9a6700", "#57606a")

Format = Callable[[float], str]


def history_section(history: HistoryView | None, scope: str, usd: Format) -> str:
    if history is None:
        return ""
    charts = [
        _bars("requests", "Requests per minute by outcome", history.requests, _OUTCOME_COLOURS, _count),
        _lines("cache_hit_rate", "Cache hit rate (pairs)", {"hit rate": history.cache_hit_rate},
               {"hit rate": _OUTCOME_COLOURS["cache"]}, _percent, top=1.0),
        _lines("p95", "p95 per provider", history.p95_ms, _colours(history.p95_ms), _ms),
        _bars("spend", "Spend per minute by provider", history.spend_usd, _colours(history.spend_usd), usd),
    ]
    for model, providers in history.agreement_mae.items():
        charts.append(_lines("agreement", f"Shadow agreement, {model}: MAE vs the reference", providers,
                             _colours(providers), _mae))
    return (
        "<section class=\"model history\"><div class=\"model-head\"><h2>Last hour</h2>"
        f"<span class=\"muted\">per minute, {_e(scope)}</span></div>"
        f"<div class=\"charts\">{''.join(charts)}</div></section>"
    )


def _colours(series: Mapping[str, Series]) -> dict[str, str]:
    return {name: _PALETTE[position % len(_PALETTE)] for position, name in enumerate(series)}


def _bars(name: str, title: str, series: Mapping[str, Series], colours: Mapping[str, str], fmt: Format) -> str:
    """Stacked bars, one per minute."""
    totals = [sum(values[i] or 0.0 for values in series.values()) for i in range(MINUTES)]
    top = _ceiling(max(totals, default=0.0))
    slot = _PLOT_W / MINUTES
    shapes, drawn = [], 0
    for minute in range(MINUTES):
        base = 0.0
        for label, values in series.items():
            value = values[minute] or 0.0
            if value <= 0:
                continue
            drawn += 1
            y0, y1 = _y(base, top), _y(base + value, top)
            shapes.append(f"<rect x=\"{_LEFT + minute * slot + 0.5:.1f}\" y=\"{y1:.1f}\" width=\"{slot - 1:.1f}\" "
                          f"height=\"{max(y0 - y1, 0.5):.1f}\" fill=\"{colours[label]}\"/>")
            base += value
    # A bar chart's legend is the hour's total: the current minute has barely begun.
    totals_by_label = {label: sum(v or 0.0 for v in values) for label, values in series.items()}
    return _figure(name, title, "".join(shapes), drawn, top, fmt, colours, totals_by_label, "the hour's total")


def _lines(name: str, title: str, series: Mapping[str, Series], colours: Mapping[str, str], fmt: Format,
           top: float | None = None) -> str:
    """One line per series; a minute without a value breaks the line rather than pretending zero."""
    peak = max((v for values in series.values() for v in values if v is not None), default=0.0)
    top = top if top is not None else _ceiling(peak)
    shapes, drawn = [], 0
    for label, values in series.items():
        for run in _runs(values):
            drawn += len(run)
            points = " ".join(f"{_x(i):.1f},{_y(v, top):.1f}" for i, v in run)
            if len(run) == 1:
                shapes.append(f"<circle cx=\"{_x(run[0][0]):.1f}\" cy=\"{_y(run[0][1], top):.1f}\" r=\"2\" "
                              f"fill=\"{colours[label]}\"/>")
            else:
                shapes.append(f"<polyline points=\"{points}\" fill=\"none\" stroke=\"{colours[label]}\" "
                              "stroke-width=\"1.6\" stroke-linejoin=\"round\"/>")
    latest = {label: _last(values) for label, values in series.items()}
    return _figure(name, title, "".join(shapes), drawn, top, fmt, colours, latest, "the last minute with data")


def _figure(name: str, title: str, shapes: str, drawn: int, top: float, fmt: Format,
            colours: Mapping[str, str], latest: Mapping[str, float | None], legend_says: str) -> str:
    bottom = _TOP + _PLOT_H
    empty = "" if drawn else (f"<text x=\"{_LEFT + _PLOT_W / 2:.0f}\" y=\"{_TOP + _PLOT_H / 2 + 4:.0f}\" "
                              "text-anchor=\"middle\" class=\"empty\">no data yet</text>")
    svg = (
        f"<svg viewBox=\"0 0 {_WIDTH} {_HEIGHT}\" role=\"img\" aria-label=\"{_e(title)}\">"
        f"<title>{_e(title)}</title>"
        f"<line x1=\"{_LEFT}\" y1=\"{_TOP}\" x2=\"{_LEFT + _PLOT_W}\" y2=\"{_TOP}\" class=\"grid\"/>"
        f"<line x1=\"{_LEFT}\" y1=\"{_TOP + _PLOT_H / 2}\" x2=\"{_LEFT + _PLOT_W}\" y2=\"{_TOP + _PLOT_H / 2}\" class=\"grid\"/>"
        f"<line x1=\"{_LEFT}\" y1=\"{bottom}\" x2=\"{_LEFT + _PLOT_W}\" y2=\"{bottom}\" class=\"axis\"/>"
        # The top of the scale inside the plot, where a long figure ($0.0000200) has room.
        f"<text x=\"{_LEFT + 3}\" y=\"{_TOP + 9}\" class=\"top\">{_e(fmt(top))}</text>"
        f"<text x=\"{_LEFT - 4}\" y=\"{bottom}\" text-anchor=\"end\">0</text>"
        f"<text x=\"{_LEFT}\" y=\"{_HEIGHT - 4}\">60 min ago</text>"
        f"<text x=\"{_LEFT + _PLOT_W}\" y=\"{_HEIGHT - 4}\" text-anchor=\"end\">now</text>"
        f"{shapes}{empty}</svg>"
    )
    legend = f"<span class=\"says\">{_e(legend_says)}:</span>" + "".join(
        f"<span><i style=\"background:{colours[label]}\"></i>{_e(label)}"
        f"{'' if value is None else ' ' + _e(fmt(value))}</span>"
        for label, value in latest.items()
    )
    return (f"<figure class=\"chart\" data-chart=\"{_e(name)}\" data-points=\"{drawn}\">"
            f"<figcaption>{_e(title)}</figcaption>{svg}<div class=\"legend\">{legend}</div></figure>")


def _runs(values: Sequence[float | None]) -> list[list[tuple[int, float]]]:
    runs: list[list[tuple[int, float]]] = [[]]
    for minute, value in enumerate(values):
        if value is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((minute, value))
    return [run for run in runs if run]


def _last(values: Sequence[float | None]) -> float | None:
    return next((v for v in reversed(values) if v is not None), None)


def _x(minute: int) -> float:
    return _LEFT + minute * _PLOT_W / (MINUTES - 1)


def _y(value: float, top: float) -> float:
    return _TOP + _PLOT_H - min(max(value / top, 0.0), 1.0) * _PLOT_H


def _ceiling(peak: float) -> float:
    """A round top for the y axis at or above the peak: 1, 2 or 5 times a power of ten."""
    if peak <= 0:
        return 1.0
    scale = 10.0 ** math.floor(math.log10(peak))
    return next(step * scale for step in (1, 2, 5, 10) if step * scale >= peak)


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _percent(value: float) -> str:
    return f"{value:.0%}"


def _ms(value: float) -> str:
    return f"{value:,.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _mae(value: float) -> str:
    return f"{value:.3f}"


def _e(text: str) -> str:
    return html.escape(text, quote=True)


CHART_CSS = """
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:6px 18px;padding:10px 16px 12px}
.chart{margin:0}
.chart figcaption{font-size:12px;font-weight:600;color:var(--muted);margin-bottom:2px}
.chart svg{width:100%;height:auto;display:block}
.chart svg text{font-size:9px;fill:var(--muted);font-family:inherit}
.chart svg text.empty{font-size:11px}.chart svg text.top{font-weight:600}
.chart .grid{stroke:#eaeef2;stroke-width:1}.chart .axis{stroke:var(--line);stroke-width:1}
.legend{display:flex;flex-wrap:wrap;gap:2px 10px;font-size:11.5px;color:var(--muted);font-variant-numeric:tabular-nums}
.legend .says{font-style:italic}
.legend i{display:inline-block;width:9px;height:9px;border-radius:2px;margin-right:4px;vertical-align:-1px}
"""

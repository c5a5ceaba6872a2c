"""GET /status: one server-rendered HTML page that tells ops at a glance what the gateway can do.

The page is a pure function of a StatusSnapshot, a plain frozen value the app assembles from the
live config, breakers, ledgers and cache counters; nothing here reads gateway state. No scripts,
no external assets: inline CSS only, so the page works air-gapped and from a screenshot. Every
string that reaches the page goes through html.escape, whatever its source (provider reasons
carry text from upstream answers).
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.budget.base import WARN_FRACTION
from gateway.observability.history import HistoryView
from gateway.observability.metrics import BreakerState
from gateway.quality.board import QualityReport
from gateway.resilience.health import Change, RecentError
from gateway.resilience.latency import MIN_SAMPLES
from gateway.web.provider_state import ProviderState
from gateway.web.status_charts import CHART_CSS, history_section
from gateway.web.status_clients import ClientRow, clients_section


@dataclass(frozen=True, slots=True)
class BudgetBar:
    period: str  # "today" | "month"
    spent_usd: float
    reserved_usd: float  # holds of calls in flight
    limit_usd: float | None  # None: tracked, not limited
    refusing: bool = False  # spent, or new pairs were refused in this window: red whatever the share


@dataclass(frozen=True, slots=True)
class ProviderStatus:
    name: str
    kind: str
    usable: bool
    reason: str | None  # why not usable: key unset, disabled, over budget, breaker open, ...
    breaker: BreakerState
    budget: tuple[BudgetBar, ...]
    p95_ms: float | None  # None until enough answers were seen
    quality: QualityReport | None = None
    # Out only until its 429's Retry-After passes: requests wait for it when nobody else can answer.
    rate_limited: bool = False
    skipped_for_quality: bool = False  # unusable only because its canary verdict keeps it out
    state: ProviderState | None = None  # None: said by `usable` and `reason` alone


@dataclass(frozen=True, slots=True)
class ModelStatus:
    name: str
    aliases: tuple[str, ...]
    fallback: tuple[ProviderStatus, ...]  # in the order they are tried
    # Every breaker is open: requests go to this provider anyway (the panic rule), or None.
    panic_provider: str | None = None
    # Every provider that could answer is over budget: new pairs are refused until then (Unix time).
    over_budget_until: float | None = None

    @property
    def servable(self) -> bool:
        return any(p.usable or p.rate_limited for p in self.fallback) or self.panic_provider is not None


@dataclass(frozen=True, slots=True)
class CacheStatus:
    backend: str  # "memory" | "redis"
    hits: int
    misses: int
    saved_usd: float  # what the hits would have cost upstream
    stored_bytes: int | None = None  # the in-process cache's bytes; None for Redis
    max_bytes: int | None = None

    @property
    def hit_rate(self) -> float | None:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else None


@dataclass(frozen=True, slots=True)
class StatusSnapshot:
    generated_at: float  # Unix time
    config_loaded_at: float  # Unix time
    config_path: str | None  # None: built from a mapping, not a file
    models: tuple[ModelStatus, ...]
    cache: CacheStatus
    recent_errors: tuple[RecentError, ...]
    gateway_budget: tuple[BudgetBar, ...]
    refresh_seconds: int = 0  # the page reloads itself this often; 0 = never (`/status?refresh=0`)
    history: HistoryView | None = None  # the last hour per minute; None: no charts
    history_scope: str = "this process"  # whose hour it is: with several workers, one worker's own
    last_change: Change | None = None  # the latest reload, breaker move, refusal or verdict
    clients: tuple[ClientRow, ...] = ()  # named clients' spend and rate; () with none configured


def render_status_page(snapshot: StatusSnapshot) -> str:
    """The whole page as one HTML document."""
    generated = _utc(snapshot.generated_at)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"{_refresh_meta(snapshot.refresh_seconds)}"
        f"<title>rerank-gateway status</title><style>{_CSS}{CHART_CSS}</style></head><body><main>"
        f"<header><h1>rerank-gateway</h1><span class=\"muted\">status at {_e(generated)} · "
        f"{_refresh_switch(snapshot.refresh_seconds)}{_last_change(snapshot)}</span>"
        f"{_verdict(snapshot.models)}</header>"
        f"<section class=\"cards\">{_config_card(snapshot)}{_cache_card(snapshot.cache)}"
        f"{_gateway_budget_card(snapshot.gateway_budget)}</section>"
        f"{history_section(snapshot.history, snapshot.history_scope, _usd)}"
        f"{''.join(_model_section(model) for model in snapshot.models)}"
        f"{clients_section(snapshot.clients, _usd)}"
        f"{_errors_section(snapshot.recent_errors, snapshot.generated_at)}"
        "</main></body></html>\n"
    )


def _refresh_meta(seconds: int) -> str:
    return f"<meta http-equiv=\"refresh\" content=\"{seconds}\">" if seconds > 0 else ""


def _refresh_switch(seconds: int) -> str:
    """Says whether the page reloads itself, with the link that turns it off or back on."""
    if seconds > 0:
        return f"refreshes every {seconds} s (<a href=\"?refresh=0\">stop</a>)"
    return "not refreshing (<a href=\"?\">refresh every few seconds</a>)"


def _last_change(snapshot: StatusSnapshot) -> str:
    change = snapshot.last_change
    if change is None:
        return ""
    return (f"<br><span class=\"changed\">last change: {_e(change.what)}, {_e(_ago(snapshot.generated_at - change.at))}"
            f" ({_e(_utc(change.at))})</span>")


def _verdict(models: tuple[ModelStatus, ...]) -> str:
    unpaid = [f"{model.name} cannot pay for new pairs until {_utc(model.over_budget_until)} (cached pairs still served)"
              for model in models if model.over_budget_until is not None]
    stranded = [model.name for model in models if not model.servable and model.over_budget_until is None]
    panicking = [f"{model.name} (to {model.panic_provider})" for model in models if model.panic_provider]
    states = [_state_of(provider) for model in models for provider in model.fallback]
    troubled = _count_states([state for state in states if state.name not in ("usable", "disabled")])
    if stranded:
        tone, text = "bad", f"No usable provider for {', '.join(stranded)}"
    elif panicking:
        tone, text = "bad", f"Every breaker open, panic rule routing: {', '.join(panicking)}"
    elif unpaid:
        tone, text = "warn", "; ".join(unpaid)
    elif troubled:
        tone, text = "warn", f"Every model is servable; providers: {troubled}"
    else:
        tone, text = "ok", f"All {len(models)} model{_s(len(models))} servable; every provider healthy"
    return f"<div class=\"verdict {tone}\"><span class=\"dot\"></span>{_e(text)}</div>"


def _count_states(states: list[ProviderState]) -> str:
    """"1 refusing, 2 failing": how many providers are in each state that is not well."""
    counts: dict[str, int] = {}
    for state in states:
        counts[state.label] = counts.get(state.label, 0) + 1
    return ", ".join(f"{count} {label}" for label, count in counts.items())


def _state_of(provider: ProviderStatus) -> ProviderState:
    if provider.state is not None:
        return provider.state
    if provider.usable:
        return ProviderState("usable", None)
    return ProviderState("rate_limited" if provider.rate_limited else "unusable", provider.reason)


def _config_card(snapshot: StatusSnapshot) -> str:
    source = snapshot.config_path or "(built in-process, no file)"
    age = _ago(snapshot.generated_at - snapshot.config_loaded_at)
    return _card(
        "Config",
        f"<div class=\"big mono small-big\">{_e(_utc(snapshot.config_loaded_at))}</div>"
        f"<div class=\"muted\">loaded {_e(age)} from</div><div><code>{_e(source)}</code></div>",
    )


def _cache_card(cache: CacheStatus) -> str:
    rate = cache.hit_rate
    headline = "no lookups yet" if rate is None else f"{rate:.1%} hit rate"
    return _card(
        "Score cache",
        f"<div class=\"big\">{_e(headline)}</div>"
        f"<div class=\"muted\">{_e(f'{cache.hits:,} hits · {cache.misses:,} misses · {cache.backend}')}</div>"
        f"<div class=\"saved\">saved {_e(_usd(cache.saved_usd))}</div>"
        + _cache_memory(cache),
    )


def _cache_memory(cache: CacheStatus) -> str:
    if cache.stored_bytes is None:
        return ""
    held = f"{cache.stored_bytes / 2**20:,.1f} MiB"
    if cache.max_bytes:
        held += f" of {cache.max_bytes / 2**20:,.0f} MiB (cache.max_bytes)"
    return f"<div class=\"muted\">{_e(held)} in this process</div>"


def _gateway_budget_card(bars: tuple[BudgetBar, ...]) -> str:
    body = "".join(_budget_bar(bar) for bar in bars) or "<div class=\"muted\">no gateway-wide budget tracked</div>"
    return _card("Gateway budget", body)


def _card(title: str, body: str) -> str:
    return f"<div class=\"card\"><h2>{_e(title)}</h2>{body}</div>"


def _model_section(model: ModelStatus) -> str:
    aliases = ", ".join(model.aliases) if model.aliases else "none"
    rows = "".join(_provider_row(position, provider) for position, provider in enumerate(model.fallback, 1))
    tone = "ok" if model.servable and model.panic_provider is None else "bad"
    panic = (
        f"<div class=\"reason\">panic: every breaker is open, so requests go to {_e(model.panic_provider)}, "
        "whose breaker opened first, until a provider answers again</div>"
        if model.panic_provider else ""
    )
    return (
        f"<section class=\"model\"><div class=\"model-head\"><h2><span class=\"dot {tone}\"></span>{_e(model.name)}</h2>"
        f"<span class=\"muted\">aliases: {_e(aliases)}</span></div>{panic}"
        "<table class=\"providers\"><colgroup><col class=\"c-pos\"><col class=\"c-name\"><col class=\"c-health\">"
        "<col class=\"c-breaker\"><col class=\"c-p95\"><col></colgroup>"
        "<thead><tr><th class=\"num\">#</th><th>provider</th><th>health</th><th>breaker</th>"
        "<th class=\"num\">p95</th><th>budget (spent + held of limit)</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        f"<p class=\"muted note\">p95: latency of the last {MIN_SAMPLES}+ answers; — until {MIN_SAMPLES} were seen.</p></section>"
    )


def _provider_row(position: int, provider: ProviderStatus) -> str:
    state = _state_of(provider)
    until = "" if state.until is None else f" until {_clock(state.until)}"
    health = f"<span class=\"pill {state.tone}\">{_e(state.label + until)}</span>"
    if state.reason:
        health += f"<div class=\"note {state.tone}\">{_e(state.reason)}</div>"
    # Quiet while closed: only a breaker that is not is news.
    breaker_tone = {"closed": "quiet", "half_open": "warn"}.get(provider.breaker, "bad")
    p95 = f"<span title=\"needs {MIN_SAMPLES} answers\">—</span>" if provider.p95_ms is None else _e(f"{provider.p95_ms:,.0f} ms")
    budget = "".join(_budget_bar(bar) for bar in provider.budget) or "<span class=\"muted\">not tracked</span>"
    return (
        f"<tr class=\"{'' if state.tone == 'ok' else state.tone}\"><td class=\"num muted\">{position}</td>"
        f"<td class=\"nowrap\"><strong>{_e(provider.name)}</strong><div class=\"muted\">{_e(provider.kind)}</div></td>"
        f"<td>{health}{_quality(provider.quality)}</td>"
        f"<td data-label=\"breaker\"><span class=\"pill {breaker_tone}\">{_e(provider.breaker.replace('_', ' '))}</span></td>"
        f"<td class=\"num mono\" data-label=\"p95\">{p95}</td><td>{budget}</td></tr>"
    )


def _quality(quality: QualityReport | None) -> str:
    """The canary verdict and how the provider's scores are cached."""
    if quality is None:
        return ""
    # Not judged yet (or probes off) is no alarm: grey, as a healthy page stays quiet.
    tone = {"passing": "ok", "failing": "bad"}.get(quality.state, "off")
    label = {"passing": "canary passing", "failing": "canary failing"}.get(quality.state, "canary unknown")
    if quality.state == "failing":
        tone = "warn" if quality.serves else "bad"
        label += " · serves, flagged, when nothing better can" if quality.serves else " · not served"
    # The cache note is news only when the provider cannot share the reference's scores.
    note_tone = "muted"
    if quality.reference:
        cache = "the reference: its scores are the cached ones"
    elif quality.calibrated:
        cache = "agrees with the reference once mapped onto its scale: shares its cached scores"
    elif quality.shares_cache:
        cache = "agrees with the reference: shares its cached scores"
    else:
        note_tone = "warn"
        cache = "scores whole requests, cached apart (agreement unknown or outside the tolerance)"
    if quality.mae is not None:
        tau = "—" if quality.kendall_tau is None else f"{quality.kendall_tau:.2f}"
        cache += f" · MAE {quality.mae:.3f}, τ {tau}"
    if quality.calibration is not None:
        c = quality.calibration
        cache += f" · calibrated on {c.pairs} pairs: MAE {c.mae_before:.3f} → {c.mae_after:.3f}"
    cache += f" · group {quality.group}"
    # Folded: the verdict is the news, its grades and the cache note are for who asks.
    return (
        f"<details class=\"canary\"><summary><span class=\"pill {tone}\" title=\"{_e(quality.reason)}\">{label}</span>"
        f"</summary>{_canary_grades(quality.canary)}<div class=\"note {note_tone}\">{_e(cache)}</div></details>"
    )


def _canary_grades(canary: Mapping[str, Any] | None) -> str:
    """Per language: pairs ordered and the worst margin; then the rule they are held to."""
    if canary is None:
        return ""
    grades = []
    for language, grade in canary["languages"].items():
        mark = "✓" if grade["passed"] else "✗"
        grades.append(f"{mark} {language} {grade['ordered_pairs']}/{grade['pairs']} "
                      f"(worst {grade['worst_margin']:+.3f})")
    # Red only when a language fails: a passing canary's figures are context, not alarm.
    tone = "muted" if all(grade["passed"] for grade in canary["languages"].values()) else "bad"
    return (f"<div class=\"note {tone}\">{_e(' · '.join(grades))}</div>"
            f"<div class=\"note muted\">{_e('pass: ' + str(canary['rule']))}</div>")


def _budget_bar(bar: BudgetBar) -> str:
    """A bar of spent (solid) and reserved (light) against the limit; just the figures when unlimited."""
    label = f"<span class=\"period\">{_e(bar.period)}</span>"
    if bar.limit_usd is None:
        figures = f"{_usd(bar.spent_usd)} spent{_reserved(bar)} · no limit"
        return (
            f"<div class=\"budget\">{label}<div class=\"track none\"></div><span class=\"pct\">—</span>"
            f"<span class=\"figures\">{_e(figures)}</span></div>"
        )
    used = bar.spent_usd + bar.reserved_usd
    fraction = used / bar.limit_usd if bar.limit_usd > 0 else (1.0 if used > 0 else 0.0)
    # Amber from the line where the ledger's budget alert fires.
    tone = "bad" if fraction >= 1 or bar.refusing else "warn" if fraction >= WARN_FRACTION else "ok"
    spent_width = _percent_of(bar.spent_usd, bar.limit_usd)
    held_width = max(_percent_of(used, bar.limit_usd) - spent_width, 0.0)
    figures = f"{_usd(bar.spent_usd)} of {_usd(bar.limit_usd)}{_reserved(bar)}"
    return (
        f"<div class=\"budget\">{label}<div class=\"track\">"
        f"<div class=\"fill {tone}\" style=\"width:{spent_width:.1f}%\"></div>"
        f"<div class=\"fill {tone} held\" style=\"width:{held_width:.1f}%\"></div></div>"
        f"<span class=\"pct {tone}\">{_e(f'{fraction:.0%}')}</span><span class=\"figures\">{_e(figures)}</span></div>"
    )


def _reserved(bar: BudgetBar) -> str:
    return f" (+{_usd(bar.reserved_usd)} held)" if bar.reserved_usd > 0 else ""


def _percent_of(amount: float, limit: float) -> float:
    if limit <= 0:
        return 100.0 if amount > 0 else 0.0
    return min(max(amount / limit * 100, 0.0), 100.0)


def _errors_section(errors: tuple[RecentError, ...], now: float) -> str:
    if not errors:
        body = "<p class=\"muted\">No provider errors recently.</p>"
    else:
        rows = "".join(
            f"<tr><td class=\"mono nowrap\">{_e(_utc(error.at))}</td><td class=\"muted nowrap\">{_e(_ago(now - error.at))}</td>"
            f"<td><strong>{_e(error.provider)}</strong></td><td class=\"reason\">{_e(error.reason)}{_times(error)}</td></tr>"
            for error in sorted(errors, key=lambda error: error.at, reverse=True)
        )
        body = (
            "<table class=\"errors\"><colgroup><col class=\"c-at\"><col class=\"c-ago\"><col class=\"c-name\"><col></colgroup>"
            f"<thead><tr><th>at (UTC)</th><th></th><th>provider</th><th>reason</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    return f"<section class=\"model\"><div class=\"model-head\"><h2>Recent errors</h2></div>{body}</section>"


def _times(error: RecentError) -> str:
    return f" <span class=\"muted\">(×{error.count}, the latest shown)</span>" if error.count > 1 else ""


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _s(count: int) -> str:
    return "" if count == 1 else "s"


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _clock(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%H:%M:%S UTC")


def _usd(amount: float) -> str:
    """Money in one format: cents from a cent up; below, millionths of a dollar (a rerank call costs
    a few), and what is non-zero yet smaller never printed as zero."""
    if amount == 0 or abs(amount) >= 0.01:
        return f"${amount:,.2f}"
    if abs(amount) >= 0.000001:
        return f"${amount:.6f}"
    return "<$0.000001"


def _ago(seconds: float) -> str:
    if seconds < 0:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


_CSS = """
:root{--ok:#1a7f37;--ok-bg:#dafbe1;--warn:#9a6700;--warn-bg:#fff8c5;--bad:#cf222e;--bad-bg:#ffebe9;
--ink:#1f2328;--muted:#656d76;--line:#d0d7de;--panel:#fff;--page:#f6f8fa}
*{box-sizing:border-box}
body{margin:0;background:var(--page);color:var(--ink);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
main{max-width:1160px;margin:0 auto;padding:16px 24px 28px}
header{display:flex;align-items:center;flex-wrap:wrap;gap:8px 14px;margin-bottom:14px}
.changed{font-size:12.5px}
h1{font-size:22px;margin:0;white-space:nowrap}
h2{font-size:13px;margin:0;text-transform:uppercase;letter-spacing:.04em;color:var(--muted)}
.model h2{font-size:16px;text-transform:none;letter-spacing:0;color:var(--ink);display:flex;align-items:center;gap:8px}
.muted{color:var(--muted)}
.mono,code{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,monospace;font-size:12.5px}
code{background:#eff1f3;padding:1px 5px;border-radius:4px;overflow-wrap:anywhere}
.nowrap{white-space:nowrap}
.verdict{display:flex;align-items:center;gap:10px;padding:7px 14px;border-radius:8px;font-weight:600;
margin-left:auto;border:1px solid}
.verdict.ok{background:var(--ok-bg);color:var(--ok);border-color:#aceebb}
.verdict.warn{background:var(--warn-bg);color:var(--warn);border-color:#eac54f}
.verdict.bad{background:var(--bad-bg);color:var(--bad);border-color:#ffcecb}
.dot{width:10px;height:10px;border-radius:50%;background:currentColor;display:inline-block;flex:none}
.dot.ok{background:var(--ok)}.dot.bad{background:var(--bad)}
.cards{display:grid;grid-template-columns:repeat(3,1fr);gap:14px;margin-bottom:12px}
.card,.model{background:var(--panel);border:1px solid var(--line);border-radius:8px;padding:14px 16px}
.card h2{margin-bottom:8px}
.big{font-size:24px;font-weight:650;line-height:1.2}
.small-big{font-size:17px;margin-bottom:4px}
.saved{margin-top:6px;color:var(--ok);font-weight:600}
.model{margin-bottom:12px;padding:0;overflow:hidden}
.model-head{display:flex;flex-wrap:wrap;align-items:baseline;justify-content:space-between;gap:4px 12px;padding:10px 16px;
border-bottom:1px solid var(--line)}
.model-head>span{overflow-wrap:anywhere;min-width:0}
.model>p{padding:0 16px}
table{width:100%;border-collapse:collapse}
th{text-align:left;font-weight:600;font-size:12px;color:var(--muted);padding:8px 16px;background:#f6f8fa;
border-bottom:1px solid var(--line)}
td{padding:8px 16px;border-bottom:1px solid #eaeef2;vertical-align:top}
tr:last-child td{border-bottom:0}
tr.bad td{background:#fffafa}tr.warn td{background:#fffdf0}tr.off td{background:#fafbfc;color:var(--muted)}
.num{text-align:right;white-space:nowrap}
table.providers{table-layout:fixed}
table.errors{table-layout:fixed}.c-at{width:190px}.c-ago{width:96px}
.c-pos{width:40px}.c-name{width:130px}.c-health{width:36%}.c-breaker{width:96px}.c-p95{width:76px}
.pill{display:inline-block;padding:1px 9px;border-radius:999px;font-size:12px;font-weight:600;white-space:nowrap}
.pill.ok{background:var(--ok-bg);color:var(--ok)}
.pill.warn{background:var(--warn-bg);color:var(--warn)}
.pill.bad{background:var(--bad-bg);color:var(--bad)}
.pill.off{background:#eaeef2;color:var(--muted)}.pill.quiet{background:none;color:var(--muted);font-weight:400;padding:0}
details.canary{margin-top:4px}details.canary summary{cursor:pointer;font-size:12px;color:var(--muted)}
details.canary summary .pill{margin-left:2px}
.reason{color:var(--bad);font-size:12.5px;margin-top:3px;overflow-wrap:anywhere}
.note{font-size:12.5px;margin-top:3px;overflow-wrap:anywhere}
.note.muted,.note.off{color:var(--muted)}.note.warn{color:var(--warn)}.note.bad{color:var(--bad)}
.budget{display:grid;grid-template-columns:44px minmax(60px,1fr) 40px;column-gap:8px;row-gap:1px;align-items:center;
min-height:20px;margin-bottom:4px}
.budget .figures{grid-column:2 / 4}
.budget .period{font-size:12px;color:var(--muted)}
.budget .pct{font-size:12px;font-weight:650;text-align:right;font-variant-numeric:tabular-nums;color:var(--muted)}
.pct.ok{color:var(--ok)}.pct.warn{color:var(--warn)}.pct.bad{color:var(--bad)}
.budget .figures{font-size:12px;color:var(--muted);font-variant-numeric:tabular-nums}
.track{display:flex;height:8px;border-radius:4px;background:#eaeef2;overflow:hidden}
.track.none{background:repeating-linear-gradient(90deg,#eaeef2 0 6px,transparent 6px 10px)}
.fill.ok{background:var(--ok)}.fill.warn{background:#d4a72c}.fill.bad{background:var(--bad)}
.fill.held{opacity:.35}
@media (max-width:900px){.cards{grid-template-columns:repeat(2,1fr)}}
@media (max-width:720px){
main{padding:10px 10px 20px}.cards{grid-template-columns:1fr}.verdict{margin-left:0}
table.providers,table.providers tbody,table.errors,table.errors tbody{display:block}
table.providers thead,table.providers colgroup,table.errors thead,table.errors colgroup{display:none}
table.providers tr{display:grid;grid-template-columns:32px 1fr 1fr;border-bottom:1px solid var(--line)}
table.providers td{border:0;padding:6px 10px}
table.providers td:nth-child(2){grid-column:2 / 4}
table.providers td:nth-child(3),table.providers td:nth-child(6){grid-column:1 / 4}
table.providers td:nth-child(4){grid-column:1 / 3}
table.providers td[data-label]::before{content:attr(data-label) " ";color:var(--muted);font-size:12px}
table.providers td.num{text-align:left}
table.errors tr{display:grid;grid-template-columns:auto 1fr;border-bottom:1px solid var(--line)}
table.errors td{border:0;padding:4px 10px}table.errors td.reason{grid-column:1 / 3}
}
"""

"""Cache groups keyed by what scores, over real sockets and a real redis-server: re-pointing a
provider misses, reordering agreeing providers and renaming one hit, and scores written before
a provider's first verdict are not served once it fails.

Each gateway runs from a config file and is changed the way ops change it: edit, then
`POST /admin/reload`.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.app import create_app
from gateway.config import load_config, parse_config
from gateway.emulator import EmulatorConfig, create_emulator_app, misbehaving_score
from gateway.models import Usage
from gateway.quality import builtin_canary, judge
from gateway.quality.board import QualityBoard
from gateway.quality.groups import CacheGroups, scoring_identity
from gateway.quality.languages import QueryLanguages
from gateway.quality.probe import CanaryOutcome
from tests.support.canaries import word_overlap_canary
from tests.support.config import changed, gateway_config, write_config
from tests.support.gateway import EMULATOR_KEY, MODEL, add_fault, emulator_requests, emulator_url

QUERY = "bankruptcy through the MFC cost"
DOCS = [f"passage {i}: bankruptcy MFC note {i}" if i % 2 else f"passage {i}: weather in Kazan {i}" for i in range(10)]
ADMIN = {"Authorization": "Bearer admin-secret"}
DEEPINFRA = {"kind": "deepinfra", "model": "Qwen/Qwen3-Reranker-8B", "price_per_million_tokens": 0.05}
FIREWORKS = {"kind": "fireworks", "model": "accounts/fireworks/models/qwen3-reranker-8b", "price_per_million_tokens": 0.10}


def settings(providers: dict[str, dict[str, Any]], fallback: list[str], redis_url: str, **quality: Any) -> dict[str, Any]:
    """Only these providers; probes at start and after a reload only, with the canary `quality` names (see `start`)."""
    raw = gateway_config(
        "http://127.0.0.1:9", fallback, server={"admin_key_env": "ADMIN_KEY", "reload_poll_seconds": 0},
        cache={"url": redis_url}, resilience={"max_retries": 0},
        models={MODEL: {"quality": {"probe_interval_seconds": 3600, **quality}}},
    )
    return changed(raw, "providers", providers)


class Setup:
    """A gateway from a config file, its emulator, and the file to edit."""

    def __init__(self, path: Path, gateway: Any, redis_url: str, base: dict[str, Any], canary: Path) -> None:
        self.path, self.gateway, self.redis_url, self.base, self.canary = path, gateway, redis_url, base, canary

    def write(self, providers: dict[str, dict[str, Any]], fallback: list[str], **quality: Any) -> None:
        """The config file with these providers (each over the emulator, unless it says otherwise)."""
        providers = {name: {**self.base, **entry} for name, entry in providers.items()}
        write_config(self.path, settings(providers, fallback, self.redis_url, canary=str(self.canary), **quality))

    async def reload(self, providers: dict[str, dict[str, Any]], fallback: list[str], **quality: Any) -> None:
        self.write(providers, fallback, **quality)
        response = await self.gateway.post("/admin/reload", headers=ADMIN)
        assert response.status == 200, await response.text()

    async def rerank(self, documents: list[str] = DOCS) -> tuple[Any, list[float]]:
        response = await self.gateway.post("/v1/inference/Qwen/Qwen3-Reranker-8B", json={"queries": [QUERY], "documents": documents})
        assert response.status == 200, await response.text()
        return response, (await response.json())["scores"]

    async def quality(self) -> dict[str, Any]:
        return (await (await self.gateway.get("/readyz")).json())["quality"][MODEL]

    async def verdicts(self, *providers: str, state: str | None = None) -> dict[str, Any]:
        """/readyz's quality section once these providers have a verdict (this `state`, if given)."""
        deadline = time.monotonic() + 20
        while True:
            quality = await self.quality()
            states = [quality[p]["state"] for p in providers]
            if all(s == state if state else s != "unknown" for s in states):
                return quality
            assert time.monotonic() < deadline, f"no verdict: {quality}"
            await asyncio.sleep(0.05)


@pytest.fixture
async def start(aiohttp_client, emulator, tmp_path, monkeypatch, redis_url):
    monkeypatch.setenv("ADMIN_KEY", "admin-secret")
    base = {"base_url": emulator_url(emulator), "api_key_env": "EMULATOR_KEY", "timeout_seconds": 5}

    async def build(providers: dict[str, dict[str, Any]], fallback: list[str], **quality: Any) -> Setup:
        path = tmp_path / "config.toml"
        setup = Setup(path, None, redis_url, base, word_overlap_canary(tmp_path))
        setup.write(providers, fallback, **quality)
        setup.gateway = await aiohttp_client(create_app(load_config(path), config_path=path))
        return setup

    return build


async def test_reordering_agreeing_providers_keeps_every_cached_pair(start):
    setup = await start({"deepinfra": DEEPINFRA, "fireworks": FIREWORKS}, ["deepinfra", "fireworks"])
    quality = await setup.verdicts("deepinfra", "fireworks")
    assert quality["fireworks"]["shares_cache"] and quality["fireworks"]["group"] == quality["deepinfra"]["group"]
    response, scores = await setup.rerank()
    assert response.headers["X-Rerank-Cache"] == "hits=0; misses=10"

    await setup.reload({"deepinfra": DEEPINFRA, "fireworks": FIREWORKS}, ["fireworks", "deepinfra"])
    quality = await setup.quality()
    assert quality["fireworks"]["reference"]  # the other order: another reference, the same group
    response, again = await setup.rerank()
    assert response.headers["X-Rerank-Cache"] == "hits=10; misses=0" and response.headers["X-Rerank-Provider"] == "cache"
    assert again == scores


async def test_renaming_a_provider_changes_nothing(start):
    setup = await start({"deepinfra": DEEPINFRA}, ["deepinfra"])
    await setup.verdicts("deepinfra", state="passing")
    _, scores = await setup.rerank()

    await setup.reload({"primary": DEEPINFRA}, ["primary"])
    quality = await setup.quality()
    assert quality["primary"]["state"] == "passing"  # its verdict kept: the same endpoint and model
    response, again = await setup.rerank()
    assert response.headers["X-Rerank-Cache"] == "hits=10; misses=0" and again == scores


async def test_re_pointing_a_provider_starts_a_new_group(start, aiohttp_client):
    """The same name, another endpoint (here a second emulator whose provider answers another scale):
    none of the old endpoint's scores is served as the new one's."""
    other = await aiohttp_client(create_emulator_app(EmulatorConfig(api_key=EMULATOR_KEY)))
    await add_fault(other, "deepinfra", "rescale")
    setup = await start({"deepinfra": DEEPINFRA}, ["deepinfra"])
    await setup.verdicts("deepinfra", state="passing")
    before = (await setup.quality())["deepinfra"]["group"]
    await setup.rerank()

    await setup.reload({"deepinfra": {**DEEPINFRA, "base_url": emulator_url(other)}}, ["deepinfra"])
    quality = await setup.verdicts("deepinfra", state="passing")
    assert quality["deepinfra"]["group"] != before
    response, scores = await setup.rerank()
    assert response.headers["X-Rerank-Cache"] == "hits=0; misses=10"
    assert scores == pytest.approx([misbehaving_score("rescale", QUERY, d) for d in DOCS], abs=1e-12)


@pytest.mark.slow
async def test_scores_from_before_the_first_verdict_are_not_served_once_it_fails(start, emulator):
    """The issue's case: a provider about to fail serves before its first verdict, and its scores
    are cached; once it fails, the same request must not be answered from them.

    The first probe hangs (until the provider's timeout), so the first requests come before any
    verdict; the next probe, a second later, finds the provider serving another template."""
    await add_fault(emulator, "deepinfra", "hang", count=1)
    await add_fault(emulator, "deepinfra", "template")
    setup = await start({"deepinfra": {**DEEPINFRA, "timeout_seconds": 2}}, ["deepinfra"],
                        probe_interval_seconds=1, action="warn")
    deadline = time.monotonic() + 20
    while (await emulator_requests(emulator))["deepinfra"] < 1:  # the probe holds the hang, not a request
        assert time.monotonic() < deadline, "the first probe never reached the provider"
        await asyncio.sleep(0.02)
    template = [misbehaving_score("template", QUERY, d) for d in DOCS]
    response, scores = await setup.rerank()
    assert response.headers["X-Rerank-Cache"] == "hits=0; misses=10" and scores == pytest.approx(template, abs=1e-12)
    response, _ = await setup.rerank()
    assert response.headers["X-Rerank-Cache"] == "hits=10; misses=0"  # before a verdict, cached as ever
    assert (await setup.quality())["deepinfra"]["state"] == "unknown", "the requests did not come before the verdict"

    quality = await setup.verdicts("deepinfra", state="failing")
    assert quality["deepinfra"]["group"].endswith("!")
    response, scores = await setup.rerank()
    assert response.headers["X-Rerank-Cache"] == "hits=0; misses=10"  # scored afresh, not read from before
    assert response.headers["X-Rerank-Provider"] == "deepinfra" and scores == pytest.approx(template, abs=1e-12)


# --- the rules, without I/O --------------------------------------------------------------------------

def outcome() -> CanaryOutcome:
    """A passing canary round: every relevant passage 0.9, every irrelevant one 0.1 to 0.4."""
    lines = builtin_canary()[:4]
    scores = tuple(tuple(0.9 if i < len(line.relevant) else 0.1 + i / 20 for i in range(len(line.documents)))
                   for line in lines)
    return CanaryOutcome(lines, scores, judge(lines, scores), Usage())


def groups_of(fallback: list[str], board: QualityBoard | None = None, **providers: dict[str, Any]) -> CacheGroups:
    raw = gateway_config("http://127.0.0.1:9", fallback)
    raw["providers"] = {**raw["providers"], **providers}
    config = parse_config(raw)
    return CacheGroups(config, board or QualityBoard(), lambda provider: True,
                       {model: QueryLanguages(builtin_canary()).languages for model in config.models})


def test_a_group_is_named_by_the_scoring_identity_and_the_verdict_it_was_written_under() -> None:
    board = QualityBoard()
    groups = groups_of(["deepinfra"], board)
    identity = scoring_identity(parse_config(gateway_config("http://127.0.0.1:9", ["deepinfra"])).providers["deepinfra"])
    assert len(identity) == 12
    assert groups.group_of(MODEL, "deepinfra") == f"{MODEL}@{identity}?"  # before any verdict
    board.entry(MODEL, "deepinfra").state = "passing"
    assert groups.group_of(MODEL, "deepinfra") == f"{MODEL}@{identity}"
    board.entry(MODEL, "deepinfra").state = "failing"
    assert groups.group_of(MODEL, "deepinfra") == f"{MODEL}@{identity}!"


def test_each_part_of_the_identity_counts_and_the_name_does_not() -> None:
    base = parse_config(gateway_config("http://127.0.0.1:9", ["deepinfra"])).providers["deepinfra"]
    identity = scoring_identity(base)
    changes: dict[str, object] = {"base_url": "http://127.0.0.1:10", "model": "Qwen/Qwen3-Reranker-4B",
                                  "path": "/other", "score_transform": "sigmoid", "kind": "tei"}
    for key, value in changes.items():
        assert scoring_identity(base.model_copy(update={key: value})) != identity, key
    same: dict[str, object] = {"api_key_env": "OTHER_KEY", "price_per_million_tokens": 1.0, "timeout_seconds": 1.0}
    for key, value in same.items():
        assert scoring_identity(base.model_copy(update={key: value})) == identity, key  # how it is paid, not what scores


def test_agreeing_providers_name_one_group_in_any_order() -> None:
    """Agreement from the canary holds both ways: after a reorder it is measured again from the
    last canary scores at once, so not a single request reads another group."""
    board = QualityBoard()
    forward = groups_of(["deepinfra", "fireworks"], board)
    canary = outcome()
    for provider in ("deepinfra", "fireworks"):
        board.record_verdict(MODEL, provider, canary)
    canary.feed(board.entry(MODEL, "fireworks").agreement, canary)
    shared = forward.group_of(MODEL, "deepinfra")
    assert forward.group_of(MODEL, "fireworks") == shared
    backward = groups_of(["fireworks", "deepinfra"], board)  # the board re-measures against the new reference
    assert backward.reference(MODEL) == "fireworks"
    assert backward.group_of(MODEL, "deepinfra") == backward.group_of(MODEL, "fireworks") == shared
    board.entry(MODEL, "deepinfra").state = "failing"  # one failing for a while does not rename the others' group
    assert backward.group_of(MODEL, "fireworks") == shared
    apart = backward.group_of(MODEL, "deepinfra")
    assert apart != shared and apart.endswith("!")  # its own, written while failing, never read as the shared one


def test_a_provider_on_another_scale_shares_only_once_calibrated_and_in_order() -> None:
    board = QualityBoard()
    groups = groups_of(["deepinfra", "fireworks"], board)
    for provider in ("deepinfra", "fireworks"):
        board.entry(MODEL, provider).state = "passing"
    reference = [0.02 + 0.96 * i / 59 for i in range(60)]
    board.entry(MODEL, "fireworks").agreement.add(reference, [r**3 for r in reference])
    placement = groups.placement(MODEL, "fireworks")
    assert placement.group == groups.group_of(MODEL, "deepinfra") and placement.scale is not None
    assert placement.scale.apply([0.5**3]) == pytest.approx([0.5], abs=0.01)
    report = groups.report(MODEL, "fireworks")
    assert report.calibrated and report.calibration is not None and report.calibration.pairs == 60

    shuffled = QualityBoard()  # the same values, another order: no monotone map brings it close
    groups = groups_of(["deepinfra", "fireworks"], shuffled)
    for provider in ("deepinfra", "fireworks"):
        shuffled.entry(MODEL, provider).state = "passing"
    shuffled.entry(MODEL, "fireworks").agreement.add(reference, [r**3 for r in reference[::2] + reference[1::2]])
    assert groups.placement(MODEL, "fireworks").scale is None
    assert groups.group_of(MODEL, "fireworks") != groups.group_of(MODEL, "deepinfra")


def test_scores_agree_as_they_are_before_any_map_is_used() -> None:
    board = QualityBoard()
    groups = groups_of(["deepinfra", "fireworks"], board)
    board.entry(MODEL, "fireworks").agreement.add([0.5] * 30, [0.52] * 30)
    placement = groups.placement(MODEL, "fireworks")
    assert placement.scale is None and placement.group == groups.group_of(MODEL, "deepinfra")


def test_a_small_mae_in_the_wrong_order_does_not_share() -> None:
    """Issue 30, item 2: scores close in value but in another order (here reversed: MAE 0.015,
    tau -1) shared the reference's group as they were; the order is what a reranker is for."""
    board = QualityBoard()
    groups = groups_of(["deepinfra", "fireworks"], board)
    reference = [0.5 + 0.001 * i for i in range(30)]
    board.entry(MODEL, "fireworks").agreement.add(reference, reference[::-1])
    measured = board.entry(MODEL, "fireworks").agreement.current()
    assert measured is not None and measured.mae < 0.05 and measured.kendall_tau == pytest.approx(-1.0)
    assert groups.placement(MODEL, "fireworks").group != groups.group_of(MODEL, "deepinfra")


def test_failing_never_shares() -> None:
    board = QualityBoard()
    groups = groups_of(["deepinfra", "fireworks"], board)
    board.entry(MODEL, "fireworks").agreement.add([0.5] * 30, [0.5] * 30)
    board.entry(MODEL, "fireworks").state = "failing"
    assert groups.group_of(MODEL, "fireworks") != groups.group_of(MODEL, "deepinfra")
    assert groups.group_of(MODEL, "fireworks").endswith("!")


def test_the_reference_under_another_name_is_the_reference() -> None:
    """Two names for one endpoint and model (two accounts, say) score alike: one group."""
    twin = {"base_url": "http://127.0.0.1:9", "api_key_env": "OTHER_KEY", **DEEPINFRA}
    groups = groups_of(["deepinfra", "twin"], twin=twin)
    assert groups.group_of(MODEL, "twin") == groups.group_of(MODEL, "deepinfra")
    assert groups.placement(MODEL, "twin").scale is None


def test_a_groups_sibling_keeps_a_model_name_with_a_slash_or_a_question_mark_whole() -> None:
    """The sibling (the group written under the other mark: before or after a first pass) is found
    by the mark after the identity, never by a "/" or "?" in the model's own name."""
    raw = gateway_config("http://127.0.0.1:9", ["deepinfra"])
    # Its aliases left out: the canonical name is the only name it has here.
    raw["models"] = {"Qwen/Reranker?": {"fallback": ["deepinfra"], "quality": {"probe_interval_seconds": 60}}}
    raw["server"]["default_model"] = "Qwen/Reranker?"
    config = parse_config(raw)
    board = QualityBoard()
    groups = CacheGroups(config, board, lambda provider: True, {"Qwen/Reranker?": ("en", "other")})
    pending = groups.group_of("Qwen/Reranker?", "deepinfra")
    assert pending.startswith("Qwen/Reranker?@") and pending.endswith("?")
    sibling = groups.sibling("Qwen/Reranker?", "deepinfra", pending)
    assert sibling is not None and sibling.group == pending[:-1] and sibling.until is None
    board.record_verdict("Qwen/Reranker?", "deepinfra", outcome())
    passed = groups.group_of("Qwen/Reranker?", "deepinfra")
    assert passed == pending[:-1]
    after = groups.sibling("Qwen/Reranker?", "deepinfra", f"{passed}/en")
    assert after is not None and after.group == f"{pending}/en" and after.until is not None

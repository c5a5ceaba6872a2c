"""The canary prober: every provider of a model, at start and every `probe_interval_seconds`.

    due       a provider whose last probe (here or, through the fleet store, anywhere) is older
              than the interval, or whose config (fingerprint) the board has no verdict for: so
              a reload re-probes only the providers it changed
    lease     one prober per provider and interval across workers and replicas (gateway.quality.verdict_store);
              the others read the record it publishes and judge the same scores themselves
    probe     real calls through the guarded path (budgets, breaker, token counts; never cached),
              counted in the metrics as purpose="probe"
    verdicts  one warning line when a provider starts failing, one when it recovers

One Prober per config generation, built from its Parts; what it learns lives in the shared QualityBoard.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Mapping, Sequence

import orjson

from gateway.errors import ProviderFailure
from gateway.models import Usage
from gateway.quality.board import Transition
from gateway.quality.canary import CanaryLine
from gateway.quality.figures import publish_quality
from gateway.quality.judge import judge
from gateway.quality.parts import Parts
from gateway.quality.probe import CanaryOutcome, run_canary
from gateway.quality.tracker import AgreementTracker, SampleRow
from gateway.quality.verdict_store import LEASE_SECONDS

log = logging.getLogger("gateway.quality")

SYNC_SECONDS = 1.0  # how often a worker reads the fleet's verdicts when they are shared


class Prober:
    def __init__(self, parts: Parts, canaries: Mapping[str, tuple[CanaryLine, ...]]) -> None:
        self._parts = parts
        self._config = parts.config
        self._clients = parts.clients
        self._calls = parts.calls
        self._board = parts.board
        self._store = parts.verdicts
        self._canaries = canaries
        self._fingerprints = parts.identities  # per provider: digest of what its verdict is about

    def rejudge(self, model: str) -> None:
        """Verdicts judged under another `canary_pass_share` (a reload changed it): the same scores
        judged again, with no new calls; a reload re-probes only providers whose identity changed."""
        share = self._pass_share(model)
        for provider in self._config.models[model].fallback:
            entry = self._board.entry(model, provider)
            if entry.canary is not None and entry.canary.verdict.pass_share != share:
                self._announce(self._board.record_verdict(model, provider, entry.canary.rejudged(share), entry.checked_at))

    def _pass_share(self, model: str) -> float:
        return self._config.models[model].quality.canary_pass_share

    @property
    def shared(self) -> bool:
        """Whether other workers' probes and samples count here (Redis configured)."""
        return self._store.shared

    async def run(self, model: str) -> None:
        """Probe the model's providers when due, for as long as this generation serves."""
        interval = self._config.models[model].quality.probe_interval_seconds
        while True:
            try:
                await self.round(model)
            except Exception:  # a probe round must never end the loop, or probing stops for good
                log.exception("canary probe round for model %s failed", model)
            await asyncio.sleep(self._pause(model, interval))

    async def round(self, model: str) -> None:
        """Read the fleet's verdicts, probe the providers still due, then the reference and agreement."""
        interval = self._config.models[model].quality.probe_interval_seconds
        fresh = await self._read_shared(model)
        probed = {}
        for provider in self._config.models[model].fallback:
            if not self._due(model, provider, interval):
                continue
            if not await self._store.claim(model, provider, self._fingerprints[provider],
                                           min(interval, LEASE_SECONDS)):
                continue  # another worker probes it now; its record arrives with a later read
            outcome = await self._probe_one(model, provider)
            if outcome is not None:
                probed[provider] = outcome
        await self._settle(model, fresh, probed)

    def _pause(self, model: str, interval: float) -> float:
        """Until the next provider is due; at most SYNC_SECONDS when other workers' probes count."""
        now = time.time()
        if interval <= 0:
            return SYNC_SECONDS
        checked = [self._board.entry(model, p).checked_at for p in self._config.models[model].fallback]
        waits = [interval if at is None else at + interval - now for at in checked]
        pause = max(0.05, min(waits, default=interval))
        return min(pause, SYNC_SECONDS) if self._store.shared else pause

    def _due(self, model: str, provider: str, interval: float) -> bool:
        if interval <= 0:
            return False  # probes off: this loop only reads what the fleet measured
        checked_at = self._board.entry(model, provider).checked_at
        return checked_at is None or time.time() - checked_at >= interval

    async def _probe_one(self, model: str, provider: str) -> CanaryOutcome | None:
        client = self._clients[provider]
        lines = self._lines(model, provider)
        reason = client.unusable_reason(None)
        if reason is None and not lines:
            reason = f"every canary line carries an instruction, which kind {client.config.kind!r} cannot take"
        if reason is None:
            try:
                outcome = await run_canary(lines, lambda pairs: self._calls.score(client, pairs, None, purpose="probe"),
                                           self._pass_share(model))
            except ProviderFailure as failure:
                reason = f"probe failed: {failure}"
            else:
                at = time.time()
                self._announce(self._board.record_verdict(model, provider, outcome, at))
                await self._share(model, provider, {"at": at, "canary": canary_digest(lines),
                                                    "scores": [list(s) for s in outcome.scores]})
                return outcome
        else:
            reason = f"not probed: {reason}"
        at = time.time()
        self._board.record_unprobed(model, provider, reason, at)
        await self._share(model, provider, {"at": at, "unprobed": reason})
        return None

    async def _share(self, model: str, provider: str, record: dict[str, object]) -> None:
        if self._store.shared:
            await self._store.publish(model, provider, self._fingerprints[provider], orjson.dumps(record))

    async def _read_shared(self, model: str) -> dict[str, CanaryOutcome]:
        """Records other workers published since this one last looked, applied to the board."""
        if not self._store.shared:
            return {}
        records = await self._store.records(model)
        fresh = {}
        for provider in self._config.models[model].fallback:
            raw = records.get((provider, self._fingerprints[provider]))
            outcome = None if raw is None else self._apply(model, provider, raw)
            if outcome is not None:
                fresh[provider] = outcome
        return fresh

    def _apply(self, model: str, provider: str, raw: bytes) -> CanaryOutcome | None:
        """One published record, when newer than what the board has and probed with this canary."""
        try:
            record = orjson.loads(raw)
            at = float(record["at"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None  # written by another version of the gateway: its own probes will do
        entry = self._board.entry(model, provider)
        if entry.checked_at is not None and at <= entry.checked_at:
            return None
        if "unprobed" in record:
            self._board.record_unprobed(model, provider, str(record["unprobed"]), at)
            return None
        lines = self._lines(model, provider)
        scores = record.get("scores")
        if record.get("canary") != canary_digest(lines) or not _fits(lines, scores):
            return None  # another canary set: not evidence about this one
        per_line = tuple(tuple(float(s) for s in line) for line in scores)
        outcome = CanaryOutcome(lines, per_line, judge(lines, per_line, self._pass_share(model)), Usage())
        self._announce(self._board.record_verdict(model, provider, outcome, at))
        return outcome

    async def _settle(
        self, model: str, fresh: Mapping[str, CanaryOutcome], probed: Mapping[str, CanaryOutcome]
    ) -> None:
        """After new verdicts: the reference, the agreement of the new canary scores with its, the metrics.

        Shared, the worker that probed measures and pushes the samples, and every worker then keeps
        the fleet's; alone, a worker measures what it probed itself.
        """
        reference = self._parts.reference(model)
        self._board.note_reference(model, reference)
        reference_outcome = None if reference is None else self._board.entry(model, reference).canary
        measured = probed if self._store.shared else {**fresh, **probed}
        # Every worker fits its own map, from the canary scores it holds (its own probes' or the
        # fleet's): the same scores on every worker, whichever worker probed which provider, so
        # every worker reports the same calibration. Pairs already held are not counted again.
        if reference_outcome is not None:
            for provider, outcome in self._canaries_beside(model, reference).items():
                for line, ours, theirs in zip(outcome.lines, outcome.scores, reference_outcome.scores):
                    self._board.add_agreement_pairs(model, provider, theirs, ours, line.language)
        for provider, outcome in measured.items():
            if reference_outcome is not None and provider != reference and outcome.lines == reference_outcome.lines:
                tracker = AgreementTracker()  # this round's samples alone, to share
                outcome.feed(tracker, reference_outcome)
                await self.share_samples(model, provider, tracker.export())
        if self._store.shared and reference is not None:
            await self._read_agreement(model, reference)
        publish_quality(self._parts, model)

    async def share_samples(self, model: str, provider: str, samples: list[SampleRow]) -> None:
        """Agreement samples of `provider` with the model's reference: to the board, and to the fleet."""
        self._board.append_agreement(model, provider, samples)
        reference = self._parts.reference(model)
        if self._store.shared and reference is not None and samples:
            await self._store.push_samples(model, self._fingerprints[provider], self._fingerprints[reference],
                                           [orjson.dumps(sample) for sample in samples])

    async def _read_agreement(self, model: str, reference: str) -> None:
        """Every provider's agreement with the reference, as the fleet measured it."""
        others = [p for p in self._config.models[model].fallback if p != reference]
        series = [(self._fingerprints[p], self._fingerprints[reference]) for p in others]
        found = await self._store.samples(model, series)
        if found is None:
            return  # Redis could not say: keep what this worker knows
        for provider, raw in zip(others, found):
            samples = [sample for sample in map(_sample, raw) if sample is not None]
            if not samples:
                # Nobody has pushed samples against this reference yet: it just became the reference
                # (the board re-measured from the last canaries), or its canary arrived only after
                # this provider's was probed elsewhere. Measure from the canaries held, and share that.
                samples = self._board.entry(model, provider).agreement.export() or self._canary_samples(
                    model, provider, reference)
                if samples:
                    await self._store.push_samples(model, self._fingerprints[provider], self._fingerprints[reference],
                                                   [orjson.dumps(sample) for sample in samples])
            self._board.replace_agreement(model, provider, samples)

    def _canaries_beside(self, model: str, reference: str | None) -> dict[str, CanaryOutcome]:
        """The last canary outcome of each other provider scored on the reference's canary lines."""
        reference_outcome = None if reference is None else self._board.entry(model, reference).canary
        if reference_outcome is None:
            return {}
        found = {}
        for provider in self._config.models[model].fallback:
            outcome = self._board.entry(model, provider).canary
            if provider != reference and outcome is not None and outcome.lines == reference_outcome.lines:
                found[provider] = outcome
        return found

    def _canary_samples(self, model: str, provider: str, reference: str) -> list[SampleRow]:
        """Agreement samples of the provider's last canary against the reference's, if both are held."""
        outcome = self._canaries_beside(model, reference).get(provider)
        reference_outcome = self._board.entry(model, reference).canary
        if outcome is None or reference_outcome is None:
            return []
        tracker = AgreementTracker()
        outcome.feed(tracker, reference_outcome)
        return tracker.export()

    def _lines(self, model: str, provider: str) -> tuple[CanaryLine, ...]:
        takes_instruction = self._clients[provider].adapter.takes_instruction
        return tuple(line for line in self._canaries[model] if line.instruction is None or takes_instruction)

    def _announce(self, transition: Transition | None) -> None:
        if transition is None:
            return
        if transition.state == "failing":
            log.warning("provider %s of model %s fails its canary: %s", transition.provider, transition.model, transition.reason)
        else:
            log.warning("provider %s of model %s passes its canary again: %s", transition.provider, transition.model,
                        transition.reason)
        verdict = "fails its canary" if transition.state == "failing" else "passes its canary again"
        self._parts.health.note_change(f"{transition.provider} of {transition.model} {verdict}")


def digest(fingerprint: object) -> str:
    """A short, stable name for a provider's fingerprint, in Redis keys and fields."""
    return hashlib.sha256(orjson.dumps(fingerprint)).hexdigest()[:16]


def canary_digest(lines: Sequence[CanaryLine]) -> str:
    content = [(line.query, line.relevant, line.irrelevant, line.instruction) for line in lines]
    return hashlib.sha256(orjson.dumps(content)).hexdigest()[:16]


def _sample(raw: bytes) -> SampleRow | None:
    """A sample as the fleet stores it; one pushed before languages were told has none (pooled only)."""
    try:
        pairs, total, tau, *language = orjson.loads(raw)
        named = language[0] if language and isinstance(language[0], str) else None
        return int(pairs), float(total), None if tau is None else float(tau), named
    except (orjson.JSONDecodeError, TypeError, ValueError):
        return None


def _fits(lines: Sequence[CanaryLine], scores: object) -> bool:
    return (isinstance(scores, list) and len(scores) == len(lines)
            and all(isinstance(s, list) and len(s) == len(line.documents) for line, s in zip(lines, scores)))

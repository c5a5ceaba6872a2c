"""Ingress routes and the dialect each speaks: adding a wire format is a module and a line here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.dialects.base import Dialect
from gateway.dialects.cohere import CohereDialect
from gateway.dialects.deepinfra import DeepInfraDialect
from gateway.dialects.fireworks import FireworksDialect
from gateway.dialects.infinity import InfinityDialect
from gateway.dialects.tei import TeiDialect

DEEPINFRA = DeepInfraDialect()
FIREWORKS = FireworksDialect()
COHERE_V1 = CohereDialect("1")
COHERE_V2 = CohereDialect("2")
TEI = TeiDialect()
INFINITY = InfinityDialect()

DialectChooser = Callable[[Any], Dialect]


def _always(dialect: Dialect) -> DialectChooser:
    return lambda payload: dialect


def _cohere_or_tei(payload: Any) -> Dialect:
    # Both Cohere-compatible servers and TEI serve `/rerank`; TEI's body says `texts`.
    return TEI if isinstance(payload, dict) and "texts" in payload else COHERE_V1


RERANK_ROUTES: dict[str, DialectChooser] = {
    "/v1/inference/{model:.+}": _always(DEEPINFRA),
    "/inference/v1/rerank": _always(FIREWORKS),  # before the next: routes match in this order
    # DeepInfra's base URL convention (`https://api.deepinfra.com` + `/inference/{model}`, as
    # LiteLLM's `deepinfra/` route builds it) next to its `/v1/inference/` one.
    "/inference/{model:.+}": _always(DEEPINFRA),
    "/v1/rerank": _always(COHERE_V1),
    "/v2/rerank": _always(COHERE_V2),
    "/rerank": _cohere_or_tei,
    "/infinity/rerank": _always(INFINITY),  # see gateway/dialects/infinity.py for why a prefix
}

__all__ = ["COHERE_V1", "COHERE_V2", "DEEPINFRA", "FIREWORKS", "INFINITY", "RERANK_ROUTES", "TEI", "Dialect"]

"""What a dialect is: one client wire format, decoded into and encoded from the core types."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from gateway.models import RerankRequest, RerankResult


class Dialect(Protocol):
    name: str

    def decode(self, payload: Any, path_params: Mapping[str, str]) -> RerankRequest: ...

    def encode(self, request: RerankRequest, result: RerankResult, request_id: str) -> Any: ...

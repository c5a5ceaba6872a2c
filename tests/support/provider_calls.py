"""A DeepInfra-kind ProviderClient aimed at a test's own server, and what one call of it gives."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from aiohttp.abc import AbstractResolver

from gateway.config import ProviderConfig
from gateway.errors import ProviderFailure
from gateway.models import Batch
from gateway.providers.client import ProviderClient
from tests.support.raw_server import Reply, Request, answer

KEY = "k"
SCORES = orjson.dumps({"scores": [0.5], "input_tokens": 3})


async def scores(request: Request) -> Reply:
    """DeepInfra's answer to a one-pair call."""
    return Reply(answer(200, SCORES))


def provider_config(base_url: str, **overrides: Any) -> ProviderConfig:
    return ProviderConfig.model_validate({
        "kind": "deepinfra", "base_url": base_url, "model": "Qwen/Qwen3-Reranker-8B", "api_key_env": "KEY",
        "connect_timeout_seconds": 5.0, **overrides,
    })


@asynccontextmanager
async def provider_client(
    base_url: str, environ: Mapping[str, str] | None = None, resolver: AbstractResolver | None = None,
    **overrides: Any,
) -> AsyncIterator[ProviderClient]:
    """Started, with no proxy variables unless `environ` has them; closed after."""
    client = ProviderClient("upstream", provider_config(base_url, **overrides), KEY, environ=environ or {},
                            resolver=resolver)
    await client.start()
    try:
        yield client
    finally:
        await client.close()


async def score_one(client: ProviderClient) -> list[float]:
    scored, _ = await client.score(Batch(["q"], ["a"], None))
    return scored


async def failure_of(client: ProviderClient) -> ProviderFailure:
    with pytest.raises(ProviderFailure) as caught:
        await client.score(Batch(["q"], ["a"], None))
    return caught.value

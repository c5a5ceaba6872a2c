"""Every credential one config names, read from the environment once, when its generation is built.

A variable set but empty (`KEY= cmd`, an empty line in .env) is the usual slip, so a missing
provider key says which of the two it is.

Config stays plain data (which env var holds what); this is the one place that reads the
values, so a reload picks up rotated keys and nothing reads the environment mid-request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.config import GatewayConfig


@dataclass(frozen=True, slots=True)
class Secrets:
    provider_keys: Mapping[str, str | None]  # by provider name; None: no env var named, or unset/empty
    missing_keys: Mapping[str, str]  # by provider name, where a named variable gave no key: "not set" or "empty"
    client_keys: tuple[bytes, ...]  # keys a rerank request must present; () with client auth off
    admin_key: str | None  # the /admin/* bearer key; None: admin endpoints are off

    @classmethod
    def resolve(cls, config: GatewayConfig, environ: Mapping[str, str] = os.environ) -> Secrets:
        return cls(
            provider_keys={
                name: read_env(provider.api_key_env, environ) for name, provider in config.providers.items()
            },
            missing_keys={
                name: "empty" if provider.api_key_env in environ else "not set"
                for name, provider in config.providers.items()
                if provider.api_key_env is not None and read_env(provider.api_key_env, environ) is None
            },
            client_keys=_client_keys(environ, config.server.api_keys_env),
            admin_key=read_env(config.server.admin_key_env, environ),
        )


def read_env(name: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The value of the variable `name`; None when no variable is named, or it is unset or empty."""
    if name is None:
        return None
    return environ.get(name) or None


def _client_keys(environ: Mapping[str, str], name: str | None) -> tuple[bytes, ...]:
    """Comma-separated keys; blanks around and between them are not part of any key."""
    if name is None:
        return ()
    return tuple(key.strip().encode() for key in environ.get(name, "").split(",") if key.strip())

"""Every credential one config names, read from the environment once, when its generation is built.

A variable set but empty (`KEY= cmd`, an empty line in .env) is the usual slip, so a missing
provider key says which of the two it is.

Config stays plain data (which env var holds what); this is the one place that reads the
values, so a reload picks up rotated keys and nothing reads the environment mid-request.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.config import GatewayConfig


@dataclass(frozen=True, slots=True)
class Secrets:
    provider_keys: Mapping[str, str | None]  # by provider name; None: no env var named, or unset/empty
    missing_keys: Mapping[str, str]  # by provider name, where a named variable gave no key: "not set" or "empty"
    # SHA-256 of each client key -> the client it names (ANONYMOUS for [server] api_keys_env's):
    # a presented key is hashed and looked up, so no comparison runs over a stored key.
    client_digests: Mapping[bytes, str]
    clients_without_key: tuple[str, ...]  # [clients.NAME] whose key_env is unset or empty
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
            client_digests=_client_digests(config, environ),
            clients_without_key=tuple(
                name for name, client in config.clients.items() if read_env(client.key_env, environ) is None
            ),
            admin_key=read_env(config.server.admin_key_env, environ),
        )


def read_env(name: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The value of the variable `name`; None when no variable is named, or it is unset or empty."""
    if name is None:
        return None
    return environ.get(name) or None


# The client of [server] api_keys_env's keys: served as before, attributed to no named client.
ANONYMOUS = "anonymous"


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _client_digests(config: GatewayConfig, environ: Mapping[str, str]) -> dict[bytes, str]:
    digests = {key_digest(key): ANONYMOUS for key in _anonymous_keys(environ, config.server.api_keys_env)}
    for name, client in config.clients.items():
        key = read_env(client.key_env, environ)
        if key is not None:
            digests[key_digest(key.strip())] = name
    return digests


def _anonymous_keys(environ: Mapping[str, str], name: str | None) -> list[str]:
    """Comma-separated keys; blanks around and between them are not part of any key."""
    if name is None:
        return []
    return [key.strip() for key in environ.get(name, "").split(",") if key.strip()]

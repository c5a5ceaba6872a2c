"""A config generation's clients, found by the SHA-256 of the key a request presents."""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.budget import client_limit, team_limit
from gateway.clients.in_flight import Cap
from gateway.clients.rates import Rate
from gateway.clients.store import ClientRecord, ClientStore
from gateway.config import BudgetConfig, ClientSettings, GatewayConfig, ModelNames, RateLimitsConfig
from gateway.errors import ModelNotAllowed, Unauthorized
from gateway.models import Limit
from gateway.secrets import ANONYMOUS, Secrets, key_digest


@dataclass(frozen=True, slots=True)
class Client:
    name: str
    team: str | None
    models: frozenset[str] | None  # canonical model names it may use; None: every one
    budgets: tuple[Limit, ...]  # its own, then its team's: held with each provider's
    rates: tuple[Rate, ...]
    caps: tuple[Cap, ...]

    @property
    def team_label(self) -> str:
        """The team as a metric label: "" for none."""
        return self.team or ""

    def check_model(self, model: str, requested: str | None) -> None:
        if self.models is not None and model not in self.models:
            named = model if requested in (None, model) else f"{requested} ({model})"
            raise ModelNotAllowed(f"client {self.name!r} may not use model {named!r}; "
                                  f"it may use: {', '.join(sorted(self.models))}")


# [server] api_keys_env's holders: every model, no budget or rate of their own (as before clients).
ANONYMOUS_CLIENT = Client(ANONYMOUS, None, None, (), (), ())


class ClientBook:
    """A generation's clients: those its config names, and those the admin API created (`store`)."""

    def __init__(self, config: GatewayConfig, secrets: Secrets, store: ClientStore) -> None:
        # Any client named, or the older key list set: every rerank request needs a key.
        self._required = bool(config.clients) or config.server.api_keys_env is not None
        self._config = config
        self._names = ModelNames(config)
        self._store = store
        self.named = {name: _client(name, settings, config, self._names) for name, settings in config.clients.items()}
        known = {**self.named, ANONYMOUS: ANONYMOUS_CLIENT}
        self._by_digest = {digest: known[name] for digest, name in secrets.client_digests.items()}
        self._created: dict[str, tuple[ClientRecord, Client]] = {}  # each record's Client, built once

    @property
    def required(self) -> bool:
        return self._required or not self._store.empty

    def identify(self, authorization: str | None) -> Client | None:
        """The client whose key the header holds; None when the gateway needs no key; else 401.

        The presented key is hashed and its digest looked up: nothing compares it with a stored
        key, so its timing tells nothing of how much of one it matched.
        """
        if not self.required:
            return None
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            raise Unauthorized("this gateway needs Authorization: Bearer <client key>")
        digest = key_digest(given.strip())
        client = self._by_digest.get(digest) or self._created_client(digest)
        if client is None:
            raise Unauthorized("this gateway needs Authorization: Bearer <client key>")
        return client

    def _created_client(self, digest: bytes) -> Client | None:
        record = self._store.lookup(digest, time.time())
        if record is None:
            return None
        known = self._created.get(record.name)
        if known is None or known[0] is not record:
            known = self._created[record.name] = (record, _client(record.name, record.settings, self._config, self._names))
        return known[1]


def _client(name: str, settings: ClientSettings, config: GatewayConfig, names: ModelNames) -> Client:
    models = None if settings.models is None else frozenset(names.exact(model) or model for model in settings.models)
    budgets = [client_limit(name, settings.budget)]
    rates = _rates(f"client:{name}", f"client {name}", settings.limits)
    caps = _caps(f"client:{name}", f"client {name}", settings.limits)
    if settings.team is not None:
        # A created client's team may have left the config since: still its team in the reports.
        team = config.teams.get(settings.team)
        budgets.append(team_limit(settings.team, team.budget if team is not None else BudgetConfig()))
        if team is not None:
            rates += _rates(f"team:{settings.team}", f"team {settings.team}", team.limits)
            caps += _caps(f"team:{settings.team}", f"team {settings.team}", team.limits)
    return Client(name, settings.team, models, tuple(budgets), tuple(rates), tuple(caps))


def _rates(key: str, owner: str, limits: RateLimitsConfig) -> list[Rate]:
    rates = []
    if limits.requests_per_minute is not None:
        rates.append(Rate(f"{key}:requests", limits.requests_per_minute, "requests", owner))
    if limits.documents_per_minute is not None:
        rates.append(Rate(f"{key}:documents", limits.documents_per_minute, "documents", owner))
    return rates


def _caps(key: str, owner: str, limits: RateLimitsConfig) -> list[Cap]:
    return [] if limits.concurrent is None else [Cap(key, limits.concurrent, owner)]

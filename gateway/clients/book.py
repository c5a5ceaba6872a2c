"""A config generation's clients, found by the SHA-256 of the key a request presents."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.budget import client_limit, team_limit
from gateway.clients.in_flight import Cap
from gateway.clients.rates import Rate
from gateway.config import ClientConfig, GatewayConfig, ModelNames, RateLimitsConfig
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
    def __init__(self, config: GatewayConfig, secrets: Secrets) -> None:
        # Any client named, or the older key list set: every rerank request needs a key.
        self.required = bool(config.clients) or config.server.api_keys_env is not None
        names = ModelNames(config)
        self.named = {name: _client(name, settings, config, names) for name, settings in config.clients.items()}
        known = {**self.named, ANONYMOUS: ANONYMOUS_CLIENT}
        self._by_digest = {digest: known[name] for digest, name in secrets.client_digests.items()}

    def identify(self, authorization: str | None) -> Client | None:
        """The client whose key the header holds; None when the gateway needs no key; else 401.

        The presented key is hashed and its digest looked up: nothing compares it with a stored
        key, so its timing tells nothing of how much of one it matched.
        """
        if not self.required:
            return None
        scheme, _, given = (authorization or "").partition(" ")
        client = self._by_digest.get(key_digest(given.strip())) if scheme.lower() == "bearer" else None
        if client is None:
            raise Unauthorized("this gateway needs Authorization: Bearer <client key>")
        return client


def _client(name: str, settings: ClientConfig, config: GatewayConfig, names: ModelNames) -> Client:
    models = None if settings.models is None else frozenset(names.exact(model) or model for model in settings.models)
    budgets = [client_limit(name, settings.budget)]
    rates = _rates(f"client:{name}", f"client {name}", settings.limits)
    caps = _caps(f"client:{name}", f"client {name}", settings.limits)
    if settings.team is not None:
        team = config.teams[settings.team]
        budgets.append(team_limit(settings.team, team.budget))
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

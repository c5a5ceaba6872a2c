"""config.toml as typed models: ops' interface to the gateway.

Every key is validated at load time; an error names the key and the problem, and the gateway
refuses to start rather than run on a half-understood config.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.quality.canary import CanaryError, load_canary
from gateway.redisio.client import cluster_nodes, is_cluster_url

PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]

DEFAULT_CONFIG_PATH = "config.toml"
# Hosted rerankers cost cents to a few dollars per million tokens; above this a price was most
# likely written per thousand tokens or per call. A warning, not a refusal: it may be meant.
PLAUSIBLE_PRICE_PER_MILLION_USD = 100.0

log = logging.getLogger("gateway.config")


class ConfigError(Exception):
    """The config file is missing, not TOML, or breaks a rule; the message says where."""


class _Section(BaseModel):
    # A misspelt key is an error, not a silently ignored setting; and strict, so `port = "8080"`
    # is refused rather than quietly converted (a whole number is still taken where a float is meant).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    default_model: str | None = None
    request_timeout_seconds: PositiveFloat = 30.0
    # Abuse bounds, far above any document a model reads whole: a longer one is shaped to its
    # model's context (models.*.long_documents), not refused.
    max_body_bytes: PositiveInt = 32 * 1024 * 1024
    max_documents: PositiveInt = 1000
    max_queries: PositiveInt = 1000
    max_document_chars: PositiveInt = 1_000_000
    max_query_chars: PositiveInt = 16_000
    max_instruction_chars: PositiveInt = 4_000
    api_keys_env: str | None = None  # env var holding comma-separated client keys; unset = no client auth
    admin_key_env: str | None = None  # env var holding the /admin/* bearer key; unset = admin off
    # Wrong admin keys in a row wait 0.05 s, then twice as long each, up to this; 0: no wait.
    admin_wrong_key_max_delay_seconds: float = Field(5.0, ge=0)
    reload_poll_seconds: float = Field(2.0, ge=0)  # how often to look for config file changes; 0 = never
    shutdown_grace_seconds: float = Field(30.0, ge=0)  # SIGTERM: time for requests in flight to finish
    # An idle keep-alive connection is closed after this (aiohttp's own default is an hour).
    keepalive_timeout_seconds: PositiveFloat = 75.0
    # A connection that has not sent a whole request head this long after connecting is closed:
    # silent and trickling clients cannot hold descriptors for the keep-alive timeout.
    header_timeout_seconds: PositiveFloat = 10.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"


def _redis_url_or_empty(url: str) -> str:
    if is_cluster_url(url):
        cluster_nodes(url)  # raises ValueError naming what is wrong
    elif url and not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(
            "must be empty (in-process cache) or a redis://, rediss://, unix://, "
            "redis+cluster://host:port,host:port,... or rediss+cluster:// URL"
        )
    return url


class CacheConfig(_Section):
    url: str = ""  # "" keeps the in-process memory cache
    ttl_seconds: PositiveInt = 30 * 24 * 3600
    # Bound of the in-process cache, in bytes of this process's memory (about 25-40 B per pair at
    # 20-1,000 passages per query: bench/memory_cache.py); least recently used queries go first.
    max_bytes: PositiveInt = 256 * 1024 * 1024
    max_entries: PositiveInt | None = None  # an extra bound in pairs, for configs that set one
    timeout_ms: PositiveFloat = 150.0  # bound on every Redis call; past it the request goes uncached
    # How long another process waits for a pair this one leased, if this one dies, before scoring it
    # itself (Redis only); renewed every half lease while this one is still scoring.
    lease_ms: PositiveFloat = 5000.0
    # Bound on the spend ledger's Redis calls; past it budgets are enforced per process for a while.
    ledger_timeout_ms: PositiveFloat = 500.0
    # Bound on the ledger's reserve before a provider call, which waits for it: past it the call
    # goes on under a hold of this process's own. Its time is not taken from the provider's.
    ledger_reserve_timeout_ms: PositiveFloat = 250.0

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        return _redis_url_or_empty(url)


class BudgetConfig(_Section):
    """USD ceilings over UTC calendar windows; None = tracked, not enforced."""

    daily_usd: float | None = Field(None, ge=0)
    monthly_usd: float | None = Field(None, ge=0)


class GatewayBudgetConfig(BudgetConfig):
    """The gateway-wide budget, and where the spend ledger lives."""

    # None: the cache's Redis ([cache] url). A Redis of its own keeps spend apart from what a
    # cache may evict or lose on restart; "" keeps the ledger in each process.
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str | None) -> str | None:
        return None if url is None else _redis_url_or_empty(url)


class ResilienceConfig(_Section):
    max_retries: int = Field(2, ge=0)  # extra tries on the same provider, for transient failures
    retry_base_ms: PositiveFloat = 50.0
    retry_cap_ms: PositiveFloat = 1000.0
    retry_budget_ratio: float = Field(0.2, ge=0, le=1)  # retries at most this share of calls
    # A 429 without Retry-After keeps its provider out this long (one with it: as long as it says).
    rate_limit_seconds: PositiveFloat = 1.0
    breaker_consecutive_failures: PositiveInt = 5
    breaker_error_rate: float = Field(0.5, gt=0, le=1)
    breaker_window_seconds: PositiveFloat = 30.0
    breaker_min_calls: PositiveInt = 10
    breaker_cooldown_seconds: PositiveFloat = 15.0
    # An attempt this many times the provider's recent p99 latency (for its size) is a failure...
    attempt_p99_multiple: PositiveFloat = 4.0
    attempt_min_ms: PositiveFloat = 250.0  # ... but never one shorter than this
    # Send the same pairs to the next provider when the first has not answered: "off", "p95"
    # (its observed p95 latency), or a fixed delay in milliseconds.
    hedge: Literal["off", "p95"] | PositiveFloat = "off"
    hedge_min_ms: PositiveFloat = 20.0  # floor of the p95 delay, so a fast provider is not hedged at once
    last_resort: Literal["none", "lexical"] = "none"  # when every provider failed


# The kinds gateway.providers registers an adapter for; a test keeps the two lists equal, and
# the runtime looks each kind up when it builds its clients.
ProviderKind = Literal["deepinfra", "fireworks", "cohere", "tei"]


class ProviderConfig(_Section):
    kind: ProviderKind
    base_url: str
    model: str
    api_key_env: str | None = None
    price_per_million_tokens: float = Field(0.0, ge=0)
    enabled: bool = True
    path: str | None = None  # endpoint path when a compatible API serves it elsewhere
    max_batch: PositiveInt = 256
    max_connections: PositiveInt = 64
    timeout_seconds: PositiveFloat = 10.0
    connect_timeout_seconds: PositiveFloat = 2.0
    # No answer byte for this long fails the call as a read timeout; None: only timeout_seconds bounds it.
    read_timeout_seconds: PositiveFloat | None = None
    # An idle keep-alive connection is closed after this: below the 5 s of uvicorn (vLLM, Infinity)
    # and most servers', so the gateway, not the server, closes it and few calls meet a dying one.
    keepalive_timeout_seconds: PositiveFloat = 2.0
    # Most bytes of one answer, on the wire and once decoded; past it the call fails "answer too large".
    max_answer_bytes: PositiveInt = 4 * 1024 * 1024
    # None: HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the environment; "" goes direct; else the proxy's URL.
    proxy: str | None = None
    ca_file: str | None = None  # PEM CA bundle to trust instead of the system's (a private CA)
    client_cert: str | None = None  # PEM certificate for mutual TLS (with client_key unless it holds the key)
    client_key: str | None = None
    score_transform: Literal["none", "sigmoid"] = "none"
    budget: BudgetConfig = BudgetConfig()

    @field_validator("base_url", mode="before")
    @classmethod
    def _expand_env(cls, url: Any) -> Any:
        # `${EMULATOR_PORT:-9000}`: lets one config serve several set-ups without editing it.
        return expand_env(url) if isinstance(url, str) else url

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return url.rstrip("/")

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, path: str | None) -> str | None:
        if path is not None and not path.startswith("/"):
            raise ValueError("must start with /")
        return path

    @field_validator("proxy")
    @classmethod
    def _proxy_url(cls, proxy: str | None) -> str | None:
        if proxy and not proxy.startswith(("http://", "https://")):
            raise ValueError('must be "" (direct) or an http:// or https:// proxy URL')
        return proxy

    @model_validator(mode="after")
    def _client_key_needs_a_cert(self) -> ProviderConfig:
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("client_key is set without client_cert")
        return self


class QualityConfig(_Section):
    """How a model's providers are checked for serving the model they claim (the quality guard)."""

    # JSONL canary set; a relative path is relative to the config file (load_config resolves it).
    # None: the built-in set.
    # Lax here: TOML has no path type, and a path is the one value strictness would refuse as a string.
    canary: Annotated[Path | None, Field(strict=False)] = None
    probe_interval_seconds: float = Field(600.0, ge=0)  # also at start and after a reload; 0 = never
    agreement_tolerance: PositiveFloat = 0.05  # most mean |score difference| for sharing cached scores
    # Least Kendall tau-b with the reference for a provider on another scale to share once calibrated.
    min_rank_correlation: float = Field(0.9, ge=-1, le=1)
    shadow_rate: float = Field(0.0, ge=0, le=1)  # share of upstream scorings also sent to the next provider
    action: Literal["skip", "warn"] = "skip"  # a provider failing its canary: skipped, or only reported
    # Least share of (relevant, irrelevant) canary pairs a provider must order right in every
    # language of the canary to pass (gateway.quality.judge); 1.0 = every pair of every line.
    canary_pass_share: float = Field(0.9, gt=0, le=1)


# An alias that routes every model name no model claims here, for clients that send their own
# default (LlamaIndex `rerank-english-v3.0`, Haystack and the Cohere SDK `rerank-v3.5`). Off unless
# one model lists it; the name the client sent stays in the request log.
CATCH_ALL_ALIAS = "*"


class ModelConfig(_Section):
    aliases: list[str] = []  # other names clients may use; CATCH_ALL_ALIAS for every unclaimed name
    fallback: list[str] = Field(min_length=1)
    # Scores of different models are not comparable, so crossing to another model is opt-in.
    fallback_models: list[str] = []
    quality: QualityConfig = QualityConfig()
    # Long documents (gateway.scoring.shaping). Tokens are the gateway's estimate, characters ÷
    # chars_per_token: fixed per model, so one text is always cut the same way and cached as one pair.
    context_tokens: PositiveInt = 32_768  # query, instruction, template and document together (Qwen3-Reranker-8B)
    # None: what the context leaves after the query, the instruction and the template.
    max_tokens_per_document: PositiveInt | None = None
    long_documents: Literal["truncate", "chunk", "refuse"] = "truncate"
    chunk_tokens: PositiveInt | None = None  # a window's size; None: max_tokens_per_document's
    chunk_overlap_tokens: int = Field(128, ge=0)  # what consecutive windows share
    # Under 4 (English prose) on purpose: Russian and code take more tokens per character, and
    # an estimate that runs short sends pairs the host refuses.
    chars_per_token: PositiveFloat = 3.0
    # A list-wise model (Jina reranker v3) scores every document of a request in one context: its
    # requests go upstream whole (max_batch does not split them), are cached per whole request and
    # share a flight only with an identical one. A request over max_list_documents is refused.
    listwise: bool = False
    max_list_documents: PositiveInt = 100

    @model_validator(mode="after")
    def _windows_advance(self) -> ModelConfig:
        if self.chunk_tokens is not None and self.chunk_overlap_tokens >= self.chunk_tokens:
            raise ValueError(f"chunk_overlap_tokens ({self.chunk_overlap_tokens}) must be under "
                             f"chunk_tokens ({self.chunk_tokens}): each window must move on")
        if self.listwise and self.long_documents == "chunk":
            raise ValueError('long_documents = "chunk" cannot serve a listwise model: its windows would be '
                             "ranked against each other in one list; use \"truncate\" or \"refuse\"")
        return self


class TracingConfig(_Section):
    """OpenTelemetry traces (the `otel` extra); read at start, a reload does not change them."""

    enabled: bool | None = None  # None: on when the standard OTEL_* variables say so
    otlp_endpoint: str | None = None  # OTLP/HTTP base URL (…:4318); else OTEL_EXPORTER_OTLP_ENDPOINT
    service_name: str = "rerank-gateway"  # OTEL_SERVICE_NAME wins


# A client's or team's name becomes a metric label, a ledger scope and part of a Redis key.
CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE = "a name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"


class RateLimitsConfig(_Section):
    """A client's or team's rates; None = not limited. Per minute, across the fleet through Redis."""

    requests_per_minute: PositiveInt | None = None
    documents_per_minute: PositiveInt | None = None
    concurrent: PositiveInt | None = None  # requests in flight at once, per process


class TeamConfig(_Section):
    budget: BudgetConfig = BudgetConfig()
    limits: RateLimitsConfig = RateLimitsConfig()


class ClientSettings(_Section):
    """What a client may do, whether named in the config or created through POST /admin/clients."""

    team: str | None = None
    models: list[str] | None = None  # names or aliases it may use; None: every model
    budget: BudgetConfig = BudgetConfig()
    limits: RateLimitsConfig = RateLimitsConfig()


class ClientConfig(ClientSettings):
    key_env: str  # the env var holding this client's Bearer key


class GatewayConfig(_Section):
    server: ServerConfig = ServerConfig()
    cache: CacheConfig = CacheConfig()
    budget: GatewayBudgetConfig = GatewayBudgetConfig()  # gateway-wide, over every provider

    @property
    def ledger_url(self) -> str:
        """Where the spend ledger lives: [budget] url, else the cache's Redis; "" = in each process."""
        return self.cache.url if self.budget.url is None else self.budget.url
    resilience: ResilienceConfig = ResilienceConfig()
    models: dict[str, ModelConfig] = Field(min_length=1)
    tracing: TracingConfig = TracingConfig()
    providers: dict[str, ProviderConfig] = Field(min_length=1)
    # Once one client is named, every rerank request needs a client's key (gateway.clients).
    clients: dict[str, ClientConfig] = {}
    teams: dict[str, TeamConfig] = {}

    @model_validator(mode="after")
    def _references_resolve(self) -> GatewayConfig:
        for name, model in self.models.items():
            for provider in model.fallback:
                if provider not in self.providers:
                    raise ValueError(f"models.{name}.fallback: no provider named {provider!r}")
            for other in model.fallback_models:
                if other not in self.models or other == name:
                    raise ValueError(f"models.{name}.fallback_models: no other model named {other!r}")
        default = self.server.default_model
        if default is not None and default not in self.models:
            raise ValueError(f"server.default_model: no model named {default!r}")
        self._check_providers_serve_one_model()
        self._check_aliases_unique()
        self._check_clients()
        return self

    def _check_clients(self) -> None:
        for name in self.teams:
            if not CLIENT_NAME.fullmatch(name):
                raise ValueError(f"teams.{name}: {NAME_RULE}")
        for name, client in self.clients.items():
            problem = self.client_problem(name, client)
            if problem is not None:
                field, message = problem
                raise ValueError(f"clients.{name}{'.' + field if field else ''}: {message}")

    def client_problem(self, name: str, client: ClientSettings) -> tuple[str, str] | None:
        """What is wrong with a client of this name and settings here, as (field, message), the
        field "" for the name itself; None when nothing is."""
        if not CLIENT_NAME.fullmatch(name):
            return "", NAME_RULE
        if client.team is not None and client.team not in self.teams:
            return "team", f"no team named {client.team!r} (add [teams.{client.team}])"
        names = ModelNames(self)
        for model in client.models or ():
            if model == CATCH_ALL_ALIAS or names.exact(model) is None:
                return "models", f"{model!r} is no model name or alias here; models: {', '.join(sorted(self.models))}"
        return None

    def _check_providers_serve_one_model(self) -> None:
        # A provider entry names one upstream model; listing it under two models would label
        # one model's scores as another's.
        serving: dict[str, str] = {}
        for name, model in self.models.items():
            for provider in model.fallback:
                if serving.setdefault(provider, name) != name:
                    raise ValueError(
                        f"models.{name}.fallback: provider {provider!r} already serves model {serving[provider]!r}"
                    )

    def _check_aliases_unique(self) -> None:
        owner: dict[str, str] = {name: name for name in self.models}
        for name, model in self.models.items():
            for alias in model.aliases:
                if CATCH_ALL_ALIAS in alias and alias != CATCH_ALL_ALIAS:
                    raise ValueError(f"models.{name}.aliases: {alias!r}: names are matched whole; "
                                     f"only {CATCH_ALL_ALIAS!r} alone is special (every name no model claims)")
                if owner.setdefault(alias, name) != name:
                    raise ValueError(f"models.{name}.aliases: {alias!r} already names model {owner[alias]!r}")


class ModelNames:
    """Which model a name a client sends means: the model of that name, the one with that alias,
    else the one holding CATCH_ALL_ALIAS; None when no model takes it. The serving path and the
    CLI both resolve through this, so `--model` means what a request's `model` means."""

    def __init__(self, config: GatewayConfig) -> None:
        self._by_name = {name: name for name in config.models}
        for name, model in config.models.items():
            self._by_name.update(dict.fromkeys(model.aliases, name))

    def canonical(self, name: str) -> str | None:
        return self._by_name.get(name) or self._by_name.get(CATCH_ALL_ALIAS)

    def exact(self, name: str) -> str | None:
        """The model this name or alias names itself, not through the catch-all alias."""
        return self._by_name.get(name)


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str) -> str:
    """`${NAME}` and `${NAME:-default}` replaced from the environment; an unset NAME without default is an error."""

    def value(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name)
        if found:
            return found
        if default is None:
            raise ValueError(f"${{{name}}} is not set and has no default (write ${{{name}:-DEFAULT}})")
        return default

    return _ENV_REFERENCE.sub(value, text)


def config_file(path: str | os.PathLike[str] | None = None) -> Path:
    """The file config is read from: --config, else $GATEWAY_CONFIG, else ./config.toml."""
    return Path(path or os.environ.get("GATEWAY_CONFIG") or DEFAULT_CONFIG_PATH)


def load_config(path: str | os.PathLike[str] | None = None) -> GatewayConfig:
    """Read and validate config: --config, else $GATEWAY_CONFIG, else ./config.toml."""
    source, raw = read_config_file(path)
    config = resolve_canaries(parse_config(raw, source=source), Path(source).parent, source=source)
    for warning in price_warnings(config):
        log.warning("%s: %s", source, warning)
    return config


def price_warnings(config: GatewayConfig) -> list[str]:
    """Prices implausible for the unit they are read in: US dollars per million tokens."""
    return [
        f"providers.{name}.price_per_million_tokens = {provider.price_per_million_tokens:g} is read as US dollars "
        f"per million tokens (above ${PLAUSIBLE_PRICE_PER_MILLION_USD:g} per million is implausible for a "
        "reranker): was it written per thousand tokens or per call? Budgets and spend use it as written"
        for name, provider in config.providers.items()
        if provider.price_per_million_tokens > PLAUSIBLE_PRICE_PER_MILLION_USD
    ]


def load_server_section(path: str | os.PathLike[str] | None = None) -> ServerConfig:
    """Only `[server]`: enough to reach a running gateway even when the rest of the file is broken."""
    source, raw = read_config_file(path)
    try:
        return ServerConfig.model_validate(raw.get("server", {}))
    except ValidationError as exc:
        raise ConfigError(f"{source}: [server]: {describe_validation_error(exc)}") from None


def read_config_file(path: str | os.PathLike[str] | None = None) -> tuple[str, dict[str, Any]]:
    """The file's name and its TOML, unvalidated: --config, else $GATEWAY_CONFIG, else ./config.toml."""
    named = path or os.environ.get("GATEWAY_CONFIG")
    resolved = config_file(path)
    try:
        return str(resolved), tomllib.loads(resolved.read_text(encoding="utf-8"))
    except FileNotFoundError:
        hint = "" if named else " (pass --config PATH or set GATEWAY_CONFIG; examples/emulator.toml runs against the local emulator)"
        raise ConfigError(f"{resolved}: no such file{hint}") from None
    except OSError as exc:
        raise ConfigError(f"{resolved}: cannot read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{resolved}: not valid TOML: {exc}") from None


def resolve_canaries(config: GatewayConfig, base: Path, source: str = "config") -> GatewayConfig:
    """Canary paths made relative to `base` (the config file's folder) and checked to load, so a
    broken canary stops the gateway at start or reload like any other bad key."""
    models = dict(config.models)
    for name, model in config.models.items():
        canary = model.quality.canary
        if canary is None:
            continue
        resolved = base / canary  # an absolute canary path stays as it is
        try:
            load_canary(resolved)
        except CanaryError as exc:
            raise ConfigError(f"{source}: models.{name}.quality.canary: {exc}") from None
        quality = model.quality.model_copy(update={"canary": resolved})
        models[name] = model.model_copy(update={"quality": quality})
    return config.model_copy(update={"models": models})


def parse_config(raw: dict[str, Any], source: str = "config") -> GatewayConfig:
    """Validate a config mapping, applying environment overrides ($REDIS_URL, $LEDGER_REDIS_URL)."""
    redis_url = os.environ.get("REDIS_URL")
    if redis_url:
        raw = {**raw, "cache": {**raw.get("cache", {}), "url": redis_url}}
    ledger_url = os.environ.get("LEDGER_REDIS_URL")
    if ledger_url:
        raw = {**raw, "budget": {**raw.get("budget", {}), "url": ledger_url}}
    try:
        return GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc)}") from None


def describe_validation_error(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            message = unknown_key_message(error["loc"])
        elif error["type"] == "literal_error":
            message = f"{error['input']!r} is not one of {error['ctx']['expected']}"
        else:
            message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


def unknown_key_message(loc: Sequence[int | str]) -> str:
    """`unknown key 'fallbak'; did you mean 'fallback'?`, from the keys the section does take."""
    key = str(loc[-1])
    section = _section_at(loc[:-1])
    known = sorted(section.model_fields) if section is not None else []
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f"unknown key {key!r}; did you mean {close[0]!r}?"
    return f"unknown key {key!r}; known keys: {', '.join(known)}" if known else f"unknown key {key!r}"


def _section_at(loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The config model a location points into: ('models', 'NAME') -> ModelConfig."""
    current: Any = GatewayConfig
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        else:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None

"""rerank-gateway serve | check-config | emulate | eval.

click rather than argparse: subcommands, env-var defaults and clean usage errors come with it.
"""

from __future__ import annotations

import logging
import os
import sys

import click
from aiohttp import web

from gateway.config import DEFAULT_CONFIG_PATH, ConfigError, GatewayConfig, load_config
from gateway.observability.logs import configure_logging
from gateway.providers.client import ProviderClient

_CONFIG_HELP = "config file (default: $GATEWAY_CONFIG, else ./config.toml)"


@click.group()
def main() -> None:
    """A rerank gateway: every rerank wire format in, any configured provider out."""


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=_CONFIG_HELP)
@click.option("--host", help="address to listen on (default: server.host)")
@click.option("--port", type=int, help="port to listen on (default: server.port)")
@click.option("--workers", type=int, default=None,
              help="processes on one port (default: the number of cores with Redis, 1 without)")
@click.option("--reuse-port", is_flag=True, hidden=True, help="bind with SO_REUSEPORT (set for workers)")
def serve(config_path: str | None, host: str | None, port: int | None, workers: int | None, reuse_port: bool) -> None:
    """Run the gateway."""
    config = _load_or_exit(config_path)
    configure_logging(config.server.log_level, config.server.log_format)
    host = host or config.server.host
    port = config.server.port if port is None else port
    count = _worker_count(workers, shared_state=bool(config.cache.url))
    if count > 1:
        from gateway.workers import Supervisor

        args = ["--host", host, "--port", str(port), "--workers", "1", "--reuse-port"]
        if config_path:
            args += ["--config", config_path]
        sys.exit(Supervisor(args, count, config.server.shutdown_grace_seconds).run())
    _serve_one(config, config_path, host, port, reuse_port)


def _worker_count(asked: int | None, shared_state: bool) -> int:
    """Workers to run: cache and budgets live in one process unless Redis shares them."""
    if asked is not None and asked < 1:
        raise click.BadParameter("must be at least 1", param_hint="--workers")
    if asked is None:
        return (os.cpu_count() or 1) if shared_state else 1
    if asked > 1 and not shared_state:
        logging.getLogger("gateway").warning(
            "%d workers without Redis: each worker keeps its own score cache and spend ledger, so "
            "budgets hold per worker (together up to %d times each limit); set [cache] url to share them",
            asked, asked,
        )
    return asked


def _serve_one(config: GatewayConfig, config_path: str | None, host: str, port: int, reuse_port: bool) -> None:
    from gateway.app import create_app

    for line in describe_providers(config):
        logging.getLogger("gateway").info(line)
    web.run_app(
        create_app(config, config_path=config_path or os.environ.get("GATEWAY_CONFIG") or DEFAULT_CONFIG_PATH),
        host=host,
        port=port,
        reuse_port=reuse_port or None,
        access_log=None,
        # On SIGTERM aiohttp stops accepting, lets requests in flight finish within this grace,
        # then runs the app's cleanup, which closes the upstream sessions and Redis.
        shutdown_timeout=config.server.shutdown_grace_seconds,
        print=lambda _: logging.getLogger("gateway").info("rerank-gateway serving on http://%s:%s", host, port),
    )


@main.command("check-config")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=_CONFIG_HELP)
def check_config(config_path: str | None) -> None:
    """Validate the config and say which providers each model can use."""
    config = _load_or_exit(config_path)
    lines = describe_providers(config)
    click.echo("\n".join(lines))
    unserved = [line for line in lines if line.startswith("model ") and line.endswith("NO USABLE PROVIDER")]
    sys.exit(1 if unserved else 0)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=9000, show_default=True)
@click.option("--latency-ms", type=float, default=0.0, show_default=True, help="added latency per request")
@click.option("--jitter-ms", type=float, default=0.0, show_default=True, help="uniform extra latency")
@click.option("--api-key", default=None, help="require this bearer key (default: accept any)")
def emulate(host: str, port: int, latency_ms: float, jitter_ms: float, api_key: str | None) -> None:
    """Serve local stand-ins of the DeepInfra, Fireworks, Cohere and TEI rerank APIs."""
    from gateway.emulator import EmulatorConfig, create_emulator_app

    app = create_emulator_app(EmulatorConfig(latency_ms=latency_ms, jitter_ms=jitter_ms, api_key=api_key))
    web.run_app(app, host=host, port=port, access_log=None, print=lambda _: click.echo(f"emulator on http://{host}:{port}"))


@main.command("eval")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=_CONFIG_HELP)
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="labelled set in the BEIR layout (corpus.jsonl, queries.jsonl, qrels)")
@click.option("--model", default=None, help="model name or alias (default: server.default_model)")
@click.option("--k", type=click.IntRange(min=1), default=10, show_default=True, help="cut-off of NDCG and MRR")
@click.option("--candidates", type=click.IntRange(min=1), default=40, show_default=True,
              help="BM25 candidates per query when DIR has no candidates.jsonl")
@click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True,
              help="queries in flight per provider")
@click.option("--out", type=click.Path(dir_okay=False), help="also write the report as JSON here")
def eval_command(config_path: str | None, data_dir: str, model: str | None, k: int, candidates: int,
                 concurrency: int, out: str | None) -> None:
    """Rank a labelled set with every usable provider of a model, beside BM25, and compare."""
    import asyncio

    import orjson

    from gateway.evaluation.beir import DatasetError, load_beir
    from gateway.evaluation.run import EvalSettings, evaluate
    from gateway.evaluation.table import format_report

    config = _load_or_exit(config_path)
    model_name = _model_or_exit(config, model)
    try:
        dataset = load_beir(data_dir)
    except DatasetError as exc:
        click.echo(f"invalid data: {exc}", err=True)
        sys.exit(2)
    settings = EvalSettings(k=k, candidates=candidates, concurrency=concurrency)
    total = len(dataset.judged_queries()) * len(config.models[model_name].fallback)
    with click.progressbar(length=total, label="scoring", file=sys.stderr) as bar:
        report = asyncio.run(evaluate(config, model_name, dataset, settings, bar.update))
    click.echo(format_report(report))
    if out:
        with open(out, "wb") as file:
            file.write(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    sys.exit(0 if report["reference"] is not None else 1)


def _model_or_exit(config: GatewayConfig, asked: str | None) -> str:
    """The canonical name of the model asked for by name or alias, else the default one."""
    names = {name: name for name in config.models}
    names.update({alias: name for name, model in config.models.items() for alias in model.aliases})
    if asked is None:
        asked = config.server.default_model or (next(iter(config.models)) if len(config.models) == 1 else None)
        if asked is None:
            click.echo(f"several models and no server.default_model: pass --model ({', '.join(config.models)})", err=True)
            sys.exit(2)
    if asked not in names:
        click.echo(f"no model {asked!r}; models: {', '.join(config.models)}", err=True)
        sys.exit(2)
    return names[asked]


def describe_providers(config: GatewayConfig) -> list[str]:
    """One line per model and per provider in its fallback order, saying what is usable."""
    lines = [_client_auth_line(config)]
    for name, model in config.models.items():
        states = []
        for provider in model.fallback:
            reason = ProviderClient(provider, config.providers[provider]).unusable_reason(None)
            states.append((provider, reason))
        usable = [provider for provider, reason in states if reason is None]
        summary = f"uses {', '.join(usable)}" if usable else "NO USABLE PROVIDER"
        lines.append(f"model {name}: {summary}")
        for provider, reason in states:
            lines.append(f"  {provider}: {'ok' if reason is None else 'skipped: ' + reason}")
    return lines


def _client_auth_line(config: GatewayConfig) -> str:
    keys_env = config.server.api_keys_env
    if keys_env is None:
        return "client auth: off (any client that reaches the gateway may rerank)"
    count = len(config.server.client_keys())
    if count == 0:
        return f"client auth: ON but ${keys_env} holds no key: every rerank request will get 401"
    return f"client auth: on, {count} key(s) in ${keys_env}"


def _load_or_exit(config_path: str | None) -> GatewayConfig:
    try:
        return load_config(config_path)
    except ConfigError as exc:
        click.echo(f"invalid config: {exc}", err=True)
        sys.exit(2)

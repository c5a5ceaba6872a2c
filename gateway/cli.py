"""rerank-gateway serve | check-config | emulate.

click rather than argparse: subcommands, env-var defaults and clean usage errors come with it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click
from aiohttp import web

from gateway.config import DEFAULT_CONFIG_PATH, ConfigError, GatewayConfig, load_config
from gateway.observability.logs import configure_logging
from gateway.providers.client import ProviderClient
from gateway.secrets import Secrets

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
@click.option("--report-fd", type=int, hidden=True, help="pipe to tell the supervisor 'ready' or why not (workers)")
def serve(
    config_path: str | None, host: str | None, port: int | None, workers: int | None, reuse_port: bool,
    report_fd: int | None,
) -> None:
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
        sys.exit(Supervisor(args, count, config.server.shutdown_grace_seconds, f"http://{host}:{port}").run())
    _serve_one(config, config_path, host, port, reuse_port, StartupReport(report_fd))


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


def _serve_one(
    config: GatewayConfig, config_path: str | None, host: str, port: int, reuse_port: bool, report: StartupReport
) -> None:
    from gateway.app import create_app

    for line in describe_providers(config):
        logging.getLogger("gateway").info(line)

    def ready() -> None:
        logging.getLogger("gateway").info("rerank-gateway serving on http://%s:%s", host, port)

    run_until_stopped(
        create_app(config, config_path=config_path or os.environ.get("GATEWAY_CONFIG") or DEFAULT_CONFIG_PATH),
        host, port, report, ready,
        reuse_port=reuse_port or None,
        access_log=None,
        # On SIGTERM aiohttp stops accepting, lets requests in flight finish within this grace,
        # then runs the app's cleanup, which closes the upstream sessions and Redis.
        shutdown_timeout=config.server.shutdown_grace_seconds,
    )


class StartupReport:
    """How a process that could not start says so: one line, and no traceback.

    A worker writes to its supervisor's pipe (which prints the line once for all workers);
    a process on its own writes to stderr.
    """

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    def ready(self) -> None:
        if self._fd is not None:
            from gateway.workers import READY

            os.write(self._fd, READY + b"\n")

    def failed(self, line: str) -> NoReturn:
        if self._fd is None:
            click.echo(f"rerank-gateway: {line}", err=True)
            sys.exit(1)
        from gateway.workers import FAILED, STARTUP_FAILED_EXIT

        os.write(self._fd, FAILED + line.encode() + b"\n")
        sys.exit(STARTUP_FAILED_EXIT)


def run_until_stopped(
    app: web.Application, host: str, port: int, report: StartupReport, ready: Callable[[], None], **options: Any
) -> None:
    """web.run_app until SIGTERM/SIGINT; failing to start (the port taken, say) is one line."""
    serving = False

    def on_serving(_: str) -> None:
        nonlocal serving
        serving = True
        ready()
        report.ready()

    try:
        web.run_app(app, host=host, port=port, print=on_serving, **options)
    except Exception as exc:
        if serving:
            raise  # a crash while serving is a bug: keep its traceback
        report.failed(f"cannot serve on http://{host}:{port}: {describe_startup_error(exc)}")


def describe_startup_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno).lower()  # "address already in use", without the bind tuple
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


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
    run_until_stopped(app, host, port, StartupReport(None), lambda: click.echo(f"emulator on http://{host}:{port}"),
                      access_log=None)


def describe_providers(config: GatewayConfig) -> list[str]:
    """One line per model and per provider in its fallback order, saying what is usable."""
    secrets = Secrets.resolve(config)
    lines = [_client_auth_line(config, secrets)]
    for name, model in config.models.items():
        states = []
        for provider in model.fallback:
            client = ProviderClient(provider, config.providers[provider], secrets.provider_keys[provider])
            states.append((provider, client.unusable_reason(None)))
        usable = [provider for provider, reason in states if reason is None]
        summary = f"uses {', '.join(usable)}" if usable else "NO USABLE PROVIDER"
        lines.append(f"model {name}: {summary}")
        for provider, reason in states:
            lines.append(f"  {provider}: {'ok' if reason is None else 'skipped: ' + reason}")
    return lines


def _client_auth_line(config: GatewayConfig, secrets: Secrets) -> str:
    keys_env = config.server.api_keys_env
    if keys_env is None:
        return "client auth: off (any client that reaches the gateway may rerank)"
    count = len(secrets.client_keys)
    if count == 0:
        return f"client auth: ON but ${keys_env} holds no key: every rerank request will get 401"
    return f"client auth: on, {count} key(s) in ${keys_env}"


def _load_or_exit(config_path: str | None) -> GatewayConfig:
    try:
        return load_config(config_path)
    except ConfigError as exc:
        click.echo(f"invalid config: {exc}", err=True)
        sys.exit(2)

"""rerank-gateway serve | check-config | reload | spend | emulate | eval.

click rather than argparse: subcommands, env-var defaults and clean usage errors come with it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import click
import orjson
from aiohttp import web

from gateway.config import (
    ConfigError,
    GatewayConfig,
    ModelNames,
    config_file,
    load_config,
    load_server_section,
)
from gateway.observability.logs import configure_logging
from gateway.providers.client import build_clients
from gateway.providers.route import WARNING, describe_route
from gateway.secrets import Secrets, read_env

if TYPE_CHECKING:
    from gateway.runtime import FileSignature

_CONFIG_HELP = "config file (default: $GATEWAY_CONFIG, else ./config.toml)"
NO_USABLE_PROVIDER = "NO USABLE PROVIDER"


@click.group()
@click.version_option(package_name="rerank-gateway", message="rerank-gateway %(version)s")
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
    # A reload asked while the gateway starts waits until it can be done, instead of killing the
    # process (SIGHUP's default): gateway.app unblocks it once its handler is in place, and the
    # supervisor once it forwards reloads to its workers.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    from gateway.runtime import file_signature

    # Before reading it: an edit made while the gateway starts is then seen by the first reload.
    signature = file_signature(config_file(config_path))
    config = _load_or_exit(config_path)
    configure_logging(config.server.log_level, config.server.log_format)
    _raise_open_files_limit(quiet=reuse_port)  # workers inherit what their supervisor raised
    host = host or config.server.host
    port = config.server.port if port is None else port
    count = _worker_count(workers, shared_state=bool(config.cache.url))
    if count > 1:
        from gateway.process.workers import Supervisor

        args = ["--host", host, "--port", str(port), "--workers", "1", "--reuse-port"]
        if config_path:
            args += ["--config", config_path]
        sys.exit(Supervisor(args, count, config.server.shutdown_grace_seconds, host, port).run())
    _serve_one(config, config_path, signature, host, port, reuse_port, StartupReport(report_fd))


def _raise_open_files_limit(quiet: bool) -> None:
    from gateway.process.server import raise_open_files_limit

    before, after = raise_open_files_limit()
    if not quiet:
        if after > before:
            logging.getLogger("gateway").info("open files limit raised from %d to %d (the hard limit)", before, after)
        else:
            logging.getLogger("gateway").info("open files limit: %d", after)


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
    config: GatewayConfig, config_path: str | None, signature: FileSignature, host: str, port: int, reuse_port: bool,
    report: StartupReport,
) -> None:
    from gateway.app import create_app
    from gateway.process.server import ConnectionLimits, client_descriptors_for, run_gateway
    from gateway.web.edge import LIVE

    try:
        lines = describe_providers(config)
    except ConfigError as exc:  # a ca_file or client certificate that does not load
        report.failed(f"invalid config: {exc}")
    for line in lines:
        # A model nobody can serve answers every request with 502: say so above the info lines.
        level = logging.WARNING if line.endswith(NO_USABLE_PROVIDER) or line.startswith(WARNING) else logging.INFO
        logging.getLogger("gateway").log(level, line)

    client_descriptors = client_descriptors_for(sum(provider.max_connections for provider in config.providers.values()))

    def ready() -> None:
        logging.getLogger("gateway").info("rerank-gateway serving on http://%s:%s (client connections held at once: %s)",
                                          host, port, client_descriptors or "unbounded")

    app = create_app(config, config_path=config_file(config_path), config_signature=signature,
                     on_admin_reload=report.reloaded)

    def serve(announce: Callable[[], None]) -> None:
        # run_gateway rather than web.run_app: the same loop and signals, but requests aiohttp's
        # parser refuses get the gateway's JSON error too (see gateway/process/server.py).
        run_gateway(
            app, host=host, port=port, reuse_port=reuse_port,
            # On SIGTERM aiohttp stops accepting, lets requests in flight finish within this grace,
            # then runs the app's cleanup, which closes the upstream connections and Redis.
            shutdown_timeout=config.server.shutdown_grace_seconds,
            limits=ConnectionLimits(config.server.keepalive_timeout_seconds, config.server.header_timeout_seconds,
                                    client_descriptors),
            on_accept_error=app[LIVE].shared.metrics.record_accept_error,
            announce=announce,
        )

    run_until_stopped(serve, f"http://{host}:{port}", report, ready)


class StartupReport:
    """How a process that could not start says so: one line, and no traceback.

    A worker writes to its supervisor's pipe (which prints the line once for all workers);
    a process on its own writes to stderr.
    """

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    def ready(self) -> None:
        if self._fd is not None:
            from gateway.process.workers import READY

            os.write(self._fd, READY + b"\n")

    def reloaded(self) -> None:
        """After /admin/reload: the supervisor reloads the other workers (alone: nothing to do)."""
        if self._fd is not None:
            from gateway.process.workers import RELOADED

            os.write(self._fd, RELOADED + b"\n")

    def failed(self, line: str) -> NoReturn:
        if self._fd is None:
            click.echo(f"rerank-gateway: {line}", err=True)
            sys.exit(1)
        from gateway.process.workers import FAILED, STARTUP_FAILED_EXIT

        os.write(self._fd, FAILED + line.encode() + b"\n")
        sys.exit(STARTUP_FAILED_EXIT)


def run_until_stopped(
    serve: Callable[[Callable[[], None]], None], address: str, report: StartupReport, ready: Callable[[], None]
) -> None:
    """serve(announce) until SIGTERM/SIGINT; failing to start (the port taken, say) is one line.

    `serve` calls `announce` once it listens: what fails before that is a start-up failure.
    """
    serving = False

    def on_serving() -> None:
        nonlocal serving
        serving = True
        ready()
        report.ready()

    try:
        serve(on_serving)
    except Exception as exc:
        if serving:
            raise  # a crash while serving is a bug: keep its traceback
        report.failed(f"cannot serve on {address}: {describe_startup_error(exc)}")


def describe_startup_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno).lower()  # "address already in use", without the bind tuple
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@main.command("check-config")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=_CONFIG_HELP)
def check_config(config_path: str | None) -> None:
    """Validate the config and say which providers each model can use."""
    config = _load_or_exit(config_path)
    try:
        lines = describe_providers(config)
    except ConfigError as exc:  # a ca_file or client certificate that does not load
        click.echo(f"invalid config: {exc}", err=True)
        sys.exit(2)
    click.echo("\n".join(lines))
    unserved = [line for line in lines if line.startswith("model ") and line.endswith(NO_USABLE_PROVIDER)]
    sys.exit(1 if unserved else 0)


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=_CONFIG_HELP)
@click.option("--url", help="the gateway's base URL (default: http://server.host:server.port from the config)")
def reload(config_path: str | None, url: str | None) -> None:
    """Make the gateway that serves this config reload it, through POST /admin/reload.

    It reaches exactly the gateway on the config's address (unlike a signal sent by process
    name) and prints its answer, including why a broken file was refused.
    """
    base, key = _admin_target(config_path, url, "cannot reload", "; send SIGHUP to the gateway instead")
    status, answer = _admin_call("POST", f"{base}/admin/reload", key)
    click.echo(answer)
    sys.exit(0 if status == 200 else 1)


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=_CONFIG_HELP)
@click.option("--url", help="the gateway's base URL (default: http://server.host:server.port from the config)")
@click.option("--json", "as_json", is_flag=True, help="print GET /admin/spend's answer as it came")
@click.option("--by", type=click.Choice(["provider", "client", "team"]), default="provider", show_default=True,
              help="one row per provider, per client (with its team) or per team")
def spend(config_path: str | None, url: str | None, as_json: bool, by: str) -> None:
    """Show what the gateway spent today and this month, through GET /admin/spend.

    Per provider and gateway-wide: billed tokens and USD, split into what providers reported and
    what the gateway estimated for answers without usage; and whether the figures are the shared
    ledger's or one process's (while the ledger's Redis is away), with what awaits write-back.
    """
    from gateway.web.spend_table import format_spend

    base, key = _admin_target(config_path, url, "cannot read spend")
    status, answer = _admin_call("GET", f"{base}/admin/spend", key)
    if status != 200 or as_json:
        click.echo(answer, err=status != 200)
        sys.exit(0 if status == 200 else 1)
    click.echo(format_spend(orjson.loads(answer), by))  # type: ignore[arg-type]  # click's Choice checked it


_URL_HELP = "the gateway's base URL (default: http://server.host:server.port from the config)"


@main.group()
def clients() -> None:
    """Create, list, revoke and rotate clients at run time, through /admin/clients.

    A created client's key is printed once, by create and rotate; the gateway keeps only its hash.
    """


def _client_admin_options(command: Callable[..., None]) -> Callable[..., None]:
    command = click.option("--url", help=_URL_HELP)(command)
    return click.option("--config", "config_path", type=click.Path(dir_okay=False), help=_CONFIG_HELP)(command)


@clients.command("create")
@click.argument("name")
@click.option("--team", help="a [teams.NAME] of the config")
@click.option("--model", "models", multiple=True, help="a model name or alias it may use (repeat; default: all)")
@click.option("--daily-usd", type=float)
@click.option("--monthly-usd", type=float)
@click.option("--requests-per-minute", type=int)
@click.option("--documents-per-minute", type=int)
@click.option("--concurrent", type=int)
@_client_admin_options
def create_client(config_path: str | None, url: str | None, name: str, team: str | None, models: tuple[str, ...],
                  daily_usd: float | None, monthly_usd: float | None, requests_per_minute: int | None,
                  documents_per_minute: int | None, concurrent: int | None) -> None:
    """Create client NAME and print its key (shown this once)."""
    body: dict[str, Any] = {"name": name, "team": team, "models": list(models) or None,
                            "budget": {"daily_usd": daily_usd, "monthly_usd": monthly_usd},
                            "limits": {"requests_per_minute": requests_per_minute,
                                       "documents_per_minute": documents_per_minute, "concurrent": concurrent}}
    _client_call(config_path, url, "POST", "/admin/clients", body)


@clients.command("list")
@_client_admin_options
def list_clients(config_path: str | None, url: str | None) -> None:
    """Every client: its team, models, budget, limits and spend; never a key."""
    _client_call(config_path, url, "GET", "/admin/clients")


@clients.command("revoke")
@click.argument("name")
@_client_admin_options
def revoke_client(config_path: str | None, url: str | None, name: str) -> None:
    """Revoke created client NAME: its key is refused everywhere within a second."""
    _client_call(config_path, url, "DELETE", f"/admin/clients/{urllib.parse.quote(name, safe='')}")


@clients.command("rotate")
@click.argument("name")
@click.option("--grace-seconds", type=float, default=0.0, show_default=True,
              help="how long the old key keeps working")
@_client_admin_options
def rotate_client(config_path: str | None, url: str | None, name: str, grace_seconds: float) -> None:
    """Give created client NAME a new key (printed once)."""
    _client_call(config_path, url, "POST", f"/admin/clients/{urllib.parse.quote(name, safe='')}/rotate",
                 {"grace_seconds": grace_seconds})


def _client_call(config_path: str | None, url: str | None, method: str, path: str,
                 body: dict[str, Any] | None = None) -> None:
    base, key = _admin_target(config_path, url, "cannot manage clients")
    status, answer = _admin_call(method, f"{base}{path}", key, body)
    if answer:
        click.echo(answer, err=not 200 <= status < 300)
    sys.exit(0 if 200 <= status < 300 else 1)


def _admin_target(config_path: str | None, url: str | None, what: str, hint: str = "") -> tuple[str, str]:
    """The gateway's base URL and the admin key, from the config's [server] alone: a file the
    gateway would refuse must still reach it, to hear why."""
    try:
        server = load_server_section(config_path)
    except ConfigError as exc:
        click.echo(f"invalid config: {exc}", err=True)
        sys.exit(2)
    key = _admin_key_or_exit(server.admin_key_env, what, hint)
    return (url or _local_url(server.host, server.port)).rstrip("/"), key


def _admin_key_or_exit(admin_env: str | None, what: str, hint: str = "") -> str:
    key = read_env(admin_env)
    if key is None:
        where = f"${admin_env} is empty or not set" if admin_env else "[server] admin_key_env is not set"
        click.echo(f"{what}: the admin endpoints are off ({where}){hint}", err=True)
        sys.exit(2)
    return key


def _local_url(host: str, port: int) -> str:
    # A gateway listening on every address is reached on the loopback one.
    reachable = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    return f"http://[{reachable}]:{port}" if ":" in reachable else f"http://{reachable}:{port}"


def _admin_call(method: str, url: str, key: str, body: dict[str, Any] | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {key}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, method=method, headers=headers,
                                     data=None if body is None else orjson.dumps(body))
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return 0, orjson.dumps({"error": {"type": "unreachable", "message": f"no gateway at {url}: {reason}"}}).decode()


def _fault_modes_help() -> str:
    from gateway.emulator import FAULT_MODE_HELP

    modes = "\n".join(f"  {mode:<17}{said}" for mode, said in FAULT_MODE_HELP.items())
    # \b keeps click from re-flowing the example and the list into one paragraph.
    return (
        "Fault injection: POST /_emulator/faults with a JSON object: provider (deepinfra, fireworks, cohere, "
        "tei or *), mode, and count (the calls it applies to; omitted: until cleared). "
        "DELETE /_emulator/faults clears them; GET /_emulator/stats counts the calls.\n\n"
        "\b\n  curl -s localhost:9000/_emulator/faults -d '{\"provider\": \"deepinfra\", \"mode\": \"status\", "
        "\"status\": 403}'\n\n\b\nModes:\n" + modes
    )


@main.command(epilog=_fault_modes_help())
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=9000, show_default=True, envvar="EMULATOR_PORT",
              help="port to listen on ($EMULATOR_PORT; examples/emulator.toml reads the same variable)")
@click.option("--latency-ms", type=float, default=0.0, show_default=True, help="added latency per request")
@click.option("--jitter-ms", type=float, default=0.0, show_default=True, help="uniform extra latency")
@click.option("--api-key", default=None, help="require this bearer key (default: accept any)")
@click.option("--context-tokens", type=int, default=32_768, show_default=True,
              help="a longer (query, document) pair is refused as hosts do (TEI with truncate: cut); 0 = no limit")
def emulate(host: str, port: int, latency_ms: float, jitter_ms: float, api_key: str | None, context_tokens: int) -> None:
    """Serve local stand-ins of the DeepInfra, Fireworks, Cohere and TEI rerank APIs."""
    from gateway.emulator import EmulatorConfig, create_emulator_app

    app = create_emulator_app(EmulatorConfig(latency_ms=latency_ms, jitter_ms=jitter_ms, api_key=api_key,
                                             context_tokens=context_tokens or None))

    def serve(announce: Callable[[], None]) -> None:
        web.run_app(app, host=host, port=port, access_log=None, print=lambda _: announce())

    run_until_stopped(serve, f"http://{host}:{port}", StartupReport(None), lambda: click.echo(f"emulator on http://{host}:{port}"))


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
@click.option("--ndcg-margin", type=click.FloatRange(min=0), default=0.02, show_default=True,
              help="recommend the cheapest fallback among providers this close to the best NDCG@k")
@click.option("--out", type=click.Path(dir_okay=False), help="also write the report as JSON here")
@click.option("--html", "html_out", type=click.Path(dir_okay=False),
              help="also write the report as one self-contained HTML file with its charts")
def eval_command(config_path: str | None, data_dir: str, model: str | None, k: int, candidates: int,
                 concurrency: int, ndcg_margin: float, out: str | None, html_out: str | None) -> None:
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
    settings = EvalSettings(k=k, candidates=candidates, concurrency=concurrency, ndcg_margin=ndcg_margin)
    total = len(dataset.judged_queries()) * len(config.models[model_name].fallback)
    from gateway.app import build_ledger

    async def billed_run(progress: Callable[[int], None]) -> dict[str, Any]:
        ledger = build_ledger(config)  # the gateway's own: an eval spends the budgets traffic does
        await ledger.start()
        try:
            return await evaluate(config, model_name, dataset, settings, progress, ledger)
        finally:
            await ledger.close()

    with click.progressbar(length=total, label="scoring", file=sys.stderr) as bar:
        report = asyncio.run(billed_run(bar.update))
    click.echo(format_report(report))
    if out:
        with open(out, "wb") as file:
            file.write(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    if html_out:
        from gateway.evaluation.html import render_report_html

        with open(html_out, "w", encoding="utf-8") as page:
            page.write(render_report_html(report))
    sys.exit(0 if report["reference"] is not None else 1)


def _model_or_exit(config: GatewayConfig, asked: str | None) -> str:
    """The canonical name of the model asked for, as a request naming it is served, else the default one."""
    if asked is None:
        asked = config.server.default_model or (next(iter(config.models)) if len(config.models) == 1 else None)
        if asked is None:
            click.echo(f"several models and no server.default_model: pass --model ({', '.join(config.models)})", err=True)
            sys.exit(2)
    model = ModelNames(config).canonical(asked)
    if model is None:
        click.echo(f"no model {asked!r}; models: {', '.join(config.models)}", err=True)
        sys.exit(2)
    return model


def describe_providers(config: GatewayConfig) -> list[str]:
    """One line per model and per provider in its fallback order, saying what is usable."""
    secrets = Secrets.resolve(config)
    clients = build_clients(config, secrets)
    lines = [_client_auth_line(config, secrets)]
    for name, model in config.models.items():
        states = [(provider, clients[provider].unusable_reason(None)) for provider in model.fallback]
        usable = [provider for provider, reason in states if reason is None]
        summary = f"uses {', '.join(usable)}" if usable else NO_USABLE_PROVIDER
        lines.append(f"model {name}: {summary}")
        for provider, reason in states:
            lines.append(f"  {provider}: {'ok' if reason is None else 'skipped: ' + reason}")
    for name, client in clients.items():
        lines += describe_route(name, client.config, client.url, client.proxy, secrets.provider_keys[name] is not None)
    return lines


def _client_auth_line(config: GatewayConfig, secrets: Secrets) -> str:
    keys_env = config.server.api_keys_env
    if keys_env is None and not config.clients:
        return "client auth: off (any client that reaches the gateway may rerank)"
    count = len(secrets.client_digests)
    if count == 0:
        return "client auth: ON but no client key is set: every rerank request will get 401"
    unset = f"; key unset for clients {', '.join(secrets.clients_without_key)}" if secrets.clients_without_key else ""
    return f"client auth: on, {count} key(s) ({len(config.clients)} named client(s)){unset}"


def _load_or_exit(config_path: str | None) -> GatewayConfig:
    try:
        return load_config(config_path)
    except ConfigError as exc:
        click.echo(f"invalid config: {exc}", err=True)
        sys.exit(2)

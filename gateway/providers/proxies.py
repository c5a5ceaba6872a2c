"""Which proxy a provider's calls go through: its `proxy` key, else the environment, as curl reads it.

`proxy = ""` goes direct whatever the environment says; no key: `https_proxy` / `HTTPS_PROXY`
for an https provider, `http_proxy` / `HTTP_PROXY` for http (lower case first, as curl and
urllib take them), unless `no_proxy` / `NO_PROXY` names the host. Decided once per provider
at start, so no call reads the environment. Credentials in the proxy URL become a
Proxy-Authorization header and are masked wherever the route is shown.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp
from yarl import URL


@dataclass(frozen=True, slots=True)
class ProxyRoute:
    url: URL  # without credentials
    shown: str  # the URL as set, password masked, and where it came from: for logs and check-config
    headers: Mapping[str, str] = field(default_factory=dict)  # Proxy-Authorization, when it has credentials


def proxy_route(target: str, configured: str | None, environ: Mapping[str, str]) -> ProxyRoute | None:
    """The proxy for calls to `target`, or None: direct."""
    if configured is not None:
        return _route(configured, "config") if configured else None
    url = URL(target)
    scheme = url.scheme
    names = [f"{scheme}_proxy", f"{scheme.upper()}_PROXY"]
    found = next(((name, environ[name]) for name in names if environ.get(name)), None)
    if found is None:
        return None
    no_proxy = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
    if url.host is not None and bypassed(url.host, url.port, no_proxy):
        return None
    name, value = found
    return _route(value, name)


def bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    """Whether NO_PROXY names the host: `*`, a name and its subdomains, an address or network, maybe with a port."""
    for entry in (part.strip().lower() for part in no_proxy.split(",")):
        if entry == "*":
            return True
        name, _, entry_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if not name or (entry_port and entry_port != str(port)):
            continue
        if _in_network(host, name) or host.lower() == name.lstrip(".") or host.lower().endswith("." + name.lstrip(".")):
            return True
    return False


def _in_network(host: str, entry: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")) in ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError:
        return False


def describe(route: ProxyRoute | None) -> str:
    return "direct" if route is None else f"via {route.shown}"


def masked(url: URL) -> str:
    """A URL fit for a log: its user kept, its password never."""
    return str(url.with_password("***")) if url.password else str(url)


def _route(value: str, source: str) -> ProxyRoute:
    url = URL(value if "://" in value else f"http://{value}")  # "proxy:3128" is what many set
    shown = f"{masked(url)} (from {source})"
    if url.user is None:
        return ProxyRoute(url, shown)
    auth = aiohttp.encode_basic_auth(url.user, url.password or "")
    return ProxyRoute(url.with_user(None), shown, {"Proxy-Authorization": auth})

"""How a provider's calls travel, in words: for check-config and the start-up log.

Which proxy (credentials masked) or direct, which trust store, and a warning when the API key
would cross the network in clear text.
"""

from __future__ import annotations

import ipaddress

from yarl import URL

from gateway.config import ProviderConfig
from gateway.providers.proxies import ProxyRoute, describe
from gateway.providers.tls import tls_context

WARNING = "warning: "


def describe_route(name: str, config: ProviderConfig, url: str, proxy: ProxyRoute | None, has_key: bool) -> list[str]:
    """A line for the provider, and one per warning (each starting with WARNING)."""
    tls_context(name, config)  # a ca_file or client certificate that cannot load is a config error, said now
    target = URL(url)
    lines = [f"provider {name}: {target.origin()} {describe(proxy)}{_trust(config, target)}"]
    if has_key and target.scheme == "http" and not _loopback(target.host or ""):
        lines.append(f"{WARNING}provider {name} sends its API key over plain http to {target.host}: "
                     "anyone on the path can read it (use https)")
    return lines


def _trust(config: ProviderConfig, target: URL) -> str:
    if target.scheme != "https":
        return ""
    trust = f"ca_file {config.ca_file}" if config.ca_file else "the system's trust store (SSL_CERT_FILE if set)"
    mutual = ", client certificate " + config.client_cert if config.client_cert else ""
    return f", trusting {trust}{mutual}"


def _loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False

"""The TLS a provider's calls trust: the system's store, or the provider's `ca_file`, and its client certificate.

Without `ca_file` the system's store is used, which OpenSSL lets `SSL_CERT_FILE` / `SSL_CERT_DIR`
replace; with it, only that bundle is trusted for this provider (a private CA). There is no key
that turns verification off: a provider whose certificate fails is a failed call ("tls").
"""

from __future__ import annotations

import ssl

from gateway.config import ConfigError, ProviderConfig


def tls_context(name: str, provider: ProviderConfig) -> ssl.SSLContext | None:
    """The provider's own context, its files read now (at start, never on a call); None: the system's."""
    if provider.ca_file is None and provider.client_cert is None:
        return None
    try:
        context = ssl.create_default_context(cafile=provider.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"providers.{name}.ca_file: cannot load {provider.ca_file!r}: {exc}") from None
    if provider.client_cert is not None:
        try:
            context.load_cert_chain(provider.client_cert, provider.client_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"providers.{name}.client_cert: cannot load {provider.client_cert!r}: {exc}") from None
    return context

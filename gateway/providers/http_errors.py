"""Why a provider call got no usable answer, as the gateway's own errors; aiohttp's mapped to them here.

Each error has the `kind` the metrics, logs and /status use, and says whether the same
provider may answer a retry (`transient`):

    TransportError          "connect": reset, or closed before the answer was whole (transient)
      DnsFailed             "dns": the host name does not resolve (transient)
      Refused               "refused": nothing listens there, or at the proxy (transient)
      TlsFailed             "tls": the handshake failed; says the certificate's reason
      ConnectTimeout        "connect_timeout": connecting took over connect_timeout_seconds
      ReadTimeout           "read_timeout": no answer byte for read_timeout_seconds
      AnswerTooLarge        "too_large": past max_answer_bytes, or a header past its limits
      Malformed             "malformed": not HTTP this client can read, a 101, an undecodable body
        UnreadableAnswer    ... a 200 whose body arrived whole but does not decode: the work was done
      Redirected            "redirect": a 3xx not followed; the reason holds its Location

Both timeouts are also TimeoutErrors. The call's own total limit (timeout_seconds) is a plain
TimeoutError, as asyncio's and aiohttp's are; ProviderClient names it "timeout".
"""

from __future__ import annotations

import errno
from typing import ClassVar

import aiohttp
from yarl import URL


class TransportError(Exception):
    kind: ClassVar[str] = "connect"
    transient: ClassVar[bool] = True


class DnsFailed(TransportError):
    kind = "dns"


class Refused(TransportError):
    kind = "refused"


class TlsFailed(TransportError):
    kind = "tls"
    transient = False  # a certificate does not get better on a retry


class ConnectTimeout(TransportError, TimeoutError):
    kind = "connect_timeout"
    transient = False  # every address was tried for the whole limit: the next provider is the better bet


class ReadTimeout(TransportError, TimeoutError):
    kind = "read_timeout"
    transient = False


class AnswerTooLarge(TransportError):
    kind = "too_large"
    transient = False  # the same provider would send the same answer again


class Malformed(TransportError):
    kind = "malformed"
    transient = False


class UnreadableAnswer(Malformed):
    """The provider answered 200 and the whole body arrived, but it does not decode: billed, as the provider bills it."""


class Redirected(TransportError):
    kind = "redirect"
    transient = False


# aiohttp's errors whose meaning needs nothing from the error itself, in the order they are tried.
_SAID_BY_TYPE: tuple[tuple[type[Exception], type[TransportError], str], ...] = (
    (aiohttp.ConnectionTimeoutError, ConnectTimeout, "connecting to {where} took over connect_timeout_seconds"),
    (aiohttp.SocketTimeoutError, ReadTimeout, "{where} sent nothing for read_timeout_seconds"),
    (aiohttp.ServerDisconnectedError, TransportError, "{where} closed the connection before the answer was whole"),
)


def mapped(exc: BaseException, url: URL) -> TransportError:
    """aiohttp's error as ours, saying what happened and where."""
    where = f"{url.host}:{url.port}"
    if isinstance(exc, TransportError):
        return exc
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _not_connected(exc, url)
    for library_error, error, message in _SAID_BY_TYPE:
        if isinstance(exc, library_error):
            return error(message.format(where=where))
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return TransportError(f"the proxy refused the tunnel to {where}: HTTP {exc.status} {exc.message}")
    if isinstance(exc, aiohttp.ClientResponseError):  # the parser's refusal of the answer's head
        if "Got more than" in exc.message or "Too many headers" in exc.message:
            return AnswerTooLarge(f"answer too large: header over its limit ({exc.message})")
        return Malformed(f"unreadable HTTP answer from {where}: {exc.message}")
    if isinstance(exc, aiohttp.ClientPayloadError):
        if "not completed" in str(exc):  # cut off mid-body: a connection lost, not a bad answer
            return TransportError(f"{where} closed the connection before the answer was whole")
        return Malformed(f"unreadable answer body from {where}: {exc}")
    return TransportError(f"connection to {where} failed: {type(exc).__name__}: {exc}")


def _not_connected(exc: aiohttp.ClientConnectorError, url: URL) -> TransportError:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        reason = getattr(exc.certificate_error, "verify_message", None) or str(exc.certificate_error)
        return TlsFailed(f"TLS to {url.host}:{url.port}: certificate refused: {reason}")
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return TlsFailed(f"TLS handshake with {url.host}:{url.port} failed: {exc.os_error}")
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return DnsFailed(f"cannot resolve {url.host}: {exc.os_error.strerror or exc.os_error}")
    through = "the proxy " if isinstance(exc, aiohttp.ClientProxyConnectionError) else ""
    if exc.os_error.errno == errno.ECONNREFUSED:
        return Refused(f"{through}{exc.host}:{exc.port} refused the connection")
    return TransportError(f"cannot connect to {through}{exc.host}:{exc.port}: {exc.os_error.strerror or exc.os_error}")

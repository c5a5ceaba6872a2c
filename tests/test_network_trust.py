"""How provider calls reach a provider: through a proxy or direct, and whom they trust on the way.

Real sockets throughout: a forward proxy of the test's own (tests/support/forward_proxy.py), a
raw upstream, and certificates of a private CA made with the openssl CLI.
"""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import pytest

from gateway.providers.proxies import bypassed, proxy_route
from gateway.providers.route import describe_route
from tests.support.certs import Issued, PrivateCa
from tests.support.forward_proxy import Seen, forward_proxy
from tests.support.provider_calls import failure_of, provider_client, provider_config, score_one, scores
from tests.support.raw_server import DEEPINFRA_PATH, raw_server


@pytest.fixture
def ca(tmp_path: Path) -> PrivateCa:
    return PrivateCa(tmp_path / "ca")


def serving(issued: Issued, client_ca: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(issued.cert, issued.key)
    if client_ca is not None:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


# --- proxies


async def test_an_https_provider_is_reached_through_HTTPS_PROXY_by_a_connect_tunnel(ca: PrivateCa):
    tls = serving(ca.issue("localhost", "DNS:localhost"))
    async with raw_server(scores, tls=tls) as server, forward_proxy() as proxy:
        environ = {"HTTPS_PROXY": f"http://bob:pw@127.0.0.1:{proxy.port}"}
        async with provider_client(f"https://localhost:{server.port}", environ, ca_file=str(ca.cert)) as client:
            assert await score_one(client) == [0.5]
            assert await score_one(client) == [0.5]
        credentials = "Basic " + base64.b64encode(b"bob:pw").decode()
        assert proxy.seen == [Seen("CONNECT", f"localhost:{server.port}", credentials)]  # one tunnel, kept alive
        assert server.requests[0].head[0] == f"POST {DEEPINFRA_PATH} HTTP/1.1"  # the tunnel carried it as sent


async def test_an_http_provider_is_reached_through_http_proxy_by_absolute_uri_with_its_credentials():
    async with raw_server(scores) as server, forward_proxy() as proxy:
        environ = {"http_proxy": f"http://alice:s3cret@127.0.0.1:{proxy.port}"}
        async with provider_client(f"http://127.0.0.1:{server.port}", environ) as client:
            assert await score_one(client) == [0.5]
            assert client.proxy is not None
            assert client.proxy.shown == f"http://alice:***@127.0.0.1:{proxy.port} (from http_proxy)"
        [seen] = proxy.seen
        assert (seen.method, seen.target) == ("POST", f"http://127.0.0.1:{server.port}{DEEPINFRA_PATH}")
        assert seen.proxy_authorization == "Basic " + base64.b64encode(b"alice:s3cret").decode()
        assert "proxy-authorization" not in server.requests[0].headers


async def test_NO_PROXY_and_an_empty_proxy_key_go_direct_and_a_proxy_key_overrides_the_environment():
    async with raw_server(scores) as server, forward_proxy() as proxy:
        base_url = f"http://127.0.0.1:{server.port}"
        async with provider_client(base_url, {"HTTP_PROXY": proxy.url, "NO_PROXY": "localhost,127.0.0.1"}) as client:
            assert await score_one(client) == [0.5]
        async with provider_client(base_url, {"HTTP_PROXY": proxy.url}, proxy="") as client:
            assert await score_one(client) == [0.5]
        assert proxy.seen == []
        async with provider_client(base_url, {}, proxy=proxy.url) as client:
            assert await score_one(client) == [0.5]
        assert [seen.method for seen in proxy.seen] == ["POST"]
        assert len(server.requests) == 3


async def test_a_proxy_that_refuses_is_named_in_the_failure():
    async with raw_server() as gone:
        dead_port = gone.port
    async with provider_client("http://127.0.0.1:9", proxy=f"http://127.0.0.1:{dead_port}") as client:
        failure = await failure_of(client)
    assert failure.kind == "refused" and f"the proxy 127.0.0.1:{dead_port} refused" in failure.reason


@pytest.mark.parametrize(("host", "port", "no_proxy", "expected"), [
    ("api.example.com", 443, "example.com", True),
    ("api.example.com", 443, ".example.com", True),
    ("example.com", 443, ".example.com", True),
    ("notexample.com", 443, "example.com", False),
    ("10.1.2.3", 80, "10.0.0.0/8", True),
    ("11.1.2.3", 80, "10.0.0.0/8", False),
    ("api.example.com", 8443, "api.example.com:443", False),
    ("api.example.com", 443, "api.example.com:443", True),
    ("anything", 1, "*", True),
    ("api.example.com", 443, "", False),
])
def test_no_proxy_reads_as_curl_does(host: str, port: int, no_proxy: str, expected: bool):
    assert bypassed(host, port, no_proxy) is expected


def test_lower_case_wins_and_each_scheme_reads_its_own_variable():
    environ = {"https_proxy": "http://low:1", "HTTPS_PROXY": "http://up:1", "HTTP_PROXY": "http://plain:1"}
    https = proxy_route("https://api.example.com/x", None, environ)
    http = proxy_route("http://api.example.com/x", None, environ)
    assert https is not None and str(https.url) == "http://low:1" and https.shown.endswith("(from https_proxy)")
    assert http is not None and str(http.url) == "http://plain:1"
    assert proxy_route("https://api.example.com/x", "", environ) is None


def test_check_config_says_the_route_masks_the_password_and_warns_of_a_key_over_plain_http():
    config = provider_config("http://reranker.internal:8000", proxy="http://ops:hunter2@egress:3128")
    route = proxy_route("http://reranker.internal:8000/x", config.proxy, {})
    lines = describe_route("infinity", config, "http://reranker.internal:8000/x", route, has_key=True)
    assert lines[0] == "provider infinity: http://reranker.internal:8000 via http://ops:***@egress:3128 (from config)"
    assert lines[1].startswith("warning: provider infinity sends its API key over plain http to reranker.internal")
    assert "hunter2" not in "\n".join(lines)
    local = describe_route("local", provider_config("http://127.0.0.1:8000"), "http://127.0.0.1:8000/x", None, True)
    assert local == ["provider local: http://127.0.0.1:8000 direct"]


# --- trust


async def test_a_private_ca_is_trusted_through_ca_file_and_not_without_it(ca: PrivateCa):
    tls = serving(ca.issue("localhost", "DNS:localhost"))
    async with raw_server(scores, tls=tls) as server:
        url = f"https://localhost:{server.port}"
        async with provider_client(url, ca_file=str(ca.cert)) as client:
            assert await score_one(client) == [0.5]
        async with provider_client(url) as client:
            failure = await failure_of(client)
    assert failure.kind == "tls" and "unable to get local issuer certificate" in failure.reason
    assert not failure.transient  # a retry meets the same certificate
    assert len(server.requests) == 1


@pytest.mark.parametrize(("names", "dates", "reason"), [
    (("other.example", "DNS:other.example"), {}, "Hostname mismatch"),
    (("localhost", "DNS:localhost"), {"start": "20200101000000Z", "end": "20200201000000Z"}, "certificate has expired"),
])
async def test_a_wrong_host_or_an_expired_certificate_is_a_tls_failure_saying_why(
    ca: PrivateCa, names: tuple[str, str], dates: dict[str, str], reason: str,
):
    tls = serving(ca.issue(*names, **dates))
    async with raw_server(scores, tls=tls) as server, provider_client(
        f"https://localhost:{server.port}", ca_file=str(ca.cert)
    ) as client:
        failure = await failure_of(client)
    assert failure.kind == "tls" and reason in failure.reason
    assert server.requests == []


async def test_mutual_tls_sends_the_client_certificate(ca: PrivateCa):
    tls = serving(ca.issue("localhost", "DNS:localhost"), client_ca=ca.cert)
    mine = ca.issue("gateway", "DNS:gateway")
    async with raw_server(scores, tls=tls) as server:
        url = f"https://localhost:{server.port}"
        async with provider_client(url, ca_file=str(ca.cert), client_cert=str(mine.cert),
                                   client_key=str(mine.key)) as client:
            assert await score_one(client) == [0.5]
        async with provider_client(url, ca_file=str(ca.cert)) as client:
            await failure_of(client)  # the server refuses a client without a certificate
    assert len(server.requests) == 1

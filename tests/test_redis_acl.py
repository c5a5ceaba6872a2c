"""The gateway under a Redis user allowed only what README's "Redis ACL" lists: cache and ledger
work, over real sockets and a real redis-server; without TIME, which the lookup's claims and the
ledger's reserve and settle call, each warns, and requests are served all the same."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import redis

from tests.support.gateway import GatewayFactory
from tests.support.polling import eventually
from tests.support.redis_server import RedisServer, own_redis_server

PASSWORD = "gw-s3cret"
# README, "Redis ACL": the rules for the gateway's user, as documented there.
GATEWAY_ACL = (
    "resetkeys ~rr:* ~rb:* ~rq:* resetchannels -@all +ping +evalsha +script|load +time "
    "+hget +hmget +hgetall +hset +hsetnx +hdel +hexists +hlen +hincrby +expire +pexpire +pttl +set "
    "+zadd +zrem +zcard +zrangebyscore +zremrangebyscore +rpush +ltrim +lrange +get +incr +incrby +hvals"
)
README = Path(__file__).parents[1] / "README.md"
ADMIN = {"Authorization": "Bearer admin-secret"}
BODY = {"query": "what does out-of-court bankruptcy cost?", "documents": ["free", "25,000 rubles", "mild weather"]}


def test_the_readme_documents_these_rules():
    assert GATEWAY_ACL in " ".join(README.read_text().split())


@pytest.fixture
def restricted_redis(tmp_path: Path):
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def restrict(server: RedisServer, rules: str) -> str:
    """A user `gateway` with `rules`; its URL."""
    with server.client() as admin:
        admin.execute_command("ACL", "SETUSER", "gateway", "reset", "on", f">{PASSWORD}", *rules.split())
    return f"redis://gateway:{PASSWORD}@127.0.0.1:{server.port}/0"


async def cached_twice(make_gateway: GatewayFactory, url: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    monkeypatch.setenv("ADMIN_KEY", "admin-secret")
    gateway = await make_gateway(
        fallback=["deepinfra"], cache={"url": url}, server={"admin_key_env": "ADMIN_KEY"},
        providers={"deepinfra": {"budget": {"daily_usd": 10.0}}},  # enforced: every call reserves and settles
    )
    first = await gateway.post("/v1/rerank", json=BODY)
    second = await gateway.post("/v1/rerank", json=BODY)
    assert (first.status, second.status) == (200, 200)
    spend = await (await gateway.get("/admin/spend", headers=ADMIN)).json()
    assert spend["providers"]["deepinfra"]["today"]["tokens"] > 0
    return second.headers["X-Rerank-Cache"], spend["ledger"]["figures"]


@own_redis_server
async def test_a_user_with_the_documented_rules_runs_cache_and_ledger(
    make_gateway: GatewayFactory, restricted_redis: RedisServer, monkeypatch, caplog,
):
    url = restrict(restricted_redis, GATEWAY_ACL)
    with caplog.at_level(logging.INFO, logger="gateway"):
        cache, figures = await cached_twice(make_gateway, url, monkeypatch)
    assert (cache, figures) == ("hits=3; misses=0", "shared")
    assert not [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    with restricted_redis.client() as admin:
        assert admin.keys("rb:{budget}:*") and admin.keys("rr:*")


@own_redis_server
async def test_without_time_the_cache_and_the_ledger_say_so_and_requests_are_served(
    make_gateway: GatewayFactory, restricted_redis: RedisServer, monkeypatch, caplog,
):
    url = restrict(restricted_redis, GATEWAY_ACL.replace(" +time", ""))
    with caplog.at_level(logging.WARNING, logger="gateway"):
        await cached_twice(make_gateway, url, monkeypatch)  # both answered 200
    refused = {record.name for record in caplog.records if "can't run this command" in record.getMessage()}
    assert refused == {"gateway.cache", "gateway.budget"}  # the lookup's claim, the ledger's reserve
    user = redis.Redis(port=restricted_redis.port, username="gateway", password=PASSWORD)
    with user, pytest.raises(redis.exceptions.NoPermissionError):
        user.time()


@own_redis_server
async def test_a_password_file_is_read_again_for_every_new_connection(
    make_gateway: GatewayFactory, restricted_redis: RedisServer, tmp_path: Path,
):
    """A credential provider: the password rotates (a Kubernetes secret volume, a Vault agent's
    file) while the gateway runs. The URL names the file; connections opened after the rotation
    (here, after Redis dropped every one) authenticate with the new password, without a restart."""
    secret = tmp_path / "redis-password"
    secret.write_text(PASSWORD + "\n")
    restrict(restricted_redis, GATEWAY_ACL)
    url = f"redis://gateway@127.0.0.1:{restricted_redis.port}/0?password_file={secret}"
    gateway = await make_gateway(fallback=["deepinfra"], cache={"url": url})
    for expected in ("hits=0; misses=3", "hits=3; misses=0"):
        response = await gateway.post("/v1/rerank", json=BODY)
        assert (response.status, response.headers["X-Rerank-Cache"]) == (200, expected)

    rotated = "rotated-" + PASSWORD
    with restricted_redis.client() as admin:
        admin.execute_command("ACL", "SETUSER", "gateway", "resetpass", f">{rotated}")
        secret.write_text(rotated)
        assert admin.execute_command("CLIENT", "KILL", "USER", "gateway") > 0  # its connections are gone

    async def served_from_the_cache_again() -> bool:
        response = await gateway.post("/v1/rerank", json=BODY)
        assert response.status == 200  # uncached while Redis cannot be reached, never refused
        return response.headers["X-Rerank-Cache"] == "hits=3; misses=0"

    await eventually(served_from_the_cache_again, what="the cache read over connections with the new password")


def test_a_url_with_both_a_password_and_a_password_file_is_refused() -> None:
    from gateway.redisio.client import redis_client

    with pytest.raises(ValueError, match="password or a password_file"):
        redis_client("redis://u:p@127.0.0.1:6390/0?password_file=/x", 0.1, 1)

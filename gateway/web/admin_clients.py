"""/admin/clients: clients created, changed, revoked and rotated at run time, with the admin key.

A created client's key is shown once, in the 201 of its creation (or of its rotation), and kept
only as its SHA-256 (gateway.clients.store); no answer lists or echoes a key afterwards.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from gateway.budget import client_limit
from gateway.clients import ClientRecord, StoreUnavailable
from gateway.config import ClientSettings, GatewayConfig, describe_validation_error
from gateway.errors import BadRequest, ClientError, InvalidRequest, NotFound, Overloaded
from gateway.runtime import LiveGateway
from gateway.secrets import key_digest
from gateway.web.admin import require_admin
from gateway.web.edge import LIVE, json_response

log = logging.getLogger("gateway.clients")

_MAX_BODY_BYTES = 64 * 1024
KEY_PREFIX = "rgk_"  # tells a gateway client key from others in a secrets scanner's findings
NOT_SHARED = ("kept in this process only (no Redis configured): lost on restart, and unknown to the "
              "other workers and replicas")


class Conflict(ClientError):
    status = 409
    error_type = "conflict"


async def create_client(request: web.Request) -> web.Response:
    await require_admin(request)
    live = request.app[LIVE]
    body = await _json_object(request)
    name = body.pop("name", None)
    if not isinstance(name, str):
        raise InvalidRequest("name: required, a string")
    settings = _settings(live.config, name, body)
    if name in live.config.clients:
        raise Conflict(f"client {name!r} is named in the config file; pick another name")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    if not await _stored(live, ClientRecord(name, settings, key_digest(key)), create=True):
        raise Conflict(f"client {name!r} exists already")
    answer = {"name": name, **_described(settings), "key": key,
              "note": "the key is shown this once; it is stored only as a hash"}
    if not live.shared.client_store.shared:
        log.warning("client %s created: %s", name, NOT_SHARED)
        answer["warning"] = NOT_SHARED
    return json_response(answer, status=201)


async def list_clients(request: web.Request) -> web.Response:
    await require_admin(request)
    live = request.app[LIVE]
    config = live.config
    entries: list[tuple[str, str, ClientSettings]] = [
        *((name, "config", settings) for name, settings in config.clients.items()),
        *((record.name, "admin", record.settings) for record in live.shared.client_store.records()),
    ]
    reports = await live.shared.ledger.report([client_limit(name, settings.budget) for name, _, settings in entries])
    return json_response({"clients": [
        {"name": name, "source": source, **_described(settings),
         "spend": {"today_usd": round(today.spent_usd, 9), "month_usd": round(month.spent_usd, 9)}}
        for (name, source, settings), today, month in zip(entries, reports[0::2], reports[1::2])
    ]})


async def change_client(request: web.Request) -> web.Response:
    """PATCH: a created client's limits (and budget); the rest of it stays."""
    await require_admin(request)
    live = request.app[LIVE]
    record = _created(live, request.match_info["name"])
    changes = await _json_object(request)
    unknown = set(changes) - {"limits", "budget"}
    if unknown:
        raise InvalidRequest(f"{', '.join(sorted(unknown))}: only limits and budget change; create a client anew "
                             "for another team or models")
    settings = _settings(live.config, record.name, {**record.settings.model_dump(mode="json"), **changes})
    updated = ClientRecord(record.name, settings, record.digest, record.old_digest, record.old_valid_until)
    await _stored(live, updated, create=False)
    return json_response({"name": record.name, **_described(settings)})


async def revoke_client(request: web.Request) -> web.Response:
    await require_admin(request)
    live = request.app[LIVE]
    record = _created(live, request.match_info["name"])
    try:
        await live.shared.client_store.delete(record.name)
    except StoreUnavailable as exc:
        raise Overloaded(f"client not revoked: {exc}") from None
    return web.Response(status=204)


async def rotate_client_key(request: web.Request) -> web.Response:
    """A new key; the old one keeps working for `grace_seconds` (default 0: stops at once)."""
    await require_admin(request)
    live = request.app[LIVE]
    record = _created(live, request.match_info["name"])
    body = await _json_object(request)
    grace = body.pop("grace_seconds", 0)
    if body:
        raise InvalidRequest(f"{', '.join(sorted(body))}: unknown; rotate takes only grace_seconds")
    if isinstance(grace, bool) or not isinstance(grace, int | float) or not 0 <= grace <= 30 * 24 * 3600:
        raise InvalidRequest("grace_seconds: a number of seconds from 0 to 2592000 (30 days)")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    rotated = ClientRecord(record.name, record.settings, key_digest(key), record.digest, time.time() + grace)
    await _stored(live, rotated, create=False)
    return json_response({"name": record.name, "key": key, "old_key_valid_for_seconds": grace,
                          "note": "the key is shown this once; it is stored only as a hash"}, status=201)


def _created(live: LiveGateway, name: str) -> ClientRecord:
    for record in live.shared.client_store.records():
        if record.name == name:
            return record
    if name in live.config.clients:
        raise Conflict(f"client {name!r} is named in the config file: change it there and reload")
    raise NotFound(f"no client named {name!r} was created through the admin API")


def _settings(config: GatewayConfig, name: str, raw: dict[str, Any]) -> ClientSettings:
    """The settings, checked as the config's are: a field's problem is a 422 naming it."""
    try:
        settings = ClientSettings.model_validate(raw)
    except ValidationError as exc:
        raise InvalidRequest(describe_validation_error(exc)) from None
    problem = config.client_problem(name, settings)
    if problem is not None:
        field, message = problem
        raise InvalidRequest(f"{field or 'name'}: {message}")
    return settings


async def _stored(live: LiveGateway, record: ClientRecord, *, create: bool) -> bool:
    try:
        return await live.shared.client_store.put(record, create=create)
    except StoreUnavailable as exc:
        raise Overloaded(f"client not stored: {exc}") from None


def _described(settings: ClientSettings) -> dict[str, Any]:
    """What an answer says of a client: never its key."""
    return {"team": settings.team, "models": settings.models, "budget": settings.budget.model_dump(),
            "limits": settings.limits.model_dump()}


async def _json_object(request: web.Request) -> dict[str, Any]:
    body = await request.content.read(_MAX_BODY_BYTES + 1)
    if len(body) > _MAX_BODY_BYTES:
        raise BadRequest(f"body: larger than {_MAX_BODY_BYTES} bytes")
    if not body.strip():
        return {}
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body: not valid JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("body: expected a JSON object")
    return payload

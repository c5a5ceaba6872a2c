"""Reading fields out of a client's JSON body, each failure a 422 naming the field."""

from __future__ import annotations

from typing import Any

from gateway.errors import InvalidRequest


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def expect_object(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise InvalidRequest(f"body: expected a JSON object, got {_kind(payload)}")
    return payload


def required_string(payload: dict[str, Any], key: str) -> str:
    value = payload.get(key)
    if value is None:
        raise InvalidRequest(f"{key}: required")
    if not isinstance(value, str):
        raise InvalidRequest(f"{key}: expected a string, got {_kind(value)}")
    if not value:
        raise InvalidRequest(f"{key}: must not be empty")
    return value


def optional_string(payload: dict[str, Any], key: str) -> str | None:
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{key}: expected a string, got {_kind(value)}")
    return value


def optional_bool(payload: dict[str, Any], key: str) -> bool:
    value = payload.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"{key}: expected true or false, got {_kind(value)}")
    return value


# Past 2^53 a JSON number is no longer an exact integer in a double: 1e29 is "whole" only by rounding.
MAX_WHOLE_NUMBER = 2**53


def optional_top_n(payload: dict[str, Any], key: str = "top_n") -> int | None:
    """A whole number >= 1; `2.0` counts (JSON Schema's integer does), `1.5` and `1e29` do not."""
    value = payload.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_WHOLE_NUMBER:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        shown = f"{value!r}" if isinstance(value, float) else _kind(value)
        raise InvalidRequest(f"{key}: expected a whole number, got {shown}")
    if value < 1:
        raise InvalidRequest(f"{key}: must be at least 1, got {value}")
    if value > MAX_WHOLE_NUMBER:
        raise InvalidRequest(f"{key}: must be at most {MAX_WHOLE_NUMBER}, got {value}")
    return value


def optional_model(payload: dict[str, Any], key: str = "model") -> str | None:
    """The model named, or None: `""` means none (Cohere's ClientV2 sends it for an empty model)."""
    return optional_string(payload, key) or None


def optional_string_list(payload: dict[str, Any], key: str) -> tuple[str, ...] | None:
    """None when absent or null, else a non-empty list of strings."""
    if payload.get(key) is None:
        return None
    return string_list(payload, key)


def string_list(payload: dict[str, Any], key: str, *, text_objects: bool = False) -> tuple[str, ...]:
    """A non-empty list of strings; with text_objects, {"text": str} items are taken too."""
    value = payload.get(key)
    if value is None:
        raise InvalidRequest(f"{key}: required")
    if not isinstance(value, list):
        raise InvalidRequest(f"{key}: expected a list, got {_kind(value)}")
    if not value:
        raise InvalidRequest(f"{key}: must not be empty")
    if set(map(type, value)) == {str}:  # plain strings, as nearly every client sends: checked in C
        return tuple(value)
    items = []
    for index, item in enumerate(value):
        if isinstance(item, str):
            items.append(item)
        elif text_objects and isinstance(item, dict) and isinstance(item.get("text"), str):
            items.append(item["text"])
        else:
            expected = "a string or an object with a string 'text'" if text_objects else "a string"
            raise InvalidRequest(f"{key}[{index}]: expected {expected}, got {_kind(item)}")
    return tuple(items)

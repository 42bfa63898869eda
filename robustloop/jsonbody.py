"""Request bodies as JSON, the strict way both HTTP services read them.

Python's ``json`` accepts more than a service can safely take; each of these would otherwise
surface later as a 500:

- a lone surrogate escape (``"\\ud800"``): a valid JSON string no UTF-8 encoder can write back
  (SQLite, logs, responses);
- an integer of thousands of digits: ``int()`` refuses it with a ``ValueError`` past Python's
  limit, and costs quadratic time below it;
- ``NaN``, ``Infinity``: not JSON at all;
- an object with a key twice: the last one would silently win;
- nesting deeper than the parser's recursion;
- more values than the request can legally hold: a body of ``0,0,0,...`` costs about 32 bytes
  of memory per two bytes read once parsed, so the values are counted (a C-speed scan for
  commas) before anything is parsed, when the caller knows its bound.

Standard library only (the floor: both services import it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

MAX_DIGITS = 100
"""Longest integer literal accepted (a pixel has 3 digits, a count or a label a few more)."""

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class BodyError(ValueError):
    """The body is not JSON this service accepts; the message says what is wrong."""


class TooManyValues(BodyError):
    """The body holds more JSON values than ``max_values``; refused before parsing."""


def parse_json_body(body: bytes, *, max_values: int | None = None) -> Any:
    """Parse ``body`` as strict JSON (see the module's docstring).

    Args:
        body: the request body.
        max_values: the most values (numbers, strings, ...) a legal body holds; a body that may
            hold more is refused before it is parsed, so the work per request is bounded by
            what is legal rather than by the body's size. None: no bound.

    Raises:
        TooManyValues: over ``max_values`` (counted as commas + 1, an upper bound).
        BodyError: empty, not UTF-8, malformed, or one of the cases above.
    """
    if not body:
        raise BodyError("empty request body; send a JSON object")
    if max_values is not None and body.count(b",") >= max_values:
        raise TooManyValues(
            f"the body holds more than the {max_values} values the largest legal request has"
        )
    try:
        value = json.loads(
            body,
            parse_int=_bounded_int,
            parse_constant=_no_constant,
            object_pairs_hook=_unique_keys,
        )
    except UnicodeDecodeError:
        raise BodyError("request body is not UTF-8 text; send JSON") from None
    except RecursionError:
        raise BodyError("JSON nested too deeply") from None
    except BodyError:
        raise
    except ValueError as exc:  # json.JSONDecodeError, and int() past its digit limit
        raise BodyError(f"malformed JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(body):  # rare: only then walk the whole value
        for text in _strings(value):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise BodyError(
                    f"a string holds a lone surrogate ({_escaped(text)}); send valid Unicode"
                ) from None
    return value


JSON_TYPES = ("application/json",)


def content_type_problem(value: str | None, *, also: tuple[str, ...] = ()) -> str | None:
    """Why a request's Content-Type is not acceptable for a JSON body (None when it is).

    JSON (``application/json`` or any ``+json`` type, in UTF-8) and the types in ``also`` are
    accepted, and so is no Content-Type at all (some clients, Triton's among them, send none).
    """
    if not value:
        return None
    media, _, params = value.partition(";")
    media = media.strip().lower()
    if media not in JSON_TYPES + also and not media.endswith("+json"):
        return f"Content-Type {value[:60]!r} is not JSON; send application/json"
    for param in params.split(";"):
        name, _, setting = param.partition("=")
        if name.strip().lower() == "charset" and setting.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            return f"charset {setting.strip()[:20]!r} is not UTF-8; send UTF-8 JSON"
    return None


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise BodyError(f"an integer of {len(text)} digits; at most {MAX_DIGITS} are accepted")
    return int(text)


def _no_constant(name: str) -> Any:
    raise BodyError(f"{name} is not JSON; send finite numbers")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise BodyError(f"key {_escaped(key)} appears twice in one object")
        out[key] = value
    return out


def _strings(value: Any) -> Iterator[str]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            yield from item.keys()
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _escaped(text: str, limit: int = 40) -> str:
    shown = text.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
    return repr(shown[:limit] + ("..." if len(shown) > limit else ""))


__all__ = ["MAX_DIGITS", "BodyError", "TooManyValues", "content_type_problem", "parse_json_body"]

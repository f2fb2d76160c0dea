"""Fingerprints: a stable hash of a call's arguments, so a reused key with other arguments is caught.

Arguments are bound with ``inspect.signature(...).bind()`` and ``apply_defaults()``, the
session and ``self``/``cls`` removed, encoded as canonical JSON in which every value carries
its type (``1``, ``1.0`` and ``True`` differ), hashed with SHA-256 and prefixed ``v1:``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from idempotent.errors import SerializationError

__all__ = ["VERSION", "canonical", "digest"]

VERSION = "v1"


class _Unencodable(Exception):
    """An argument value has no stable encoding."""


def canonical(value: object) -> object:
    """Return a JSON-ready structure that identifies ``value`` and its type."""
    exact = _EXACT.get(type(value))
    if exact is not None:
        return exact(value)
    if value is None:
        return None
    if isinstance(value, bool):
        return ["b", value]
    if isinstance(value, enum.Enum):
        return ["e", _qualname(type(value)), canonical(value.value)]
    if isinstance(value, int):
        return _int(value)
    if isinstance(value, float):
        return ["f", value.hex()]
    if isinstance(value, str):
        return ["s", value]
    if isinstance(value, decimal.Decimal):
        return ["d", str(value)]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return ["y", bytes(value).hex()]
    if isinstance(value, uuid.UUID):
        return ["u", str(value)]
    if isinstance(value, dt.datetime):
        return ["dt", value.isoformat()]
    if isinstance(value, dt.date):
        return ["da", value.isoformat()]
    if isinstance(value, dt.time):
        return ["t", value.isoformat()]
    if isinstance(value, dt.timedelta):
        return ["td", [value.days, value.seconds, value.microseconds]]
    if isinstance(value, (list, tuple)):
        return ["l" if isinstance(value, list) else "tu", [canonical(item) for item in value]]
    if isinstance(value, (set, frozenset)):
        items = sorted((canonical(item) for item in value), key=_sort_key)
        return ["set", items]
    if isinstance(value, Mapping):
        pairs = sorted(([canonical(k), canonical(v)] for k, v in value.items()), key=_sort_key)
        return ["m", pairs]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return ["dc", _qualname(type(value)), sorted(fields.items())]
    dump = getattr(value, "model_dump", None)
    if callable(dump) and hasattr(type(value), "model_fields"):  # pydantic v2 model
        return ["pm", _qualname(type(value)), canonical(dump(mode="json"))]
    raise _Unencodable(type(value).__name__)


def _int(value: int) -> list[str]:
    try:
        return ["i", str(value)]
    except ValueError:  # more digits than Python converts to decimal text: hex has no such limit
        return ["ix", format(value, "x")]


#: Keys whose JSON text is the key between quotes, with no character below the quote that ends
#: it: such keys sort in the same order as their encoded pairs, so no pair needs encoding to sort.
_PLAIN_KEY = re.compile(r"[#-\[\]-~]*").fullmatch


def _dict(value: dict[Any, Any]) -> object:
    """A plain dict: the Mapping encoding, sorted without encoding each pair when its keys allow."""
    for k in value:
        if type(k) is not str or _PLAIN_KEY(k) is None:
            pairs = sorted(([canonical(k), canonical(v)] for k, v in value.items()), key=_sort_key)
            return ["m", pairs]
    return ["m", [[["s", k], canonical(value[k])] for k in sorted(value)]]


#: The most common argument types, looked up by exact type before the isinstance chain above
#: (subclasses such as enums, bool or OrderedDict still take the chain). Same encoding as the chain.
_EXACT: dict[type, Callable[[Any], object]] = {
    str: lambda value: ["s", value],
    int: _int,
    float: lambda value: ["f", value.hex()],
    bool: lambda value: ["b", value],
    type(None): lambda value: None,
    list: lambda value: ["l", [canonical(item) for item in value]],
    tuple: lambda value: ["tu", [canonical(item) for item in value]],
    dict: _dict,
}

#: ``json.dumps`` with fixed options builds a new encoder per call; these are built once.
_encode_sort_key = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode
_encode_digest = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True
).encode


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _sort_key(item: object) -> str:
    return _encode_sort_key(item)


def digest(arguments: Mapping[str, Any], function: str) -> str:
    """Return ``v1:<sha256>`` for named argument values, naming the parameter that cannot be encoded."""
    encoded: dict[str, object] = {}
    for name, value in arguments.items():
        try:
            encoded[name] = canonical(value)
        except _Unencodable as exc:
            raise SerializationError(
                f"cannot fingerprint argument {name!r} of {function}: a {exc} value has no stable encoding; "
                f"name the parameters that identify the request with fingerprint=[...], exclude it, "
                f"or pass fingerprint=callable (or fingerprint=False to disable the check)"
            ) from None
        except RecursionError:
            raise SerializationError(
                f"cannot fingerprint argument {name!r} of {function}: it refers to itself"
            ) from None
    text = _encode_digest(encoded)
    return f"{VERSION}:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()

"""Encoding results for the keys table, so a replay returns an equal value of the same type.

The default codec is JSON in which values JSON cannot tell apart carry a tag
(``{"$t": "decimal", "v": "1.10"}``). Classes (dataclasses, pydantic models, enums) are rebuilt
only from the type the function's return annotation names, never from a name read from a row:
a row can choose between the classes the annotation allows, nothing more.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import enum
import json
import types
import typing
import uuid
from typing import Any, Protocol, runtime_checkable

from idempotent.errors import SerializationError

__all__ = ["DEFAULT_MAX_BYTES", "JsonCodec", "PickleSerializer", "Serializer", "encode_checked"]

DEFAULT_MAX_BYTES = 1024 * 1024
_TAG = "$t"
_NONE_TYPE = type(None)
#: Ints longer than this are stored as hex: Python refuses decimal text past a digit limit
#: (4300 by default, at least 640), and 2000 bits are 603 digits.
_BIG_INT_BITS = 2000
#: ``json.dumps(data, ensure_ascii=False, separators=(",", ":"))`` without a new encoder per call.
_encode_result = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


@runtime_checkable
class Serializer(Protocol):
    """Turns results into text and back. ``name`` is stored beside each row it wrote."""

    name: str

    def dumps(self, value: Any, hint: Any) -> str:
        """Return ``value`` as text; raise :class:`SerializationError` when it cannot be stored."""
        ...

    def loads(self, text: str, hint: Any) -> Any:
        """Return the value that :meth:`dumps` encoded."""
        ...


class _Refused(Exception):
    def __init__(self, what: str, path: str) -> None:
        super().__init__(what, path)
        self.what = what
        self.path = path


def _classes_in(hint: Any) -> list[type]:
    """The classes a (possibly generic or union) annotation allows at this position."""
    if hint is None or hint is Any:
        return []
    origin = typing.get_origin(hint)
    if origin is typing.Union or (isinstance(hint, types.UnionType)):
        found: list[type] = []
        for arg in typing.get_args(hint):
            found.extend(_classes_in(arg))
        return found
    if origin is typing.Annotated:
        return _classes_in(typing.get_args(hint)[0])
    if origin is not None:
        return [origin] if isinstance(origin, type) else []
    return [hint] if isinstance(hint, type) else []


def _args_for(hint: Any, container: type) -> tuple[Any, ...]:
    """Type arguments of the union member of ``hint`` whose origin is ``container``."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or isinstance(hint, types.UnionType):
        for arg in typing.get_args(hint):
            found = _args_for(arg, container)
            if found:
                return found
        return ()
    if origin is typing.Annotated:
        return _args_for(typing.get_args(hint)[0], container)
    if origin is not None and isinstance(origin, type) and issubclass(origin, container):
        return typing.get_args(hint)
    return ()


def _is_model(cls: type) -> bool:
    return hasattr(cls, "model_fields") and hasattr(cls, "model_validate")


def _pick(candidates: list[type], cls: type) -> type | None:
    return next((c for c in candidates if c is cls), None)


class JsonCodec:
    """The default serializer: tagged JSON, classes rebuilt from the return annotation."""

    name = "json"

    # -- encoding -------------------------------------------------------------------------------
    def _enc(self, value: Any, hint: Any, path: str) -> Any:
        cls = type(value)
        if value is None or cls is str or cls is bool or cls is float:
            return value
        if cls is int:
            if value.bit_length() > _BIG_INT_BITS:  # past what int <-> decimal text may convert
                return {_TAG: "bigint", "v": format(value, "x")}
            return value
        if cls is dict:
            if all(isinstance(k, str) for k in value) and _TAG not in value:
                out: dict[str, Any] = {}
                val_hint: Any = None
                for k, v in value.items():
                    kind = type(v)
                    if v is None or kind is str or kind is bool or kind is float:
                        out[k] = v  # what _enc returns for these, under any hint: no path to build
                    else:
                        if val_hint is None:
                            _, val_hint = _args_for(hint, dict) or (Any, Any)
                        out[k] = self._enc(v, val_hint, f"{path}[{k!r}]")
                return out
            key_hint, val_hint = _args_for(hint, dict) or (Any, Any)
            return {
                _TAG: "dict",
                "v": [
                    [self._enc(k, key_hint, path), self._enc(v, val_hint, f"{path}[{k!r}]")]
                    for k, v in value.items()
                ],
            }
        if isinstance(value, enum.Enum):
            if _pick(_classes_in(hint), cls) is not None:
                return {_TAG: "enum", "c": cls.__qualname__, "v": self._enc(value.value, Any, path)}
            if not isinstance(value, (str, int)):
                raise _Refused(f"enum {cls.__qualname__}", path)
            # A str or int enum the annotation does not name is stored as its plain value.
            return self._enc(value.value, hint, path)
        if isinstance(value, str):
            return value
        if isinstance(value, decimal.Decimal):
            return {_TAG: "decimal", "v": str(value)}
        if isinstance(value, dt.datetime):
            return {_TAG: "datetime", "v": value.isoformat()}
        if isinstance(value, dt.date):
            return {_TAG: "date", "v": value.isoformat()}
        if isinstance(value, dt.time):
            return {_TAG: "time", "v": value.isoformat()}
        if isinstance(value, dt.timedelta):
            return {_TAG: "timedelta", "v": [value.days, value.seconds, value.microseconds]}
        if isinstance(value, uuid.UUID):
            return {_TAG: "uuid", "v": str(value)}
        if isinstance(value, bytes):
            return {_TAG: "bytes", "v": base64.b64encode(value).decode("ascii")}
        if cls is list:
            (item,) = _args_for(hint, list) or (Any,)
            return [self._enc(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        if cls is tuple:
            args = _args_for(hint, tuple)
            hints = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
            hints = (hints + [Any] * len(value))[: len(value)]
            return {
                _TAG: "tuple",
                "v": [
                    self._enc(v, h, f"{path}[{i}]") for i, (v, h) in enumerate(zip(value, hints, strict=True))
                ],
            }
        if cls in (set, frozenset):
            (item,) = _args_for(hint, cls) or (Any,)
            return {_TAG: cls.__name__, "v": [self._enc(v, item, f"{path}{{}}") for v in value]}
        if dataclasses.is_dataclass(value):
            if _pick(_classes_in(hint), cls) is None:
                raise _Refused(f"dataclass {cls.__qualname__}", path)
            field_hints = typing.get_type_hints(cls)
            fields = {
                f.name: self._enc(getattr(value, f.name), field_hints.get(f.name, Any), f"{path}.{f.name}")
                for f in dataclasses.fields(value)
            }
            return {_TAG: "object", "c": cls.__qualname__, "v": fields}
        if _is_model(cls):
            if _pick(_classes_in(hint), cls) is None:
                raise _Refused(f"pydantic model {cls.__qualname__}", path)
            return {_TAG: "model", "c": cls.__qualname__, "v": value.model_dump(mode="json")}
        raise _Refused(f"{cls.__module__}.{cls.__qualname__} instance", path)

    def dumps(self, value: Any, hint: Any) -> str:
        try:
            data = self._enc(value, hint, "result")
        except _Refused as exc:
            raise SerializationError(
                f"cannot store the {exc.what} at {exc.path}: return None, numbers, str, dict/list, Decimal, "
                "datetime, UUID, a dataclass or a pydantic model named in the function's return annotation "
                "(for example -> OrderResult), or pass serializer=... to store other types"
            ) from None
        except RecursionError:
            raise SerializationError("cannot store the result: it refers to itself") from None
        text = _encode_result(data)
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # a str with a lone surrogate: JSON's \u escapes carry it intact
                text = json.dumps(data, ensure_ascii=True, separators=(",", ":"))
        return text

    # -- decoding -------------------------------------------------------------------------------
    def _dec(self, data: Any, hint: Any) -> Any:
        if isinstance(data, list):
            (item,) = _args_for(hint, list) or (Any,)
            return [self._dec(v, item) for v in data]
        if not isinstance(data, dict):
            return data  # an int stays an int under "-> float": replayed as the first call returned it
        tag = data.get(_TAG)
        if tag is None:
            _, val_hint = _args_for(hint, dict) or (Any, Any)
            return {k: self._dec(v, val_hint) for k, v in data.items()}
        raw = data["v"]
        if tag == "decimal":
            return decimal.Decimal(raw)
        if tag == "datetime":
            return dt.datetime.fromisoformat(raw)
        if tag == "date":
            return dt.date.fromisoformat(raw)
        if tag == "time":
            return dt.time.fromisoformat(raw)
        if tag == "timedelta":
            return dt.timedelta(days=raw[0], seconds=raw[1], microseconds=raw[2])
        if tag == "uuid":
            return uuid.UUID(raw)
        if tag == "bigint":
            return int(raw, 16)
        if tag == "bytes":
            return base64.b64decode(raw)
        if tag == "tuple":
            args = _args_for(hint, tuple)
            hints = [args[0]] * len(raw) if len(args) == 2 and args[1] is Ellipsis else list(args)
            hints = (hints + [Any] * len(raw))[: len(raw)]
            return tuple(self._dec(v, h) for v, h in zip(raw, hints, strict=True))
        if tag in ("set", "frozenset"):
            kind: type = set if tag == "set" else frozenset
            (item,) = _args_for(hint, kind) or (Any,)
            return kind(self._dec(v, item) for v in raw)
        if tag == "dict":
            key_hint, val_hint = _args_for(hint, dict) or (Any, Any)
            return {self._dec(k, key_hint): self._dec(v, val_hint) for k, v in raw}
        cls = self._class_for(hint, data.get("c"))
        if tag == "enum":
            return cls(self._dec(raw, Any))
        if tag == "object":
            field_hints = typing.get_type_hints(cls)
            return cls(**{name: self._dec(v, field_hints.get(name, Any)) for name, v in raw.items()})
        if tag == "model":
            return typing.cast(Any, cls).model_validate(raw)
        raise SerializationError(
            f"stored result has an unknown tag {tag!r}; was it written by a newer version?"
        )

    def _class_for(self, hint: Any, name: object) -> type:
        for candidate in _classes_in(hint):
            if candidate.__qualname__ == name:
                return candidate
        raise SerializationError(
            f"the stored result holds a {name} but the return annotation no longer names that class; "
            "restore the annotation or evict the key (idempotent evict)"
        )

    def loads(self, text: str, hint: Any) -> Any:
        return self._dec(json.loads(text), hint)


class PickleSerializer:
    """Opt-in pickle serializer. Only for tables nobody else can write: a row can run code when read."""

    name = "pickle"

    def dumps(self, value: Any, hint: Any) -> str:
        import pickle  # noqa: PLC0415  (loaded only by users who opt in)

        try:
            return base64.b64encode(pickle.dumps(value)).decode("ascii")
        except Exception as exc:
            raise SerializationError(f"cannot pickle the result: {exc}") from exc

    def loads(self, text: str, hint: Any) -> Any:
        import pickle  # noqa: PLC0415  (loaded only by users who opt in)

        return pickle.loads(base64.b64decode(text))  # noqa: S301  (the user opted in to pickle)


def encode_checked(serializer: Serializer, value: Any, hint: Any, max_bytes: int) -> str:
    """Encode ``value``; refuse results over ``max_bytes`` (never store a truncated row)."""
    text = serializer.dumps(value, hint)
    try:
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise SerializationError(
            f"serializer {serializer.name!r} encoded the result as text with a lone surrogate at "
            f"position {exc.start}, which no database driver can store; escape it in the serializer"
        ) from None
    if size > max_bytes:
        raise SerializationError(
            f"the encoded result is {size} bytes, over the {max_bytes}-byte limit; return less "
            "(an id to look the data up by) or raise max_result_bytes"
        )
    return text

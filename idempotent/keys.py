"""Idempotency keys and scopes: normalisation to text and the rules they must follow."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from typing import Any

from idempotent.errors import InvalidKey
from idempotent.schema import KEY_LENGTH

__all__ = ["explain_none", "normalise_key", "normalise_scope", "resolve_path"]

_SCOPE_DIGEST_CHARS = 64  # hex SHA-256


def normalise_key(value: object) -> str | None:
    """Return the key as stored text, ``None`` for "no key", or raise :class:`InvalidKey`.

    A UUID becomes its lowercase canonical form and an int its decimal digits (so ``1`` and
    ``"1"`` are the same key); a str is kept exactly as given.
    """
    if value is None:
        return None
    if isinstance(value, bool):  # bool is an int subclass: refuse it before the int branch
        raise InvalidKey(_wrong_type(value))
    if isinstance(value, str):
        text = value
    elif isinstance(value, int):
        if value.bit_length() > 4 * KEY_LENGTH:  # over 300 digits: refused before any conversion to text
            raise InvalidKey(
                f"an idempotency key is at most {KEY_LENGTH} characters; this int has about "
                f"{int(value.bit_length() * 0.30103) + 1} digits. Hash long values in key_from"
            )
        text = str(value)
    elif isinstance(value, uuid.UUID):
        text = str(value)
    else:
        raise InvalidKey(_wrong_type(value))
    _check_text(text, "key")
    return text


def _wrong_type(value: object) -> str:
    return (
        f"an idempotency key must be a str, int or uuid.UUID, not {type(value).__name__}; "
        "convert it explicitly (for example str(...)) or compute the key with key_from=callable"
    )


def _check_text(text: str, what: str) -> None:
    if not text:
        raise InvalidKey(f"an idempotency {what} must not be empty; it is 1 to {KEY_LENGTH} characters")
    if len(text) > KEY_LENGTH:
        raise InvalidKey(
            f"an idempotency {what} is at most {KEY_LENGTH} characters, this one has {len(text)}; "
            "hash long values (for example hashlib.sha256(...).hexdigest()) in key_from"
        )
    if "\x00" in text:
        raise InvalidKey(f"an idempotency {what} must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidKey(
            f"an idempotency {what} must be valid Unicode text; this one contains a lone surrogate"
        ) from None


def normalise_scope(scope: str) -> str:
    """Return the stored scope: as given when short, else a readable prefix plus a SHA-256 digest."""
    if not isinstance(scope, str) or not scope:
        raise InvalidKey("a scope must be a non-empty str")
    if "\x00" in scope:
        raise InvalidKey("a scope must not contain NUL characters")
    if len(scope) <= KEY_LENGTH:
        _check_text(scope, "scope")
        return scope
    digest = hashlib.sha256(scope.encode("utf-8", "surrogatepass")).hexdigest()
    keep = KEY_LENGTH - _SCOPE_DIGEST_CHARS - 1
    return f"{scope[:keep]}#{digest}"


def resolve_path(path: str, arguments: dict[str, Any]) -> object:
    """Follow a dotted parameter path such as ``"order.id"`` through bound arguments.

    Each step after the first reads an attribute, or an item when the value is a mapping.
    """
    head, *rest = path.split(".")
    if head not in arguments:
        raise KeyError(head)
    value: object = arguments[head]
    for index, part in enumerate(rest):
        if value is None:
            return None
        if isinstance(value, dict):
            value = value.get(part)
            continue
        try:
            value = getattr(value, part)
        except AttributeError:
            where = ".".join([head, *rest[:index]])
            raise AttributeError(
                f"{where} ({type(value).__name__}) has no attribute {part!r}; check the path's spelling"
            ) from None
    return value


def explain_none(path: str, arguments: dict[str, Any]) -> str:
    """Say where a dotted path met ``None``: a mapping without the key, or a ``None`` on the way."""
    head, *rest = path.split(".")
    value: object = arguments.get(head)
    for index, part in enumerate(rest):
        where = ".".join([head, *rest[:index]])
        if value is None:
            return f"{where} is None"
        if isinstance(value, dict):
            if part not in value:
                keys = ", ".join(map(str, list(value)[:10])) or "none"
                return f"{where} has no key {part!r} (its keys: {keys})"
            value = value[part]
        else:
            value = getattr(value, part, None)
    return f"{path} is None"


KeyFunction = Callable[..., object]

"""Decoration-time rules and what the wrapper preserves."""

from __future__ import annotations

import inspect
import uuid
import warnings
from dataclasses import dataclass
from typing import Any

import pytest

from idempotent import InvalidKey, KeyReused, MissingKey, idempotent
from idempotent.errors import ConfigurationError, IdempotencyWarning
from idempotent.testing import MemoryStore

STORE = MemoryStore()


@idempotent(key_from="order_id", store=STORE)
def module_level(order_id: str, amount: int = 1) -> int:
    """Docstring kept."""
    return amount


@idempotent(key_from="order_id", store=STORE)
async def module_level_async(order_id: str) -> int:
    return 1


def test_wrapper_preserves_name_doc_signature_and_kind() -> None:
    """Name, docstring, signature (__wrapped__) and sync/async kind survive decoration."""
    assert module_level.__name__ == "module_level"
    assert module_level.__doc__ == "Docstring kept."
    assert inspect.signature(module_level) == inspect.signature(module_level.__wrapped__)
    assert not inspect.iscoroutinefunction(module_level)
    assert inspect.iscoroutinefunction(module_level_async)


def test_generators_are_rejected() -> None:
    """Generators and async generators are a TypeError saying why."""
    with pytest.raises(TypeError, match="generator"):

        @idempotent(key_from="k", scope="g")
        def gen(k: str) -> Any:
            yield k

    with pytest.raises(TypeError, match="generator"):

        @idempotent(key_from="k", scope="g")
        async def agen(k: str) -> Any:
            yield k


def test_decorating_twice_is_an_error() -> None:
    """A function decorated twice is refused at decoration time."""
    with pytest.raises(ConfigurationError, match="already decorated"):
        idempotent(key_from="order_id", scope="twice")(module_level)


def test_unknown_key_parameter_is_an_error() -> None:
    """key_from naming no parameter fails at decoration, listing the parameters."""
    with pytest.raises(ConfigurationError, match="order_id, amount"):

        @idempotent(key_from="missing", scope="x")
        def f(order_id: str, amount: int) -> None: ...


def test_local_function_without_scope_warns() -> None:
    """Functions whose default scope changes between runs get a warning recommending scope=."""
    with pytest.warns(IdempotencyWarning, match="scope="):

        @idempotent(key_from="k", store=STORE)
        def local(k: str) -> None: ...

    with warnings.catch_warnings():
        warnings.simplefilter("error")

        @idempotent(key_from="k", store=STORE, scope="explicit")
        def explicit(k: str) -> None: ...


@dataclass
class Order:
    """An argument with a nested id."""

    id: uuid.UUID
    amount: int


def test_dotted_and_callable_keys_and_positional_keyword_equivalence() -> None:
    """A dotted key path and a key callable work; positional and keyword calls are the same call."""
    store = MemoryStore()
    runs = []

    @idempotent(key_from="order.id", scope="dotted", store=store)
    def by_path(order: Order, note: str = "") -> int:
        runs.append("path")
        return order.amount

    @idempotent(key_from=lambda a, b: f"{a}-{b}", scope="callable", store=store)
    def by_callable(a: int, b: int) -> int:
        runs.append("callable")
        return a + b

    order = Order(uuid.UUID(int=5), 3)
    assert by_path(order) == by_path(order=order, note="") == 3
    assert by_callable(1, 2) == by_callable(a=1, b=2) == 3
    assert runs == ["path", "callable"]
    assert store.get("dotted", str(uuid.UUID(int=5))) is not None


def test_fingerprint_options() -> None:
    """fingerprint=[names] compares only those; fingerprint=False never refuses a reuse."""
    store = MemoryStore()

    @idempotent(key_from="k", scope="fp-names", store=store, fingerprint=["amount"])
    def named(k: str, amount: int, trace_id: str) -> int:
        return amount

    @idempotent(key_from="k", scope="fp-off", store=store, fingerprint=False)
    def off(k: str, amount: int) -> int:
        return amount

    assert named("a", 1, "t1") == named("a", 1, "t2") == 1
    with pytest.raises(KeyReused):
        named("a", 2, "t1")
    assert off("b", 1) == off("b", 2) == 1


def test_bad_keys_raise_invalid_or_missing() -> None:
    """A float key is InvalidKey naming the type; a None key is MissingKey."""
    with pytest.raises(InvalidKey, match="float"):
        module_level(1.5)  # type: ignore[arg-type]
    with pytest.raises(MissingKey):
        module_level(None)  # type: ignore[arg-type]


def test_bare_decorator_needs_key_from() -> None:
    """@idempotent without key_from says what to pass."""
    with pytest.raises(ConfigurationError, match="key_from"):
        idempotent()  # type: ignore[call-overload]

"""Results, keys and arguments of unusual types: replayed as the first call returned them, or
refused with a clear error (never a raw ValueError)."""

from __future__ import annotations

import dataclasses
import enum
import sys
from typing import Any

import pytest

from idempotent import InvalidKey, idempotent
from idempotent.codec import JsonCodec
from idempotent.errors import ConfigurationError
from idempotent.fingerprint import digest
from idempotent.keys import normalise_key
from tests.conftest import Db


class Colour(str, enum.Enum):
    """A str-mixin enum."""

    RED = "red"
    BLUE = "blue"


class Size(enum.IntEnum):
    """An int enum."""

    S = 1
    L = 3


if sys.version_info >= (3, 11):
    from enum import StrEnum

    class Mood(StrEnum):
        """A StrEnum (Python 3.11+)."""

        CALM = "calm"
else:  # pragma: no cover - older Pythons have no StrEnum
    Mood = Colour


@dataclasses.dataclass(frozen=True)
class Paint:
    """A dataclass with enum fields."""

    colour: Colour
    mood: Mood
    litres: float


HUGE = 7**6000  # 5,071 digits: more than Python converts to decimal text by default

CASES: list[tuple[str, Any, Any]] = [
    ("str-enum", Colour, Colour.BLUE),
    ("strenum", Mood, Mood.CALM),
    ("int-enum", Size, Size.L),
    ("dataclass-with-enums", Paint, Paint(Colour.RED, Mood.CALM, 1.5)),
    ("float-annotation-int-value", float, 3),
    ("float-annotation-float-value", float, 3.0),
    ("huge-int", int, HUGE),
    ("lone-surrogate-str", str, "a\udcffb"),
]


def _returning(db: Db, name: str, hint: Any, value: Any) -> Any:
    """A decorated ``fn(conn, ref)`` annotated ``-> hint`` returning ``value``; counts its runs."""
    runs: list[int] = []
    scope = f"tests.types.{name}"
    if db.is_async:

        async def afn(conn: Any, ref: str) -> Any:
            runs.append(1)
            return value

        afn.__annotations__["return"] = hint
        return idempotent(key_from="ref", scope=scope, store=db.store)(afn), runs

    def fn(conn: Any, ref: str) -> Any:
        runs.append(1)
        return value

    fn.__annotations__["return"] = hint
    return idempotent(key_from="ref", scope=scope, store=db.store)(fn), runs


@pytest.mark.parametrize(("name", "hint", "value"), CASES, ids=[c[0] for c in CASES])
def test_replay_has_the_first_results_type(db: Db, name: str, hint: Any, value: Any) -> None:
    """The replay equals the first call's result and has its exact type, fields included."""
    fn, runs = _returning(db, name, hint, value)

    async def acall() -> Any:
        async with db.async_engine.connect() as conn:
            return await fn(conn, "k")

    def call() -> Any:
        if db.is_async:
            return db.run(acall())
        with db.engine.connect() as conn:
            return fn(conn, "k")

    first, again = call(), call()
    assert runs == [1]
    assert again == first == value
    assert type(again) is type(value)
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            assert type(getattr(again, f.name)) is type(getattr(value, f.name))


def test_unannotated_str_enum_is_stored_as_its_value() -> None:
    """A str enum the annotation does not name (a dict value, say) is stored as its plain value."""
    codec = JsonCodec()
    assert codec.loads(codec.dumps({"c": Colour.RED}, dict[str, Any]), dict[str, Any]) == {"c": "red"}


def test_int_key_over_the_digit_limit_is_invalid_key() -> None:
    """A key of thousands of digits is InvalidKey naming the length rule, not Python's ValueError."""
    with pytest.raises(InvalidKey, match="at most 255 characters"):
        normalise_key(HUGE)
    with pytest.raises(InvalidKey, match="at most 255 characters"):
        normalise_key(10**300)
    assert normalise_key(10**254) == "1" + "0" * 254


def test_int_argument_over_the_digit_limit_has_a_fingerprint() -> None:
    """An argument of thousands of digits is fingerprinted (stably, and apart from its neighbour)."""
    one = digest({"n": HUGE}, "f")
    assert one == digest({"n": HUGE}, "f")
    assert one != digest({"n": HUGE + 1}, "f")
    assert digest({"n": 12}, "f") == digest({"n": 12}, "f")


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_max_result_bytes_must_be_positive(bad: Any) -> None:
    """max_result_bytes=0 (or any non-positive or non-int value) is refused at decoration."""
    with pytest.raises(ConfigurationError, match="max_result_bytes must be a positive number of bytes"):

        @idempotent(key_from="k", scope="tests.types.max", max_result_bytes=bad)
        def fn(k: str) -> None:
            return None

"""The pure parts, no database: keys, scopes, fingerprints, result encoding and the decision core."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import uuid
from typing import Any, Optional

import pytest

from idempotent import InvalidKey, SerializationError
from idempotent.codec import JsonCodec, PickleSerializer, encode_checked
from idempotent.core import Decision, Outcome, Record, decide
from idempotent.fingerprint import digest
from idempotent.keys import normalise_key, normalise_scope

# -- keys -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("abc", "abc"),
        (" padded ", " padded "),
        (1, "1"),
        (-42, "-42"),
        (uuid.UUID("12345678-1234-5678-1234-567812345678"), "12345678-1234-5678-1234-567812345678"),
        ("é" * 255, "é" * 255),
    ],
)
def test_key_normalisation(value: object, text: str) -> None:
    """str stays as given, int becomes decimal text, UUID its lowercase canonical form."""
    assert normalise_key(value) == text


def test_int_and_str_keys_are_the_same_key() -> None:
    """1 and "1" are documented to be the same key."""
    assert normalise_key(1) == normalise_key("1")


def test_none_means_no_key() -> None:
    """None is "no key", decided by `required`."""
    assert normalise_key(None) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "not bool"),
        (1.5, "not float"),
        (b"raw", "not bytes"),
        (["a"], "not list"),
        ("", "must not be empty"),
        ("x" * 256, "at most 255"),
        ("a\x00b", "NUL"),
        ("\ud800", "lone surrogate"),
    ],
)
def test_invalid_keys_name_the_problem(value: object, message: str) -> None:
    """Wrong types and texts raise InvalidKey saying which rule they break."""
    with pytest.raises(InvalidKey, match=message):
        normalise_key(value)


def test_long_scope_is_prefix_plus_digest() -> None:
    """Scopes over 255 characters are stored as a readable prefix and a SHA-256 digest, distinct per scope."""
    a = normalise_scope("POST /orders/" + "x" * 400 + "/a")
    b = normalise_scope("POST /orders/" + "x" * 400 + "/b")
    assert len(a) == 255 and len(b) == 255
    assert a.startswith("POST /orders/xxx")
    assert a != b
    assert normalise_scope("short") == "short"


# -- fingerprints ---------------------------------------------------------------------------------


def test_fingerprint_distinguishes_types() -> None:
    """1, 1.0, True and "1" give four different fingerprints."""
    prints = {digest({"a": v}, "f") for v in (1, 1.0, True, "1")}
    assert len(prints) == 4


def test_fingerprint_is_versioned_and_order_independent_for_mappings() -> None:
    """The digest carries a v1: prefix and ignores dict insertion order."""
    one = digest({"a": {"x": 1, "y": 2}}, "f")
    two = digest({"a": {"y": 2, "x": 1}}, "f")
    assert one == two
    assert one.startswith("v1:")


def test_unencodable_argument_names_parameter_and_fix() -> None:
    """An argument with no stable encoding names the parameter and how to exclude it."""
    with pytest.raises(SerializationError, match=r"argument 'request'.*fingerprint=\["):
        digest({"request": object()}, "app.view")


# -- results --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Line:
    """A nested dataclass."""

    sku: str
    qty: int


@dataclasses.dataclass
class Order:
    """A dataclass result with typed fields."""

    id: uuid.UUID
    total: decimal.Decimal
    placed: dt.datetime
    lines: list[Line]
    note: Optional[str] = None  # noqa: UP045  (Optional[...] is what users write; it must work)


class Colour(enum.Enum):
    """An enum result."""

    RED = "red"


ROUND_TRIPS: list[tuple[Any, Any]] = [
    (None, None),
    (0, int),
    (False, bool),
    ("", str),
    ([], list),
    ({}, dict),
    (0.0, float),
    (1.5, float),
    (decimal.Decimal("0.10"), decimal.Decimal),
    (dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone(dt.timedelta(hours=2))), dt.datetime),
    (dt.datetime(2026, 1, 2, 3, 4, 5), dt.datetime),
    (dt.date(2026, 1, 2), dt.date),
    (uuid.UUID(int=7), uuid.UUID),
    ((1, "a"), tuple[int, str]),
    ({1: "a"}, dict[int, str]),
    ({"$t": "looks like a tag"}, dict),
    ({"a", "b"}, set[str]),
    (b"\x00\xff", bytes),
    (Colour.RED, Colour),
    (
        Order(
            uuid.UUID(int=1),
            decimal.Decimal("9.99"),
            dt.datetime(2026, 5, 1, tzinfo=dt.timezone.utc),
            [Line("a", 2)],
        ),
        Order,
    ),
    ([Line("b", 1)], list[Line]),
    ("日本語 ✓", str),
]


@pytest.mark.parametrize(("value", "hint"), ROUND_TRIPS)
def test_json_codec_round_trips_value_and_type(value: Any, hint: Any) -> None:
    """Replay returns an equal value of the same type, for every supported kind."""
    codec = JsonCodec()
    back = codec.loads(codec.dumps(value, hint), hint)
    assert back == value
    assert type(back) is type(value)


def test_optional_dataclass_result() -> None:
    """Optional[Order] rebuilds an Order, and None stays None."""
    codec = JsonCodec()
    order = Order(uuid.UUID(int=2), decimal.Decimal(1), dt.datetime(2026, 1, 1), [])
    assert codec.loads(codec.dumps(order, Optional[Order]), Optional[Order]) == order  # noqa: UP045
    assert codec.loads(codec.dumps(None, Optional[Order]), Optional[Order]) is None  # noqa: UP045


def test_class_not_in_annotation_is_refused_before_storing() -> None:
    """A dataclass the annotation does not name is refused: a row never picks a class by itself."""
    with pytest.raises(SerializationError, match="return annotation"):
        JsonCodec().dumps(Line("a", 1), Any)


def test_row_cannot_name_a_class_the_annotation_lacks() -> None:
    """Decoding with an annotation that no longer names the stored class fails clearly."""
    text = JsonCodec().dumps(Line("a", 1), Line)
    with pytest.raises(SerializationError, match="no longer names"):
        JsonCodec().loads(text, Order)


def test_pydantic_model_round_trip() -> None:
    """pydantic v2 models come back as the annotated model class."""
    pydantic = pytest.importorskip("pydantic")

    class Payment(pydantic.BaseModel):  # type: ignore[misc,name-defined]
        id: int
        amount: decimal.Decimal
        at: dt.datetime

    value = Payment(id=1, amount=decimal.Decimal("2.50"), at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    codec = JsonCodec()
    back = codec.loads(codec.dumps(value, Payment), Payment)
    assert back == value and type(back) is Payment


def test_size_limit_is_enforced() -> None:
    """Results over the limit are an error, never truncated."""
    with pytest.raises(SerializationError, match="10-byte limit"):
        encode_checked(JsonCodec(), "x" * 100, str, 10)


def test_pickle_serializer_is_opt_in_and_round_trips() -> None:
    """The opt-in pickle serializer stores arbitrary picklable values."""
    pickle = PickleSerializer()
    assert pickle.loads(pickle.dumps(Line("a", 1), None), None) == Line("a", 1)


# -- decisions ------------------------------------------------------------------------------------


def _record(**changes: Any) -> Record:
    base = {
        "scope": "s",
        "key": "k",
        "fingerprint": "v1:a",
        "status": "completed",
        "owner": "o",
        "locked_until": 2_000,
        "created_at": 1_000,
        "expires_at": 10_000,
    }
    base.update(changes)
    return Record(**base)


@pytest.mark.parametrize(
    ("record", "fingerprint", "now", "outcome"),
    [
        (_record(), "v1:a", 5_000, Outcome.REPLAY),
        (_record(), None, 5_000, Outcome.REPLAY),
        (_record(fingerprint=None), "v1:b", 5_000, Outcome.REPLAY),
        (_record(), "v1:b", 5_000, Outcome.MISMATCH),
        (_record(status="failed"), "v1:a", 5_000, Outcome.RAISE_STORED),
        (_record(expires_at=5_000), "v1:b", 5_000, Outcome.TAKEOVER),
        (_record(status="in_progress", locked_until=5_000), "v1:a", 5_000, Outcome.TAKEOVER),
        (_record(status="in_progress", locked_until=5_000), "v1:b", 5_000, Outcome.MISMATCH),
    ],
)
def test_decide(record: Record, fingerprint: str | None, now: int, outcome: Outcome) -> None:
    """Expired rows are absent; mismatches are refused; completed replays; dead leases are taken over."""
    assert decide(record, fingerprint, now).outcome is outcome


def test_decide_wait_carries_seconds_left() -> None:
    """A live lease means wait, with the seconds until it ends."""
    assert decide(_record(status="in_progress", locked_until=7_500), "v1:a", 5_000) == Decision(
        Outcome.WAIT, retry_after=2.5
    )

"""The delivery ledger's records: subjects that find one event or one subscription, and a JSON
form that reads back as written."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventing.delivery import ledger
from eventing.delivery.ledger import AttemptRecord, Record

RECORD = Record(
    subscription="default/orders",
    source="/shop",
    id="A-1",
    type="order.created.v1",
    sequence=7,
    origin="live",
    outcome="retrying",
    time=1_700_000_000.5,
    attempt=AttemptRecord(1, 1_700_000_000.0, 0.25, "answered", 503, "sink answered 503", "busy"),
    reason="sink answered 503",
)


def test_a_record_reads_back_as_written() -> None:
    assert Record.from_bytes(RECORD.to_bytes()) == RECORD
    without = Record(**{**RECORD.to_dict(), "attempt": None})
    assert Record.from_bytes(without.to_bytes()) == without


def test_one_event_at_every_subscription_shares_a_subject_prefix() -> None:
    orders = ledger.subject("/shop", "A-1", "default/orders")
    audit = ledger.subject("/shop", "A-1", "default/audit")
    other = ledger.subject("/shop", "A-2", "default/orders")
    assert orders.split(".")[:2] == audit.split(".")[:2] != other.split(".")[:2]
    assert orders.split(".")[2] == other.split(".")[2] != audit.split(".")[2]
    assert RECORD.subject == orders


def test_the_key_separates_source_and_id() -> None:
    assert ledger.event_key("/a", "b\nc") != ledger.event_key("/a\nb", "c")


@pytest.mark.parametrize("data", [b"[]", b'{"subscription": "x"}', b"not json"])
def test_what_is_no_record_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        Record.from_bytes(data)


def test_the_shown_form_has_rfc3339_times_and_only_the_fields_that_say_something() -> None:
    delivered = Record(
        **{
            **RECORD.to_dict(),
            "outcome": "delivered",
            "reason": "",
            "attempt": AttemptRecord(2, 1_700_000_001.0, 0.01, "answered", 204),
        }
    )
    shown = delivered.shown()
    assert shown["time"] == "2023-11-14T22:13:20.500Z"
    assert shown["attempt"] == {
        "number": 2,
        "time": "2023-11-14T22:13:21.000Z",
        "seconds": 0.01,
        "kind": "answered",
        "status": 204,
    }


def test_a_record_is_stored_on_its_subject() -> None:
    message = RECORD.message()
    assert (message.subject, Record.from_bytes(message.payload)) == (RECORD.subject, RECORD)


def test_the_json_form_holds_every_field() -> None:
    assert RECORD.to_dict() == dataclasses.asdict(RECORD)
    without = Record(**{**RECORD.to_dict(), "attempt": None})
    assert without.to_dict() == dataclasses.asdict(without)


_TEXT = st.text()  # lone surrogates included: a sink's answer is decoded with replacement, ids not
_FLOATS = st.floats(allow_nan=True, allow_infinity=True)
_ATTEMPTS = st.builds(
    AttemptRecord,
    number=st.integers(0, 2**40),
    time=_FLOATS,
    seconds=_FLOATS,
    kind=_TEXT,
    status=st.none() | st.integers(100, 999),
    error=_TEXT,
    answer=_TEXT,
)
_RECORDS = st.builds(
    Record,
    subscription=_TEXT,
    source=_TEXT,
    id=_TEXT,
    type=_TEXT,
    sequence=st.integers(0, 2**63),
    origin=_TEXT,
    outcome=_TEXT,
    time=_FLOATS,
    attempt=st.none() | _ATTEMPTS,
    reason=_TEXT,
)


@given(_RECORDS)
def test_the_stored_bytes_are_those_json_dumps_makes(record: Record) -> None:
    # Written out field by field for speed; records stored before are read the same way.
    assert record.to_bytes() == json.dumps(record.to_dict(), separators=(",", ":")).encode()


@given(_TEXT, _TEXT)
def test_the_event_key_hashes_the_pair_as_json(source: str, event_id: str) -> None:
    pair = json.dumps([source, event_id]).encode()
    assert ledger.event_key(source, event_id) == hashlib.blake2b(pair, digest_size=16).hexdigest()

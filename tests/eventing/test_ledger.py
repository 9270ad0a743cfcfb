"""The delivery ledger's records: subjects that find one event or one subscription, and a JSON
form that reads back as written."""

from __future__ import annotations

import pytest

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

"""Legacy Kyma events: Kyma's validation answers, and the one CloudEvent we store."""

from __future__ import annotations

import json
from typing import Any

import pytest

from eventing.errors import InvalidLegacyEvent
from eventing.events import legacy

PREFIX = "sap.kyma.custom"
VALID = {
    "event-type": "order.created",
    "event-type-version": "v1",
    "event-time": "2020-04-02T21:37:00Z",
    "data": {"a": 1},
}


def body(**changes: Any) -> bytes:
    document = {**VALID, **changes}
    return json.dumps({k: v for k, v in document.items() if v is not ...}).encode()


def test_conversion_keeps_app_as_source_and_type_as_written() -> None:
    converted = legacy.parse(
        "commerce", body(**{"event-id": "8954ad1c-78ed-4c58-a639-68bd44031de0"}), PREFIX
    )
    attributes = converted.event.get_attributes()
    assert converted.subject == "kyma.sap.kyma.custom.commerce.order.created.v1"
    assert attributes["id"] == "8954ad1c-78ed-4c58-a639-68bd44031de0"
    assert attributes["source"] == "commerce"
    assert attributes["type"] == "order.created.v1"
    assert attributes["originaltype"] == "order.created.v1"
    assert attributes["eventtypeversion"] == "v1"
    assert attributes["datacontenttype"] == "application/json"
    assert attributes["time"] == "2020-04-02T21:37:00Z"  # as published
    assert converted.event.get_data() == {"a": 1}


def test_missing_id_gets_a_fresh_uuid() -> None:
    first = legacy.parse("app", body(), PREFIX).event.get_id()
    second = legacy.parse("app", body(), PREFIX).event.get_id()
    assert first != second and len(first) == 36


def test_string_data_stays_a_json_string() -> None:
    assert legacy.parse("app", body(data="some text"), PREFIX).event.get_data() == "some text"


@pytest.mark.parametrize(
    ("raw", "kind", "field", "field_kind"),
    [
        (b"", "bad_payload_syntax", None, None),
        (b"{not json", "bad_payload_syntax", None, None),
        (b"[1, 2]", "bad_payload_syntax", None, None),
        (body(**{"event-type": 5}), "bad_payload_syntax", None, None),
        (body(**{"event-type": ...}), "validation_violation", "event-type", "missing_field"),
        (body(**{"event-type": ""}), "validation_violation", "event-type", "missing_field"),
        (
            body(**{"event-type-version": ...}),
            "validation_violation",
            "event-type-version",
            "missing_field",
        ),
        (
            body(**{"event-type-version": "..."}),
            "validation_violation",
            "event-type-version",
            "invalid_field",
        ),
        (body(**{"event-time": ...}), "validation_violation", "event-time", "missing_field"),
        (
            body(**{"event-time": "yesterday"}),
            "validation_violation",
            "event-time",
            "invalid_field",
        ),
        (body(**{"event-id": "not-a-uuid"}), "validation_violation", "event-id", "invalid_field"),
        (body(data=...), "validation_violation", "data", "missing_field"),
        (body(data=None), "validation_violation", "data", "missing_field"),
        (body(data=""), "validation_violation", "data", "missing_field"),
        (body(**{"event-type": "order..created"}), "bad_payload_syntax", None, None),
    ],
)
def test_kyma_validation(raw: bytes, kind: str, field: str | None, field_kind: str | None) -> None:
    with pytest.raises(InvalidLegacyEvent) as caught:
        legacy.parse("app", raw, PREFIX)
    assert caught.value.kind == kind
    assert caught.value.field == field
    assert caught.value.field_kind == field_kind


def test_version_needs_only_one_alphanumeric_character_as_in_kyma() -> None:
    assert (
        legacy.parse("app", body(**{"event-type-version": "-1-"}), PREFIX).event.get_type()
        == "order.created.-1-"
    )


def test_application_that_is_no_valid_source_is_a_payload_error() -> None:
    with pytest.raises(InvalidLegacyEvent) as caught:
        legacy.parse("my app", body(), PREFIX)
    assert caught.value.kind == "bad_payload_syntax"
    assert "source" in (caught.value.more_info or "")

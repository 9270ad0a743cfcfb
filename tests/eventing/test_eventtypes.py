"""Subjects from event types: Kyma's cleaning vectors and our one-copy legacy scheme."""

from __future__ import annotations

import pytest

from eventing.errors import InvalidEvent
from eventing.events import eventtypes

PREFIX = "sap.kyma.custom"


def test_kyma_jetstream_cleaner_vector() -> None:
    # EM:pkg/backend/cleaner/jetstream_test.go
    raw = (
        "prefix.  testapp.\tSegment1.Segment2>*.Segment3<.Segment4>>-Part1/2-Part2\\3-Ä"
        ".Segment5-Part1-Ä.v1"
    )
    assert eventtypes.clean_type(raw) == (
        "prefix.testapp.Segment1.Segment2.Segment3<.Segment4-Part12-Part23-Ä.Segment5-Part1-Ä.v1"
    )


@pytest.mark.parametrize(
    ("source", "event_type", "subject"),
    [
        ("myapp", "order.received.v1", "kyma.myapp.order.received.v1"),  # Kyma's worked example
        ("noapp", "order.created.v1", "kyma.noapp.order.created.v1"),
        ("my.app/x y", "order.created.v1", "kyma.myappxy.order.created.v1"),
        (
            "test-app",
            "Order-$.third.R-e-c-e-i-v-e-d.v1",
            "kyma.test-app.Order-$.third.R-e-c-e-i-v-e-d.v1",
        ),
        (
            "test-evnt",
            "DocuSing_BO.Account_DocuSign.Updated.v1",
            "kyma.test-evnt.DocuSing_BO.Account_DocuSign.Updated.v1",
        ),
    ],
)
def test_standard_subject(source: str, event_type: str, subject: str) -> None:
    assert eventtypes.subject_for(source, event_type, PREFIX) == subject


@pytest.mark.parametrize(
    ("source", "event_type"),
    [
        ("app", "order..created.v1"),
        ("app", ">*"),
        ("...", "order.created.v1"),
        ("app", "order.created."),
    ],
)
def test_empty_segments_after_cleaning_are_refused(source: str, event_type: str) -> None:
    with pytest.raises(
        InvalidEvent, match="event type cannot have empty segments after cleaning"
    ) as caught:
        eventtypes.subject_for(source, event_type, PREFIX)
    assert caught.value.attribute == "type"


@pytest.mark.parametrize(
    ("event_type", "subject"),
    [
        ("sap.kyma.custom.noapp.order.created.v1", "kyma.sap.kyma.custom.noapp.order.created.v1"),
        (
            "sap.kyma.custom.commerce.Account.Order.Created.v1",
            "kyma.sap.kyma.custom.commerce.AccountOrder.Created.v1",
        ),
        (
            "sap.kyma.custom.test-app.Order-$.Created.v1",
            "kyma.sap.kyma.custom.testapp.Order.Created.v1",
        ),
    ],
)
def test_prefixed_types_take_kymas_legacy_cleaner(event_type: str, subject: str) -> None:
    assert eventtypes.subject_for("any-source", event_type, PREFIX) == subject


@pytest.mark.parametrize(
    "event_type",
    [
        "sap.kyma.custom.app.created.v1",
        "sap.kyma.custom.app..created.v1",
        "sap.kyma.custom.app.$.created.v1",
    ],
)
def test_prefixed_types_need_four_clean_segments(event_type: str) -> None:
    with pytest.raises(InvalidEvent):
        eventtypes.subject_for("src", event_type, PREFIX)


def test_prefix_counts_only_at_a_segment_boundary() -> None:
    assert (
        eventtypes.subject_for("src", "sap.kyma.customer.a.b.v1", PREFIX)
        == "kyma.src.sap.kyma.customer.a.b.v1"
    )


@pytest.mark.parametrize(
    ("application", "event_name", "version", "subject"),
    [
        ("commerce", "order.created", "v1", "kyma.sap.kyma.custom.commerce.order.created.v1"),
        (
            "commerce",
            "Account.Order.Created",
            "v1",
            "kyma.sap.kyma.custom.commerce.AccountOrder.Created.v1",
        ),
        (
            "test-app",
            "Order-$.third.R-e-c-e-i-v-e-d",
            "v1",
            "kyma.sap.kyma.custom.testapp.Orderthird.Received.v1",
        ),
        (
            "test-evnt",
            "New.Some-Other.Order-äöüÄÖÜβ.Final.C-r-e-a-t-e-d",
            "v1",
            "kyma.sap.kyma.custom.testevnt.NewSomeOtherOrderFinal.Created.v1",
        ),
        ("app", "created", "v1", "kyma.sap.kyma.custom.app.created.v1"),
    ],
)
def test_legacy_subject(application: str, event_name: str, version: str, subject: str) -> None:
    assert eventtypes.legacy_subject(application, event_name, version, PREFIX) == subject


def test_legacy_event_and_exact_prefixed_type_share_a_subject() -> None:
    """An exact subscription to the prefixed type sees the one stored legacy copy."""
    legacy = eventtypes.legacy_subject("commerce", "Account.Order.Created", "v1", PREFIX)
    exact = eventtypes.subject_for("", "sap.kyma.custom.commerce.AccountOrder.Created.v1", PREFIX)
    assert legacy == exact


@pytest.mark.parametrize(
    ("source", "event_type", "legacy_path", "legacy_body_type"),
    [
        ("noapp", "order.modified.v1", "noapp", "order.modified"),
        (
            "test-app",
            "Order-$.third.R-e-c-e-i-v-e-d.v1",
            "test-app",
            "Order-$.third.R-e-c-e-i-v-e-d",
        ),
        (
            "test-evnt",
            "or-der.crea-ted.one.two.three.four.v4",
            "test-evnt",
            "or-der.crea-ted.one.two.three.four",
        ),
        (
            "test-evnt",
            "DocuSing_BO.Account_DocuSign.Updated.v1",
            "test-evnt",
            "DocuSing_BO.Account_DocuSign.Updated",
        ),
    ],
)
def test_standard_subscription_finds_the_legacy_copy(
    source: str, event_type: str, legacy_path: str, legacy_body_type: str
) -> None:
    """Kyma's e2e matrix publishes to standard subscriptions through the legacy endpoint."""
    version = event_type.rsplit(".", 1)[1]
    published = eventtypes.legacy_subject(legacy_path, legacy_body_type, version, PREFIX)
    assert eventtypes.legacy_subject_of_type(source, event_type, PREFIX) == published


def test_no_legacy_subject_for_types_without_a_version() -> None:
    assert eventtypes.legacy_subject_of_type("app", "created", PREFIX) is None
    assert eventtypes.legacy_subject_of_type("---", "order.created.v1", PREFIX) is None

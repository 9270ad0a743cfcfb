"""Subscription manifests: Kyma's validation, consumer names, /subscribed."""

from __future__ import annotations

import copy
import datetime
from typing import Any

import pytest

from eventing.delivery.credentials import SecretRef, SinkCredentials
from eventing.delivery.retries import DeliveryPolicy
from eventing.errors import InvalidSubscription
from eventing.subscriptions.model import (
    MAX_TYPES,
    Subscription,
    consumer_name,
    from_manifest,
    subscribed,
)

PREFIX = "sap.kyma.custom"
DEFAULTS = DeliveryPolicy(
    retry=5,
    backoff_policy="exponential",
    backoff_delay=1.0,
    backoff_max=300.0,
    timeout=10.0,
    retry_after_max=300.0,
    in_job_wait_max=15.0,
)
MANIFEST: dict[str, Any] = {
    "apiVersion": "eventing.kyma-project.io/v1alpha2",
    "kind": "Subscription",
    "metadata": {"name": "lastorder-sub", "namespace": "default"},
    "spec": {
        "sink": "http://127.0.0.1:9000/events",
        "source": "myapp",
        "types": ["order.received.v1"],
    },
}


def manifest(spec: dict[str, Any] | None = None, **metadata: Any) -> dict[str, Any]:
    document = copy.deepcopy(MANIFEST)
    document["spec"].update(spec or {})
    document["spec"] = {k: v for k, v in document["spec"].items() if v is not ...}
    document["metadata"].update(metadata)
    return document


def parse(document: dict[str, Any]) -> Subscription:
    return from_manifest(document, prefix=PREFIX, defaults=DEFAULTS, default_max_in_flight=10)


def test_kymas_consumer_names() -> None:
    # kyma-eventing.md §5.2: both worked examples
    assert (
        consumer_name("test", "test", "kyma.commerce.order.created.v1")
        == "5ddf41966d8084724770dca95a2f7452"
    )
    [binding] = parse(manifest()).bindings
    assert binding.consumer_name == "f35b73b3b82a5b1a2a7a8ab796a9e68b"


def test_standard_subscription_listens_on_its_subject_and_the_legacy_one() -> None:
    subscription = parse(manifest())
    assert subscription.key == "default/lastorder-sub"
    assert subscription.type_matching == "standard"
    assert subscription.max_in_flight == 10
    assert subscription.delivery == DEFAULTS
    [binding] = subscription.bindings
    assert binding.subjects == (
        "kyma.myapp.order.received.v1",
        "kyma.sap.kyma.custom.myapp.order.received.v1",
    )


def test_exact_subscription_to_a_prefixed_type() -> None:
    subscription = parse(
        manifest(
            {
                "typeMatching": "exact",
                "source": "",
                "types": ["sap.kyma.custom.commerce.order.created.v1"],
            }
        )
    )
    [binding] = subscription.bindings
    assert binding.subjects == ("kyma.sap.kyma.custom.commerce.order.created.v1",)
    assert binding.clean_type == "sap.kyma.custom.commerce.order.created.v1"


def test_namespace_defaults_and_config_is_read() -> None:
    document = manifest({"config": {"maxInFlightMessages": "1"}})
    del document["metadata"]["namespace"]
    subscription = parse(document)
    assert subscription.namespace == "default"
    assert subscription.max_in_flight == 1


def test_delivery_overrides_the_defaults_field_by_field() -> None:
    subscription = parse(
        manifest(
            {
                "delivery": {
                    "retry": 2,
                    "backoffPolicy": "linear",
                    "backoffDelay": "PT0.5S",
                    "timeout": "PT2S",
                    "retryAfterMax": "PT1M",
                }
            }
        )
    )
    assert subscription.delivery.retry == 2
    assert subscription.delivery.backoff_policy == "linear"
    assert subscription.delivery.backoff_delay == 0.5
    assert subscription.delivery.timeout == 2.0
    assert subscription.delivery.retry_after_max == 60.0
    assert subscription.delivery.backoff_max == DEFAULTS.backoff_max


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"typeMatching": "fuzzy"}, "spec.typeMatching: must be 'standard' or 'exact'"),
        ({"source": ""}, "spec.source: must not be empty"),
        ({"source": "has space"}, "spec.source: must be valid as per RFC 3986"),
        ({"types": []}, "spec.types: must not be empty"),
        ({"types": ...}, "spec.types: must not be empty"),
        ({"types": [""]}, "spec.types: must not be of length zero"),
        ({"types": ["order"]}, "spec.types: must have minimum 2 segments"),
        ({"types": ["a.b.v1", "a.b.v1"]}, "spec.types: must not have duplicate types: a.b.v1"),
        (
            {"types": ["sap.kyma.custom.app.order.created.v1"]},
            "must not have sap.kyma.custom as type prefix",
        ),
        ({"types": ["order..v1"]}, "empty segments"),
        (
            {"config": {"maxInFlightMessages": "ten"}},
            "maxInFlightMessages must be a stringified int value",
        ),
        ({"config": {"maxInFlightMessages": "0"}}, "must be between 1 and 10000"),
        ({"sink": ""}, "spec.sink: must not be empty"),
        ({"sink": "ftp://host/x"}, "spec.sink: must be an http(s) URL"),
        ({"sink": "http://:80/x"}, "spec.sink: must be an http(s) URL"),
        ({"delivery": {"retry": -1}}, "spec.delivery.retry: must be an integer from 0 to 100"),
        ({"delivery": {"retry": "3"}}, "spec.delivery.retry"),
        ({"delivery": {"backoffPolicy": "fibonacci"}}, "spec.delivery.backoffPolicy"),
        (
            {"delivery": {"backoffDelay": "1s"}},
            "spec.delivery.backoffDelay: expected an ISO-8601 duration",
        ),
        ({"delivery": {"timeout": "PT0S"}}, "spec.delivery.timeout: must be longer than zero"),
        ({"delivery": {"deadLetterSinc": "x"}}, "spec.delivery: unknown field(s) deadLetterSinc"),
        (
            {"delivery": {"deadLetterSink": "x"}},
            "spec.delivery.deadLetterSink: must be an http(s) URL, got 'x'",
        ),
        (
            {"delivery": {"deadLetterSink": "http://user:pw@dls/"}},
            "spec.delivery.deadLetterSink: credentials in the URL are not sent",
        ),
        (
            {"delivery": {"startFrom": "yesterday"}},
            "spec.delivery.startFrom: expected an RFC 3339 time such as 2026-12-01T10:00:00Z or a"
            " duration ago such as 15m or 2h, got 'yesterday'",
        ),
        ({"delivery": {"startFrom": "2026-12-01T10:00:00"}}, "spec.delivery.startFrom"),
        ({"delivery": {"startFrom": 15}}, "spec.delivery.startFrom"),
        ({"delivry": {"retry": 3}}, "spec: unknown field(s) delivry; expected config, delivery"),
        (
            {"typeMatching": "exact", "source": "", "types": ["a.*.b"]},
            "exact types must not contain",
        ),
    ],
)
def test_validation_names_the_field(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSubscription) as caught:
        parse(manifest(spec))
    assert message in str(caught.value)
    assert str(caught.value).startswith("Subscription validation failed: ")


@pytest.mark.parametrize(
    "written",
    ["15m", "2h", "2026-12-01T10:00:00Z", "2026-12-01T11:00:00+01:00"],
)
def test_start_from_is_kept_as_written_once_it_reads_as_a_moment(written: str) -> None:
    """A duration ago counts back from when the manager creates the consumers, not from now."""
    assert parse(manifest({"delivery": {"startFrom": written}})).start_from == written
    assert parse(manifest({})).start_from == ""


def test_an_unquoted_yaml_time_is_a_start_from_too() -> None:
    moment = datetime.datetime(2026, 12, 1, 10, tzinfo=datetime.UTC)
    assert parse(manifest({"delivery": {"startFrom": moment}})).start_from == moment.isoformat()


def test_every_problem_is_reported_together() -> None:
    with pytest.raises(InvalidSubscription) as caught:
        parse(manifest({"sink": "", "types": [], "source": ""}))
    assert len(caught.value.problems) == 3
    assert caught.value.key == "default/lastorder-sub"


def test_bad_names_and_kinds() -> None:
    with pytest.raises(InvalidSubscription, match=r"metadata.name: must be a DNS-1123 name"):
        parse(manifest(name="Bad_Name"))
    with pytest.raises(InvalidSubscription, match="apiVersion/kind"):
        parse({**manifest(), "apiVersion": "eventing.kyma-project.io/v1alpha1"})


def test_subscribed_lists_name_and_version_per_application() -> None:
    standard = parse(manifest({"types": ["order.created.v1", "order.deleted.v2"]}))
    exact = parse(
        manifest(
            {
                "typeMatching": "exact",
                "source": "",
                "types": ["sap.kyma.custom.myapp.invoice.paid.v1", "sap.kyma.custom.other.a.b.v1"],
            },
            name="exact",
        )
    )
    assert subscribed("myapp", (standard, exact), PREFIX) == [
        {"name": "invoice.paid", "version": "v1"},
        {"name": "order.created", "version": "v1"},
        {"name": "order.deleted", "version": "v2"},
    ]
    assert subscribed("nobody", (standard, exact), PREFIX) == []


def test_twenty_thousand_types_are_refused_at_the_cap() -> None:
    types = [f"order.created{i}.v1" for i in range(20_000)]
    with pytest.raises(InvalidSubscription) as caught:
        parse(manifest({"types": types}))
    assert caught.value.problems == [f"spec.types: at most {MAX_TYPES} types, got 20000"]


def test_types_up_to_the_cap_are_accepted_and_duplicates_found_among_them() -> None:
    types = [f"order.created{i}.v1" for i in range(MAX_TYPES)]
    assert len(parse(manifest({"types": types})).bindings) == MAX_TYPES
    with pytest.raises(InvalidSubscription) as caught:
        parse(manifest({"types": [*types[:-1], types[0]]}))
    assert caught.value.problems == ["spec.types: must not have duplicate types: order.created0.v1"]


def test_a_huge_wrong_value_is_shown_shortened() -> None:
    nested: list[Any] = ["x" * 10_000]
    for _ in range(50):
        nested = [nested, nested]
    for spec in (
        {"typeMatching": nested},
        {"delivery": {"retry": nested}},
        {"delivery": {"backoffPolicy": nested}},
        {"delivery": {"timeout": nested}},
        {"sink": "ftp://" + "x" * 100_000},
    ):
        with pytest.raises(InvalidSubscription) as caught:
            parse(manifest(spec))
        assert len(str(caught.value)) < 400


def test_keys_that_are_not_strings_are_reported_not_raised() -> None:
    with pytest.raises(InvalidSubscription) as caught:
        parse(manifest({1: "x", "delivery": {2: "y", "retry": 1}}))  # type: ignore[dict-item]
    assert "spec: unknown field(s) 1" in str(caught.value)
    assert "spec.delivery: unknown field(s) 2" in str(caught.value)


def test_the_spec_is_kept_as_written() -> None:
    written = {
        "sink": "http://127.0.0.1:9000/events",
        "source": "myapp",
        "types": ["order.received.v1"],
        "delivery": {"backoffDelay": "PT1S", "retry": 3},
        "config": {"maxInFlightMessages": 4, "since": datetime.date(2026, 1, 1)},
    }
    subscription = parse(manifest(written))
    assert subscription.spec_as_written() == {
        **written,
        "config": {"maxInFlightMessages": 4, "since": "2026-01-01"},
    }


@pytest.mark.parametrize(
    "sink", ["https://user:pass@example.com/events", "http://token@127.0.0.1:9000/events"]
)
def test_credentials_in_the_sink_url_are_refused_not_silently_dropped(sink: str) -> None:
    """requests prepares a request from a URL without sending its userinfo: on main such a
    subscription was valid, and its sink got no credentials at all."""
    with pytest.raises(InvalidSubscription) as raised:
        parse(manifest({"sink": sink}))
    message = str(raised.value)
    assert "spec.sink: credentials in the URL are not sent" in message
    assert "spec.delivery.auth" in message
    assert "pass" not in message.replace("password", "")  # the secret is not echoed


def test_delivery_secrets_are_references_in_the_subscriptions_namespace() -> None:
    subscription = parse(
        manifest(
            {
                "sink": "https://orders.example/events",
                "delivery": {
                    "signing": {"secretRef": {"name": "orders-signing", "key": "secret"}},
                    "auth": {"type": "basic", "secretRef": {"name": "orders-basic"}},
                    "tls": {"caRef": {"name": "orders-ca"}, "certRef": {"name": "orders-client"}},
                },
            },
            namespace="shop",
        )
    )
    found = subscription.credentials
    assert found.signing == SecretRef(namespace="shop", name="orders-signing", key="secret")
    assert found.auth_type == "basic"
    assert [(ref.name, ref.key) for ref in found.auth] == [
        ("orders-basic", "username"),
        ("orders-basic", "password"),
    ]
    assert (found.ca, found.cert, found.key) == (
        SecretRef(namespace="shop", name="orders-ca", key="ca.crt"),
        SecretRef(namespace="shop", name="orders-client", key="tls.crt"),
        SecretRef(namespace="shop", name="orders-client", key="tls.key"),
    )
    assert SinkCredentials.from_dict(found.to_dict()) == found


def test_secret_files_are_kept_as_written_until_a_folder_anchors_them() -> None:
    found = parse(
        manifest(
            {
                "delivery": {
                    "signing": {"secretFile": "secrets/orders.whsec"},
                    "auth": {"type": "bearer", "secretFile": "/run/token"},
                }
            }
        )
    ).credentials
    assert found.signing == SecretRef(file="secrets/orders.whsec")
    anchored = found.anchored("/srv/subscriptions")
    assert anchored.signing == SecretRef(file="/srv/subscriptions/secrets/orders.whsec")
    assert anchored.auth == (SecretRef(file="/run/token"),)


def test_a_subscription_without_secrets_has_none() -> None:
    assert not parse(manifest()).credentials


@pytest.mark.parametrize(
    ("delivery", "message"),
    [
        ({"signing": "whsec_abc"}, "spec.delivery.signing: must be a mapping"),
        ({"signing": {}}, "spec.delivery.signing: needs exactly one of secretFile and secretRef"),
        (
            {"signing": {"secretFile": "a", "secretRef": {"name": "b", "key": "c"}}},
            "spec.delivery.signing: needs exactly one of secretFile and secretRef",
        ),
        (
            {"signing": {"secretRef": {"name": "orders"}}},
            "spec.delivery.signing.secretRef.key: must name the key",
        ),
        (
            {"signing": {"secretRef": {"name": "Not_A_Name", "key": "k"}}},
            "spec.delivery.signing.secretRef.name: must be the name of a Secret",
        ),
        ({"signing": {"secret": "whsec_abc"}}, "spec.delivery.signing: unknown field(s) secret"),
        (
            {"auth": {"type": "digest", "secretFile": "a"}},
            "spec.delivery.auth.type: must be bearer or basic, got 'digest'",
        ),
        (
            {"auth": {"type": "bearer", "secretRef": {"name": "token"}}},
            "spec.delivery.auth.secretRef.key: must name the key",
        ),
        ({"tls": {"caFile": "ca.crt"}}, "spec.delivery.tls: applies to an https sink only"),
    ],
)
def test_delivery_secret_problems_name_the_field(delivery: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSubscription) as raised:
        parse(manifest({"delivery": delivery}))
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        ({"certFile": "c.crt"}, "spec.delivery.tls: certFile and keyFile go together"),
        (
            {"certRef": {"name": "c"}, "keyFile": "k"},
            "spec.delivery.tls: needs certRef, or certFile and keyFile, not both",
        ),
        ({}, "spec.delivery.tls: names no CA and no client certificate"),
    ],
)
def test_tls_problems_name_the_field(tls: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSubscription) as raised:
        parse(manifest({"sink": "https://orders.example/", "delivery": {"tls": tls}}))
    assert message in str(raised.value)


def test_a_dead_letter_sink_is_kept_apart_from_the_sink_and_the_policy() -> None:
    subscription = parse(manifest({"delivery": {"retry": 1, "deadLetterSink": "https://dls/x"}}))
    assert subscription.dead_letter_sink == "https://dls/x"
    assert subscription.sink == "http://127.0.0.1:9000/events"
    assert subscription.delivery.retry == 1
    assert parse(manifest()).dead_letter_sink == ""

"""The egress policy's rules (eventing.delivery.egress) and their settings."""

from __future__ import annotations

import pytest

from eventing.delivery.egress import EgressPolicy, Rules, loopback_warning, policy_for
from eventing.errors import ConfigError
from eventing.settings import Settings

FOLDER = policy_for(Settings.from_environ({}))
KUBERNETES = policy_for(Settings.from_environ({"SUBSCRIPTIONS_SOURCE": "kubernetes"}))


@pytest.mark.parametrize(
    ("host", "address", "what"),
    [
        ("169.254.169.254", None, "link-local"),
        ("sink.example", "169.254.10.1", "link-local"),
        ("sink.example", "fe80::1", "link-local"),
        ("sink.example", "fe80::1%eth0", "link-local"),
        ("sink.example", "::ffff:169.254.169.254", "link-local"),  # IPv4-mapped
        ("metadata.google.internal", None, "cloud metadata"),
        ("Metadata.Google.Internal.", None, "cloud metadata"),  # case and the root dot
        ("metadata", None, "cloud metadata"),
        ("sink.example", "fd00:ec2::254", "cloud metadata"),
        ("sink.example", "100.100.100.200", "cloud metadata"),
    ],
)
def test_link_local_and_metadata_are_refused_by_default(
    host: str, address: str | None, what: str
) -> None:
    for policy in (FOLDER, KUBERNETES):
        reason = policy.refusal(host, address)
        assert reason is not None and "egress policy" in reason and what in reason


@pytest.mark.parametrize("address", ["127.0.0.1", "127.5.5.5", "::1", "0.0.0.0", "::"])
def test_loopback_is_refused_in_kubernetes_mode_only(address: str) -> None:
    assert FOLDER.refusal("localhost", address) is None
    reason = KUBERNETES.refusal("localhost", address)
    assert reason is not None and "SUBSCRIPTIONS_SOURCE=kubernetes" in reason


@pytest.mark.parametrize("address", ["10.0.0.7", "192.168.1.1", "93.184.216.34", "2001:db8::1"])
def test_other_addresses_are_allowed(address: str) -> None:
    assert KUBERNETES.refusal("sink.example", address) is None


def test_allow_wins_over_the_defaults_and_deny_over_everything() -> None:
    policy = policy_for(
        Settings.from_environ(
            {
                "SUBSCRIPTIONS_SOURCE": "kubernetes",
                "SINK_ALLOW": "127.0.0.0/8, metadata, 169.254.0.0/16",
                "SINK_DENY": "169.254.169.254, *.internal.example, 10.1.0.0/16",
            }
        )
    )
    assert policy.refusal("localhost", "127.0.0.1") is None
    assert policy.refusal("metadata") is None
    assert policy.refusal("sink.example", "169.254.1.1") is None
    denied = policy.refusal("sink.example", "169.254.169.254")
    assert denied is not None and "SINK_DENY" in denied
    assert policy.refusal("a.b.internal.example") is not None
    assert policy.refusal("internal.example") is None  # *. covers the names below only
    assert policy.refusal("sink.example", "10.1.2.3") is not None
    assert policy.refusal("sink.example", "10.2.0.1") is None


def test_the_reason_names_the_host_and_address_but_never_a_port() -> None:
    reason = EgressPolicy(deny=Rules.parse(("10.0.0.0/8",))).refusal("sink.example", "10.0.0.1")
    assert reason == "the egress policy refuses sink sink.example (10.0.0.1): it is in SINK_DENY"


@pytest.mark.parametrize("raw", ["10.0.0.0/33", "http://x", "a b", "*.", "-x.example"])
def test_a_bad_rule_is_reported_under_its_variable(raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_environ({"SINK_DENY": raw})
    assert "SINK_DENY" in str(caught.value)


def test_rules_accept_addresses_cidrs_bracketed_v6_and_names() -> None:
    settings = Settings.from_environ({"SINK_ALLOW": "10.0.0.1,fd00::/8,[::1],Sink.Example."})
    rules = Rules.parse(settings.delivery.sink_allow)
    assert [str(n) for n in rules.networks] == ["10.0.0.1/32", "fd00::/8", "::1/128"]
    assert rules.names == ("sink.example",)


def test_only_a_policy_that_allows_loopback_warns_at_start() -> None:
    warning = loopback_warning(FOLDER)
    assert warning is not None and "SINK_DENY" in warning
    assert loopback_warning(KUBERNETES) is None
    allowed = {"SUBSCRIPTIONS_SOURCE": "kubernetes", "SINK_ALLOW": "127.0.0.1"}
    warning = loopback_warning(policy_for(Settings.from_environ(allowed)))
    assert warning is not None and "SINK_ALLOW" in warning
    assert loopback_warning(policy_for(Settings.from_environ({"SINK_DENY": "127.0.0.0/8"}))) is None

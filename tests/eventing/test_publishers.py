"""Parsing the keys and rules files, and the glob checks of what a publisher may publish."""

from __future__ import annotations

import hashlib

import pytest

from eventing import publishers
from eventing.errors import ConfigError, Forbidden

GRANT = publishers.Grant("orders", ("orders", "orders-*"), ("order.*",))


@pytest.mark.parametrize(
    ("source", "event_type", "refused"),
    [
        ("orders", "order.created.v1", None),
        ("orders-eu", "order.x", None),
        ("orders.eu", "order.x", "source 'orders.eu'"),
        ("Orders", "order.x", "source 'Orders'"),  # case-sensitive
        ("orders", "invoice.paid", "type 'invoice.paid'"),
        ("billing", "invoice", "source 'billing' and type 'invoice'"),
    ],
)
def test_globs_are_matched_against_source_and_type(
    source: str, event_type: str, refused: str | None
) -> None:
    reason = GRANT.refusal(source, event_type)
    assert (reason is None) if refused is None else (reason is not None and refused in reason)


def test_check_names_every_refused_event_by_index() -> None:
    with pytest.raises(Forbidden) as raised:
        publishers.check(GRANT, [("orders", "order.a"), ("x", "order.a"), ("orders", "y")])
    assert sorted(raised.value.refusals) == [1, 2]
    assert raised.value.sources == GRANT.sources


def test_keys_are_found_by_plain_key_or_sha256() -> None:
    text = (
        "- {name: a, key: key-of-a, sources: ['*'], types: ['*']}\n"
        f"- {{name: b, sha256: {hashlib.sha256(b'key-of-b').hexdigest()}, sources: [b],"
        " types: ['*']}\n"
    )
    keys = publishers.parse_api_keys(text, "keys.yaml")
    assert [publishers.key_grant(keys, k) for k in ("key-of-a", "key-of-b", "key-of-c")] == [
        keys[0].grant,
        keys[1].grant,
        None,
    ]
    assert publishers.parse_api_keys("", "keys.yaml") == ()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("name: a", "expected a YAML list"),
        ("- [a]", "expected a YAML list"),
        ("- {name: a, sources: [x], types: [y]}", "exactly one of key and sha256"),
        ("- {name: a, key: k, sha256: " + "0" * 64 + ", sources: [x], types: [y]}", "exactly"),
        ("- {name: a, sha256: abc, sources: [x], types: [y]}", "64 hex digits"),
        ("- {name: a, key: 'has space', sources: [x], types: [y]}", "key: expected"),
        ("- {name: a, key: k, sources: [], types: [y]}", "sources: expected"),
        ("- {name: a, key: k, sources: [x]}", "types: expected"),
        ("- {name: 'a b', key: k, sources: [x], types: [y]}", "name: expected"),
        ("- {name: anonymous, key: k, sources: [x], types: [y]}", "open publishing"),
        ("- {name: a, key: k, sources: [x], types: [y], scopes: [z]}", "unknown field(s) scopes"),
        (
            "- {name: a, key: k, sources: [x], types: [y]}\n- {name: b, key: k, sources: [x],"
            " types: [y]}",
            "another entry's",
        ),
        (
            "- {name: a, key: k, sources: [x], types: [y]}\n- {name: a, key: j, sources: [x],"
            " types: [y]}",
            "several entries",
        ),
        ("- {name: a, key: k, sources: [x], types: [y]", "not YAML"),
    ],
)
def test_a_bad_keys_file_says_what_is_wrong_where(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=r"keys\.yaml") as raised:
        publishers.parse_api_keys(text, "keys.yaml")
    assert problem in str(raised.value)


def test_the_first_rule_whose_claims_all_match_decides() -> None:
    rules = publishers.parse_claim_rules(
        "- {name: orders, claims: {sub: 'system:serviceaccount:shop:orders'},"
        " sources: [orders], types: ['*']}\n"
        "- {name: shop, claims: {sub: 'system:serviceaccount:shop:*', iss: 'https://k8s'},"
        " sources: ['*'], types: ['*']}\n",
        "rules.yaml",
    )
    grant = publishers.claims_grant
    assert grant(rules, {"sub": "system:serviceaccount:shop:orders"}) == rules[0].grant
    assert grant(rules, {"sub": "system:serviceaccount:shop:x", "iss": "https://k8s"}) == (
        rules[1].grant
    )
    assert grant(rules, {"sub": "system:serviceaccount:shop:x"}) is None
    assert grant(rules, {"sub": ["system:serviceaccount:shop:orders"]}) is None
    with pytest.raises(ConfigError, match="claims: expected"):
        publishers.parse_claim_rules("- {name: a, sources: [x], types: [y]}", "rules.yaml")

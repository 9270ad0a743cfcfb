"""Publisher identity on both endpoints: API keys, JWTs against a JWKS file, 401 and 403."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from eventing.nats.messages import message_id
from eventing.settings import Settings
from proxy import auth, create_app, tokens
from testing.tokens import AUDIENCE, ISSUER, Issuer
from tests.proxy.conftest import RecordingPublisher

BINARY = {
    "ce-specversion": "1.0",
    "ce-id": "order-4242",
    "ce-source": "orders",
    "ce-type": "order.created.v1",
    "Content-Type": "application/json",
}
LEGACY = {
    "event-type": "order.created",
    "event-type-version": "v1",
    "event-time": "2020-04-02T21:37:00Z",
    "data": {"a": 1},
}
KEYS = f"""
- name: orders-service
  key: orders-key
  sources: ["orders", "orders-*"]
  types: ["order.*"]
- name: billing
  sha256: "{hashlib.sha256(b"billing-key").hexdigest()}"
  sources: ["billing"]
  types: ["*"]
"""
RULES = """
- name: shop-orders
  claims: {sub: "system:serviceaccount:shop:orders"}
  sources: ["orders"]
  types: ["order.*"]
"""


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return Issuer(tmp_path_factory.mktemp("issuer"))


@pytest.fixture
def secured(tmp_path: Path, issuer: Issuer, publisher: RecordingPublisher) -> FlaskClient:
    """The proxy with API keys and JWTs both configured."""
    keys, rules = tmp_path / "keys.yaml", tmp_path / "rules.yaml"
    keys.write_text(KEYS)
    rules.write_text(RULES)
    settings = Settings.from_environ(
        {
            "PROXY_API_KEYS_FILE": str(keys),
            "PROXY_JWKS": str(issuer.jwks),
            "PROXY_JWT_ISSUER": ISSUER,
            "PROXY_JWT_AUDIENCE": AUDIENCE,
            "PROXY_JWT_RULES_FILE": str(rules),
        }
    )
    return create_app(settings, publisher=publisher).test_client()


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def test_open_publishing_keeps_the_dedup_key_of_source_and_id(
    client: FlaskClient, publisher: RecordingPublisher
) -> None:
    assert client.post("/publish", headers=BINARY, data=b"{}").status_code == 204
    assert publisher.messages[0].headers["Nats-Msg-Id"] == message_id("orders", "order-4242")


def test_open_publishing_is_warned_about_once_naming_both_settings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="proxy.auth"):
        auth.warn_if_open(Settings().proxy)
    [record] = caplog.records
    assert "PROXY_API_KEYS_FILE" in record.message and "PROXY_JWKS" in record.message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="proxy.auth"):
        auth.warn_if_open(Settings.from_environ({"PROXY_API_KEYS_FILE": "/k"}).proxy)
    assert caplog.records == []


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": ""}, bearer("no-such-key"), {"Authorization": "Basic b3JkZXJz"}],
    ids=["none", "empty", "unknown-key", "basic"],
)
def test_no_or_a_bad_credential_is_401_with_a_bearer_challenge(
    secured: FlaskClient, publisher: RecordingPublisher, headers: dict[str, str]
) -> None:
    response = secured.post("/publish", headers={**BINARY, **headers}, data=b"{}")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")
    assert response.content_type == "application/problem+json"
    assert "Bearer" in response.get_json()["detail"] or "key" in response.get_json()["detail"]
    assert publisher.messages == []


@pytest.mark.parametrize("key", ["orders-key", "billing-key"], ids=["plain", "sha256"])
def test_a_known_key_publishes_what_it_may_under_its_name(
    secured: FlaskClient, publisher: RecordingPublisher, key: str
) -> None:
    source = "orders-eu" if key == "orders-key" else "billing"
    headers = {**BINARY, **bearer(key), "ce-source": source}
    assert secured.post("/publish", headers=headers, data=b"{}").status_code == 204
    name = "orders-service" if key == "orders-key" else "billing"
    [stored] = publisher.messages
    assert stored.headers["Nats-Msg-Id"] == message_id(source, "order-4242", name)
    scraped = secured.get("/metrics").text
    assert f'eventing_epp_publisher_events_total{{publisher="{name}"}} 1.0' in scraped


def test_a_source_or_type_not_granted_is_403_naming_what_is_allowed(
    secured: FlaskClient, publisher: RecordingPublisher
) -> None:
    headers = {**BINARY, **bearer("orders-key"), "ce-type": "invoice.paid.v1"}
    response = secured.post("/publish", headers=headers, data=b"{}")
    assert response.status_code == 403
    problem = response.get_json()
    assert problem["publisher"] == "orders-service"
    assert problem["allowed"] == {"sources": ["orders", "orders-*"], "types": ["order.*"]}
    assert "type 'invoice.paid.v1'" in problem["detail"]
    assert publisher.messages == []
    scraped = secured.get("/metrics").text
    assert (
        'eventing_epp_publisher_refusals_total{publisher="orders-service",reason="forbidden"} 1.0'
        in scraped
    )


def test_a_batch_with_one_forbidden_event_is_refused_whole(
    secured: FlaskClient, publisher: RecordingPublisher
) -> None:
    event = {"specversion": "1.0", "source": "orders", "type": "order.created.v1", "data": 1}
    batch = [{**event, "id": "1"}, {**event, "id": "2", "source": "billing"}, {**event, "id": "3"}]
    response = secured.post(
        "/publish",
        data=json.dumps(batch),
        headers={**bearer("orders-key"), "Content-Type": "application/cloudevents-batch+json"},
    )
    assert response.status_code == 403
    assert [e["index"] for e in response.get_json()["errors"]] == [1]
    assert "source 'billing'" in response.get_json()["errors"][0]["detail"]
    assert publisher.messages == []


def test_the_legacy_endpoint_answers_401_and_403_in_kyma_s_shape(
    secured: FlaskClient, publisher: RecordingPublisher
) -> None:
    unauthenticated = secured.post("/orders/v1/events", json=LEGACY)
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["WWW-Authenticate"].startswith("Bearer")
    assert set(unauthenticated.get_json()) == {"status", "message"}
    forbidden = secured.post("/billing/v1/events", json=LEGACY, headers=bearer("orders-key"))
    assert forbidden.status_code == 403
    assert forbidden.get_json()["status"] == 403
    assert "source 'billing'" in forbidden.get_json()["message"]
    assert publisher.messages == []
    allowed = secured.post("/orders/v1/events", json=LEGACY, headers=bearer("orders-key"))
    assert allowed.status_code == 200
    [stored] = publisher.messages
    event_id = allowed.get_json()["event-id"]
    assert stored.headers["Nats-Msg-Id"] == message_id("orders", event_id, "orders-service")


def test_a_valid_jwt_publishes_under_its_rule_s_name(
    secured: FlaskClient, publisher: RecordingPublisher, issuer: Issuer
) -> None:
    headers = {**BINARY, **bearer(issuer.token())}
    assert secured.post("/publish", headers=headers, data=b"{}").status_code == 204
    [stored] = publisher.messages
    assert stored.headers["Nats-Msg-Id"] == message_id("orders", "order-4242", "shop-orders")
    forbidden = {**headers, "ce-source": "billing"}
    assert secured.post("/publish", headers=forbidden, data=b"{}").status_code == 403


def _unsigned(claims: dict[str, Any]) -> str:
    return jwt.encode(claims, key="", algorithm="none")


def _hostile_tokens(issuer: Issuer) -> dict[str, str]:
    now = int(time.time())
    valid = {"iss": ISSUER, "aud": AUDIENCE, "sub": "system:serviceaccount:shop:orders"}
    return {
        "expired": issuer.token(iat=now - 7200, exp=now - 3600),
        "wrong-audience": issuer.token(aud="https://kubernetes.default.svc"),
        "wrong-issuer": issuer.token(iss="https://elsewhere.test"),
        "no-exp": issuer.token(exp=None),
        "unknown-kid": issuer.token(headers={"kid": "k2"}),
        "no-rule": issuer.token(sub="system:serviceaccount:shop:other"),
        "alg-none": _unsigned({**valid, "exp": now + 600}),
        "hs256-with-the-public-key": _hmac_with(issuer.public_pem(), {**valid, "exp": now + 600}),
        "tampered": issuer.token()[:-4] + "AAAA",
        "not-base64": "a~.b~.c~",
    }


def _hmac_with(secret: bytes, claims: dict[str, Any]) -> str:
    """A token "signed" with HS256 using the public key as the secret (PyJWT itself refuses to,
    so the signature is made by hand)."""
    import base64
    import hmac

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = part(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    body = part(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{part(signature)}"


@pytest.mark.parametrize(
    "case",
    [
        "expired",
        "wrong-audience",
        "wrong-issuer",
        "no-exp",
        "unknown-kid",
        "no-rule",
        "alg-none",
        "hs256-with-the-public-key",
        "tampered",
        "not-base64",
    ],
)
def test_a_token_that_does_not_verify_is_401(
    secured: FlaskClient, publisher: RecordingPublisher, issuer: Issuer, case: str
) -> None:
    token = _hostile_tokens(issuer)[case]
    response = secured.post("/publish", headers={**BINARY, **bearer(token)}, data=b"{}")
    assert response.status_code == 401, response.get_json()
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert publisher.messages == []


def test_a_huge_credential_is_401_without_being_parsed(secured: FlaskClient) -> None:
    token = "a." + "b" * 100_000 + ".c"
    response = secured.post("/publish", headers={**BINARY, **bearer(token)}, data=b"{}")
    assert response.status_code == 401
    assert 'error="invalid_request"' in response.headers["WWW-Authenticate"]


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
#: JOSE headers with hostile values where PyJWT and we read "alg", "kid", "typ", "crit", "b64".
_JOSE_HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "alg": st.sampled_from(["RS256", "none", "HS256", "ES256", "EdDSA"]) | _JSON,
        "kid": st.just("k1") | _JSON,
        "typ": _JSON,
        "crit": _JSON,
        "b64": _JSON,
    },
)


def _part(document: object) -> str:
    return jwt.utils.base64url_encode(json.dumps(document).encode()).decode()


_HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300)


@given(
    st.one_of(
        _HEADER_TEXT,
        _HEADER_TEXT.map(lambda text: f"Bearer {text}"),
        st.lists(
            st.text(alphabet="ABCDEFabcdef0123456789-_=", max_size=60), min_size=3, max_size=3
        ).map(lambda parts: "Bearer " + ".".join(parts)),
        st.binary(max_size=200).map(
            lambda raw: "Bearer " + jwt.utils.base64url_encode(raw).decode() + ".e30.c2ln"
        ),
        st.tuples(_JOSE_HEADERS, _JSON).map(
            lambda parts: f"Bearer {_part(parts[0])}.{_part(parts[1])}.c2ln"
        ),
    )
)
@hypothesis_settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_any_authorization_header_is_answered_401_never_500(
    secured: FlaskClient, authorization: str
) -> None:
    response = secured.post(
        "/publish", headers={**BINARY, "Authorization": authorization}, data=b"{}"
    )
    assert response.status_code == 401, (authorization, response.get_json())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_changed_keys_file_is_read_again_and_a_broken_one_keeps_the_last_good_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from eventing import publishers

    path = tmp_path / "keys.yaml"
    path.write_text(KEYS)
    clock = Clock()
    keys = auth.WatchedFile(str(path), publishers.parse_api_keys, clock=clock)
    rotated = KEYS.replace("orders-key", "rotated-key-of-orders")
    path.write_text(rotated)
    assert publishers.key_grant(keys.current(), "orders-key") is not None  # not looked yet
    clock.now += 1.5
    assert publishers.key_grant(keys.current(), "orders-key") is None
    assert publishers.key_grant(keys.current(), "rotated-key-of-orders") is not None

    path.write_text(rotated + "- name: half-writ")
    clock.now += 1.5
    with caplog.at_level(logging.ERROR, logger="proxy.auth"):
        assert publishers.key_grant(keys.current(), "rotated-key-of-orders") is not None
    assert "keeping its last good version" in caplog.text
    path.unlink()
    clock.now += 1.5
    assert publishers.key_grant(keys.current(), "rotated-key-of-orders") is not None


def test_a_missing_or_broken_file_at_start_is_a_configuration_error(tmp_path: Path) -> None:
    from eventing.errors import ConfigError

    broken = tmp_path / "keys.yaml"
    broken.write_text("- name: a\n  key: k\n")  # no sources, no types
    for path in (tmp_path / "missing.yaml", broken):
        settings = Settings.from_environ({"PROXY_API_KEYS_FILE": str(path)})
        with pytest.raises(ConfigError, match=str(path)):
            create_app(settings, publisher=RecordingPublisher())


def test_an_unknown_key_id_fetches_the_jwks_again_but_not_at_every_request(
    tmp_path: Path, issuer: Issuer
) -> None:
    from eventing.errors import Unauthenticated

    jwks = tmp_path / "jwks.json"
    jwks.write_text(issuer.jwks.read_text())
    settings = Settings.from_environ(
        {
            "PROXY_JWKS": str(jwks),
            "PROXY_JWT_ISSUER": ISSUER,
            "PROXY_JWT_AUDIENCE": AUDIENCE,
            "PROXY_JWT_RULES_FILE": str(tmp_path / "rules.yaml"),  # not read here
        }
    ).proxy
    clock = Clock()
    keys = tokens.KeySet(settings, clock=clock)
    assert keys.key("k1").key_id == "k1"
    document = json.loads(jwks.read_text())
    document["keys"].append({**document["keys"][0], "kid": "k2"})
    jwks.write_text(json.dumps(document))
    with pytest.raises(Unauthenticated):  # the set was fetched a moment ago
        keys.key("k2")
    clock.now += 11
    assert keys.key("k2").key_id == "k2"
    jwks.write_text("{not json")
    clock.now += 301  # too old: fetched again, fails, the last good set stays
    assert keys.key("k1").key_id == "k1"


def test_a_remembered_token_stops_working_once_its_key_left_the_jwks(
    tmp_path: Path, issuer: Issuer
) -> None:
    from eventing import publishers
    from eventing.errors import Unauthenticated

    jwks, rules = tmp_path / "jwks.json", tmp_path / "rules.yaml"
    jwks.write_text(issuer.jwks.read_text())
    rules.write_text(RULES)
    settings = Settings.from_environ(
        {
            "PROXY_JWKS": str(jwks),
            "PROXY_JWT_ISSUER": ISSUER,
            "PROXY_JWT_AUDIENCE": AUDIENCE,
            "PROXY_JWT_RULES_FILE": str(rules),
        }
    ).proxy
    clock = Clock()
    verifier = tokens.TokenVerifier(
        tokens.KeySet(settings, clock=clock),
        auth.WatchedFile(str(rules), publishers.parse_claim_rules, clock=clock).current,
        issuer=ISSUER,
        audience=AUDIENCE,
        clock=clock,
    )
    token = issuer.token()
    assert verifier.verify(token).name == "shop-orders"
    rotated = Issuer(tmp_path)  # writes its own key, of the same id, over the JWKS file
    assert rotated.jwks == jwks
    assert verifier.verify(token).name == "shop-orders"  # remembered
    clock.now += 301  # the JWKS is fetched again, the remembered claims are too old
    with pytest.raises(Unauthenticated, match="not valid"):
        verifier.verify(token)


def test_a_redirected_jwks_fetch_is_refused_and_sends_the_token_nowhere(
    tmp_path: Path, publisher: RecordingPublisher, issuer: Issuer
) -> None:
    import ssl
    import threading

    from werkzeug.serving import make_server
    from werkzeug.wrappers import Request, Response

    from testing import pki

    seen: list[str | None] = []

    @Request.application
    def elsewhere(request: Request) -> Response:
        seen.append(request.headers.get("Authorization"))
        return Response(issuer.jwks.read_text(), content_type="application/json")

    plain = make_server("127.0.0.1", 0, elsewhere)

    @Request.application
    def redirecting(request: Request) -> Response:
        return Response(status=302, headers={"Location": f"http://127.0.0.1:{plain.port}/j"})

    pki.write(tmp_path / "pki")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "pki" / "apiserver.crt", tmp_path / "pki" / "apiserver.key")
    tls = make_server("127.0.0.1", 0, redirecting, ssl_context=context)
    token = tmp_path / "token"
    token.write_text("the-proxy-s-own-token")
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    threads = [threading.Thread(target=server.serve_forever) for server in (plain, tls)]
    for thread in threads:
        thread.start()
    try:
        settings = Settings.from_environ(
            {
                "PROXY_JWKS": f"https://127.0.0.1:{tls.port}/jwks",
                "PROXY_JWKS_CA_FILE": str(tmp_path / "pki" / "ca.crt"),
                "PROXY_JWKS_TOKEN_FILE": str(token),
                "PROXY_JWT_ISSUER": ISSUER,
                "PROXY_JWT_AUDIENCE": AUDIENCE,
                "PROXY_JWT_RULES_FILE": str(rules),
            }
        )
        client = create_app(settings, publisher=publisher).test_client()
        response = client.post("/publish", headers={**BINARY, **bearer(issuer.token())}, data=b"{}")
    finally:
        for server in (plain, tls):
            server.shutdown()
        for thread in threads:
            thread.join()
    assert response.status_code == 503
    assert "JWKS" in response.get_json()["detail"]
    assert seen == []
    assert publisher.messages == []


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"PROXY_JWKS": "http://issuer.test/jwks"}, "PROXY_JWKS: expected a file path or an https"),
        ({"PROXY_JWKS": "/jwks.json"}, "PROXY_JWT_AUDIENCE: must be set with PROXY_JWKS"),
        ({"PROXY_JWKS": "/jwks.json"}, "PROXY_JWT_ISSUER: must be set with PROXY_JWKS"),
        ({"PROXY_JWKS": "/jwks.json"}, "PROXY_JWT_RULES_FILE: must be set with PROXY_JWKS"),
    ],
)
def test_jwt_settings_are_refused_without_what_makes_them_safe(
    environ: dict[str, str], problem: str
) -> None:
    from eventing.errors import ConfigError

    with pytest.raises(ConfigError) as raised:
        Settings.from_environ(environ)
    assert problem in str(raised.value)

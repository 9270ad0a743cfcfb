"""Standard Webhooks signatures: what eventing.delivery.signing makes, checked by the reference
library a receiver uses (standardwebhooks from PyPI)."""

from __future__ import annotations

import base64
import time

import pytest
import standardwebhooks

from eventing.delivery import signing

KEY, OLD_KEY = bytes(range(32)), bytes(range(32, 64))
SECRET = "whsec_" + base64.b64encode(KEY).decode()
OLD_SECRET = "whsec_" + base64.b64encode(OLD_KEY).decode()
BODY = b'{"orderId": 4242}'


def test_the_reference_library_verifies_our_signature_with_each_rotating_secret() -> None:
    now = int(time.time())
    headers = signing.headers((KEY, OLD_KEY), "msg_c_1", now, BODY)
    assert headers["webhook-id"] == "msg_c_1" and headers["webhook-timestamp"] == str(now)
    assert [part[:3] for part in headers["webhook-signature"].split(" ")] == ["v1,", "v1,"]
    for secret in (SECRET, OLD_SECRET):
        standardwebhooks.Webhook(secret).verify(BODY, headers, json_parse=False)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(BODY + b"x", headers, json_parse=False)


def test_a_signature_outside_the_receivers_tolerance_is_refused() -> None:
    headers = signing.headers((KEY,), "msg_c_1", int(time.time()) - 3600, BODY)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(BODY, headers, json_parse=False)


def test_secrets_are_read_one_per_line_padded_or_not() -> None:
    unpadded = "whsec_" + base64.b64encode(bytes(30)).decode().rstrip("=")
    assert signing.parse_secrets(f"\n{SECRET}\n  {unpadded}  \n") == (KEY, bytes(30))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no secret; expected one whsec_<base64> secret per line"),
        ("c2VjcmV0", "line 1: does not start with whsec_"),
        (f"{SECRET}\nwhsec_not base64!", "line 2: is not base64 after whsec_"),
        ("whsec_" + base64.b64encode(b"short").decode(), "line 1: its key has 5 bytes"),
    ],
)
def test_a_malformed_secret_says_which_line_and_what_was_expected(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("<", ".").replace(">", ".")):
        signing.parse_secrets(text)


def test_the_message_id_is_the_subscriptions_and_the_stored_events() -> None:
    assert signing.message_id("c0ffee", 42) == signing.message_id("c0ffee", 42)
    assert (
        len({signing.message_id("a", 1), signing.message_id("a", 2), signing.message_id("b", 1)})
        == 3
    )

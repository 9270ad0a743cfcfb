"""mask_url: what statuses, metric labels, logs and dead-letter headers may show of a URL."""

from __future__ import annotations

import pytest

from eventing.redaction import mask_text, mask_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:pass@host/path?token=abc", "https://***@host/path?token=***"),
        ("http://token@sink.test:8080/hook", "http://***@sink.test:8080/hook"),
        ("https://host/p?a=1&b=&c", "https://host/p?a=***&b=***&***"),
        ("http://[::1]:9000/events", "http://[::1]:9000/events"),
        ("https://host/p#secret-fragment", "https://host/p"),
        ("nats://app:secret@127.0.0.1:4222", "nats://***@127.0.0.1:4222"),
        ("http://127.0.0.1:8899/events", "http://127.0.0.1:8899/events"),
    ],
)
def test_credentials_are_masked_and_where_stays(url: str, shown: str) -> None:
    assert mask_url(url) == shown


@pytest.mark.parametrize("url", ["http://user:pass@host:notaport/", "user:pass@host?token=1"])
def test_what_does_not_parse_is_masked_whole(url: str) -> None:
    assert mask_url(url) == "***"


def test_urls_and_query_values_in_a_text_are_masked() -> None:
    text = (
        "HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded with url:"
        " /hook?token=abc&x=1 (Caused by ...) while posting to http://u:p@h/hook?k=v"
    )
    assert mask_text(text) == (
        "HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded with url:"
        " /hook?token=***&x=*** (Caused by ...) while posting to http://***@h/hook?k=***"
    )

"""The body deadline and the WSGI environment of :mod:`proxy.bodies` (the serving itself, with
trickling clients, is tested against granian in tests/integration/test_proxy_server.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from proxy import bodies

LIMITS = bodies.BodyLimits(timeout=10.0, min_rate=1000, max_size=65536)


@pytest.mark.parametrize(
    ("received", "seconds"),
    [
        (0, bodies.GRACE),  # a body that never starts is cut after the grace
        (500, bodies.GRACE + 0.5),  # each min_rate bytes buy one more second
        (5000, bodies.GRACE + 5),
        (65536, 10.0),  # never beyond the timeout
    ],
)
def test_the_deadline_grows_with_the_bytes_received_up_to_the_timeout(
    received: int, seconds: float
) -> None:
    assert bodies.body_deadline(100.0, received, LIMITS) == pytest.approx(100.0 + seconds)


@dataclass
class FakeHeaders:
    """Granian's RSGIHeaders as far as _environ reads them: names lower-case, each once."""

    pairs: list[tuple[str, str]]

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(name for name, _ in self.pairs))

    def get_all(self, key: str) -> list[str]:
        return [value for name, value in self.pairs if name == key]

    def __contains__(self, key: str) -> bool:
        return any(name == key for name, _ in self.pairs)


@dataclass
class FakeScope:
    headers: FakeHeaders
    path: str = "/publish"
    proto: str = "http"
    http_version: str = "1.1"
    server: str = "127.0.0.1:8080"
    client: str = "[::1]:51234"
    scheme: str = "http"
    method: str = "POST"
    query_string: str = "a=1"
    authority: str | None = None


def test_the_environment_is_the_one_granians_wsgi_interface_builds() -> None:
    scope = FakeScope(
        FakeHeaders(
            [
                ("content-type", "application/json"),
                ("content-length", "2"),
                ("ce-id", "1"),
                ("x-many", "a"),
                ("x-many", "b"),
                ("cookie", "c=1"),
                ("cookie", "d=2"),
            ]
        ),
        path="/äpp/v1/events",
    )
    environ = bodies._environ(scope, b"{}")
    assert environ["PATH_INFO"] == "/äpp/v1/events".encode().decode("latin-1")  # PEP 3333
    assert (environ["REQUEST_METHOD"], environ["QUERY_STRING"]) == ("POST", "a=1")
    assert (environ["CONTENT_TYPE"], environ["CONTENT_LENGTH"]) == ("application/json", "2")
    assert "HTTP_CONTENT_TYPE" not in environ and "HTTP_CONTENT_LENGTH" not in environ
    assert environ["HTTP_CE_ID"] == "1"
    assert environ["HTTP_X_MANY"] == "a,b"
    assert environ["HTTP_COOKIE"] == "c=1;d=2"
    assert environ["HTTP_HOST"] == ""  # no Host header and no authority
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("127.0.0.1", "8080")
    assert environ["REMOTE_ADDR"] == "::1"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["wsgi.input"].read() == b"{}"
    assert environ["wsgi.input_terminated"] is True

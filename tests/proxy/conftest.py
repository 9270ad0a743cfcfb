"""The proxy app with a recording publisher (our own seam), for tests without NATS."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient

from eventing.errors import PublishError
from eventing.nats.messages import OutboundMessage
from eventing.settings import Settings
from proxy import create_app


class RecordingPublisher:
    """Stores messages in a list; ``fail`` decides an outcome per message."""

    def __init__(self) -> None:
        self.messages: list[OutboundMessage] = []
        self.fail: Callable[[int, OutboundMessage], PublishError | None] = lambda index, message: (
            None
        )
        self.is_ready = True

    def publish(self, messages: list[OutboundMessage]) -> list[PublishError | None]:
        outcomes = [self.fail(index, message) for index, message in enumerate(messages)]
        self.messages += [
            m for m, outcome in zip(messages, outcomes, strict=True) if outcome is None
        ]
        return outcomes

    def ready(self) -> bool:
        return self.is_ready


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def app(publisher: RecordingPublisher) -> Flask:
    return create_app(Settings.from_environ({"MAX_REQUEST_SIZE": "4096"}), publisher=publisher)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()

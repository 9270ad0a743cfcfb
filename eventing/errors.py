"""The one exception tree of the project.

Every error we raise on purpose derives from :class:`EventingError`, so an entry point can tell
our own, explained failures from bugs. Library errors (nats-py, YAML, the Kubernetes client) are
translated into this tree in the one module that imports the library, with ``raise ... from``.

::

    EventingError
    ├── ConfigError                  bad environment; lists every bad variable
    ├── InvalidEvent                 a publisher sent something that is no valid event (HTTP 400)
    │   ├── UnsupportedMode          the body is no CloudEvent in any mode we know (HTTP 415)
    │   ├── InvalidBatch             some events of a batch are invalid (HTTP 400, per index)
    │   └── BatchTooLarge            a batch of more events than a process may hold (HTTP 413)
    ├── InvalidLegacyEvent           a legacy Kyma body failed Kyma's validation (HTTP 400)
    ├── Unauthenticated              no credential, or one that does not verify (HTTP 401)
    ├── Forbidden                    the publisher may not use an event's source or type (403)
    ├── InvalidSubscription          a Subscription manifest failed validation (shown in status)
    ├── UntrustedJob                 a delivery job the manager did not sign (a worker drops it)
    ├── DeliveryError                a sink did not take an event
    │   ├── TemporaryDeliveryError   408, 429, 5xx, timeouts, connection errors: retry
    │   └── PermanentDeliveryError   other answers: retrying cannot help
    │       └── SinkRefused          the egress policy refuses the sink's address
    ├── PublishError                 JetStream did not persist an event (HTTP 5xx)
    │   ├── BackendUnavailable       not connected to NATS (502)
    │   ├── StreamNotAnswering       no stream took the message in time (504)
    │   ├── StreamFull               the stream refused the message for lack of space (507)
    │   ├── Overloaded               this process has too many publishes in flight (503)
    │   └── BackendRejected          any other JetStream API error (its own status)
    └── ConsumerError                a call on JetStream consumers failed (the manager retries)
        └── NotFound                 the stream or the consumer does not exist
"""

from __future__ import annotations

from collections.abc import Mapping


class EventingError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(EventingError):
    """The environment holds values we cannot run with.

    ``problems`` maps each bad variable to what was wrong with it, so one message can name
    them all instead of failing on the first.
    """

    def __init__(self, problems: Mapping[str, str]) -> None:
        self.problems = dict(problems)
        lines = "\n".join(f"  {name}: {text}" for name, text in sorted(self.problems.items()))
        super().__init__(f"invalid configuration ({len(self.problems)} problem(s)):\n{lines}")


class InvalidEvent(EventingError):
    """A publisher sent an event we must refuse; nothing was stored.

    ``attribute`` names the offending CloudEvent attribute (or HTTP header, or ``body``) and
    the message says what was expected instead.
    """

    status = 400

    def __init__(self, message: str, *, attribute: str | None = None) -> None:
        self.attribute = attribute
        super().__init__(message)


class UnsupportedMode(InvalidEvent):
    """The request is no CloudEvent in binary, structured or batch mode."""

    status = 415


class InvalidBatch(InvalidEvent):
    """One or more events of a batch are invalid; the batch was refused as a whole."""

    def __init__(self, errors: Mapping[int, InvalidEvent]) -> None:
        self.errors = dict(errors)
        super().__init__(
            f"{len(self.errors)} event(s) of the batch are invalid; none was published"
        )


class BatchTooLarge(InvalidEvent):
    """A batch holds more events than a proxy process may have in flight: it could never be
    taken, so retrying it (as a 503 would tell the client to) cannot help; split it."""

    status = 413

    def __init__(self, count: int, limit: int) -> None:
        self.count = count
        self.limit = limit
        super().__init__(
            f"the batch holds {count} events, a batch may hold at most {limit}"
            " (PROXY_MAX_IN_FLIGHT); split it into smaller batches",
            attribute="body",
        )


class InvalidLegacyEvent(EventingError):
    """A legacy Kyma event failed Kyma's request validation.

    ``kind`` is Kyma's error type (``bad_payload_syntax``, ``validation_violation``),
    ``field``/``field_kind`` name the offending field for validation violations.
    """

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        more_info: str | None = None,
        field: str | None = None,
        field_kind: str | None = None,
    ) -> None:
        self.kind = kind
        self.more_info = more_info
        self.field = field
        self.field_kind = field_kind
        super().__init__(message)


class Unauthenticated(EventingError):
    """The request carries no credential, or one that is unknown, malformed or does not verify.

    ``error`` is RFC 6750's code for ``WWW-Authenticate`` (``invalid_request``,
    ``invalid_token``), or None when no credential came at all.
    """

    status = 401

    def __init__(self, message: str, *, error: str | None = None) -> None:
        self.error = error
        super().__init__(message)


class Forbidden(EventingError):
    """The publisher ``publisher`` may not publish some events of the request; nothing was
    stored. ``refusals`` says why, by index in the request; ``sources`` and ``types`` are the
    globs it may use."""

    status = 403

    def __init__(
        self,
        publisher: str,
        refusals: Mapping[int, str],
        *,
        sources: tuple[str, ...],
        types: tuple[str, ...],
    ) -> None:
        self.publisher = publisher
        self.refusals = dict(refusals)
        self.sources = sources
        self.types = types
        first = self.refusals[min(self.refusals)]
        more = f" ({len(self.refusals)} events refused)" if len(self.refusals) > 1 else ""
        super().__init__(
            f"{first}{more}; it may publish sources {list(sources)} and types {list(types)},"
            " nothing was stored"
        )


class InvalidSubscription(EventingError):
    """A Subscription is invalid; ``problems`` lists each one with its field, ``origin`` names
    the manifest file it came from (empty for a Kubernetes object)."""

    def __init__(self, key: str, problems: list[str], *, origin: str = "") -> None:
        self.key = key
        self.problems = list(problems)
        self.origin = origin
        super().__init__("Subscription validation failed: " + "; ".join(self.problems))


class DeliveryError(EventingError):
    """A sink did not accept an event; ``status`` is its HTTP status (None: no answer)."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        self.status = status
        self.retry_after = retry_after
        super().__init__(message)


class TemporaryDeliveryError(DeliveryError):
    """The sink may take the event later (408, 429, 5xx, timeout, connection error)."""


class PermanentDeliveryError(DeliveryError):
    """The sink refused the event for good (other 4xx, redirects)."""


class SinkRefused(PermanentDeliveryError):
    """The egress policy refuses every address, or one, that the sink's host resolves to; no
    connection was made, so nothing about the address is known beyond its name."""


class PublishError(EventingError):
    """JetStream did not confirm an event, so the publisher must not be told it is accepted."""

    status = 500

    def __init__(self, message: str, *, status: int | None = None) -> None:
        if status is not None:
            self.status = status
        super().__init__(message)


class BackendUnavailable(PublishError):
    """The process has no connection to NATS right now."""

    status = 502


class StreamNotAnswering(PublishError):
    """No stream acknowledged the message in time (missing stream, leader election, timeout)."""

    status = 504


class StreamFull(PublishError):
    """The stream is at one of its limits and refuses new messages."""

    status = 507


class Overloaded(PublishError):
    """This process already has as many publishes in flight as it may hold."""

    status = 503

    def __init__(self, message: str, *, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class BackendRejected(PublishError):
    """JetStream answered with an API error we have no better class for."""


class ConsumerError(EventingError):
    """Creating, updating, deleting, listing or pulling a JetStream consumer failed (no
    connection, no answer in time, an API error); the message says what the server said."""


class NotFound(ConsumerError):
    """The stream or the consumer a call named does not exist."""


class UntrustedJob(EventingError):
    """A dramatiq message whose job a worker must not act on: not signed by the manager,
    altered, malformed, or acking outside the configured stream's consumer.

    ``reason`` is one of :data:`REASONS` (a bounded metric label); the message says what is
    wrong and never shows the job's content.
    """

    REASONS = ("unsigned", "bad-signature", "malformed", "bad-ack-subject")

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)

"""Publishing a request's events, without Flask: the one implementation of ``POST /publish``'s
work, which the Flask views (:mod:`proxy.views`) and the fast route (:meth:`Publishing.at_once`)
both call.

Why a route below Flask: after issue 16's rounds 1 and 2, Flask's request cycle (the request
context, URL routing, the Response object, Werkzeug's environ and headers) and the hand-over to a
request thread were about half of a single event's Python in the proxy (docs/performance.md,
"Round 3": 0.29-0.39 ms through Flask, 0.14-0.17 ms below it). Served by granian
(:class:`proxy.bodies.BodiesFirst`), a binary-mode ``POST /publish`` is handled by
:meth:`Publishing.at_once` on granian's loop: the same parsing, validation, authorisation,
admission and stored form as the view, its events left to the loop (:mod:`proxy.pending`), and
the view's own 204. It answers only what it is sure to answer as Flask would: anything else
(another mode or route, an invalid event, a refusal, an overload, a body too large or cut off,
any unexpected error, a JWKS that might have to be fetched) is handed to Flask untouched, which
answers it as before, with its problem document, its log lines and its metrics.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge
from werkzeug.sansio.utils import get_content_length

from eventing import publishers
from eventing.errors import PublishError
from eventing.events import binding, cloudevent, eventtypes
from eventing.nats.messages import OutboundMessage, outbound
from proxy import bodies, guards, metrics, pending, problems
from proxy.admission import Admission
from proxy.auth import Authenticator
from proxy.metrics import ProxyMetrics
from proxy.publisher import Publisher

#: Largest body the fast route parses on granian's loop: every other connection of the process
#: waits while it does, so a large event (whose parse and stored form take milliseconds) is
#: handed to a request thread instead, where the interpreter switches between threads.
AT_ONCE_MAX_BODY = 64 * 1024

#: Parsed, validated and authorised: the mode, the stored messages, and who publishes them.
Accepted = tuple[str, list[OutboundMessage], publishers.Grant]


class Publishing:
    """``POST /publish`` and the legacy endpoint's work for one proxy process, given the
    process's parts (the Flask app's extensions)."""

    def __init__(
        self,
        *,
        type_prefix: str,
        max_size: int,
        authenticator: Authenticator,
        metrics: ProxyMetrics,
        admission: Admission,
        publisher: Publisher,
        at_once: bool,
    ) -> None:
        self._type_prefix = type_prefix
        self._max_size = max_size
        self._authenticator = authenticator
        self._metrics = metrics
        self._admission = admission
        self._publisher = publisher
        # verifying a JWT may fetch the JWKS, which the loop must not wait for
        self._at_once = at_once and not authenticator.verifies_tokens

    def accept(self, environ: dict[str, Any], read_body: Callable[[], bytes]) -> Accepted:
        """Authenticate, parse, validate and authorise a ``POST /publish`` request, in the
        order whose first failure is the answer; nothing is counted.

        Raises:
            Unauthenticated: see :func:`proxy.auth.publisher_of` (the caller counts it).
            Forbidden: see :func:`eventing.publishers.check` (the caller counts it).
            InvalidEvent: the request is no valid CloudEvent (or batch of them).
            PublishError: (503) the JWKS cannot be fetched.
        """
        grant = self._authenticator.authenticate(environ.get("HTTP_AUTHORIZATION"))
        headers = headers_of(environ)
        trace = binding.trace_extensions(headers.items())
        publisher = dedup_name(grant)
        mode, messages = binding.parse_http(
            headers,
            read_body(),
            lambda event: prepare(event, trace, self._type_prefix, publisher),
        )
        publishers.check(grant, [(m.event_source, m.event_type) for m in messages])
        return mode, messages, grant

    def store(
        self,
        environ: dict[str, Any],
        messages: list[OutboundMessage],
        grant: publishers.Grant,
        *,
        batch: bool = False,
        legacy: bool = False,
    ) -> dict[int, PublishError]:
        """Publish, holding the events in flight, and record metrics; the failures by index
        (empty: everything stored). Served by :class:`proxy.bodies.BodiesFirst`, the events
        are left to its event loop instead (:mod:`proxy.pending`), held in flight until their
        PubAcks, and this returns no failures: the loop answers with ``batch``'s or
        ``legacy``'s failure answer if some events are not stored, else with the view's own.

        Raises:
            BatchTooLarge: more events than a process may hold in flight at all.
            Overloaded: the process holds too many events in flight to take these now.
        """
        deferred = pending.of(environ)
        if deferred is not None:
            self._admission.hold(len(messages))
            started = time.perf_counter()

            def settle(outcomes: list[PublishError | None]) -> pending.Answer | None:
                self._admission.release(len(messages))
                failures = self._record(messages, outcomes, started, grant)
                if not failures:
                    return None
                return problems.failure_answer(failures, len(messages), batch=batch, legacy=legacy)

            deferred.defer(messages, settle)
            return {}
        with self._admission.holding(len(messages)):
            started = time.perf_counter()
            outcomes = self._publisher.publish(messages)
        return self._record(messages, outcomes, started, grant)

    def at_once(self, environ: dict[str, Any]) -> pending.Answer | None:
        """Handle a binary-mode ``POST /publish`` without Flask, its events left to the loop:
        the view's 204, or None to hand the request to Flask untouched (every case this route
        is not sure to answer as Flask would, see the module docstring).

        Takes the turn :class:`proxy.admission.Gate` would take, without waiting for one (the
        loop must not wait): with every slot taken, Flask's path waits in the waiting room.
        """
        if not (
            self._at_once
            and environ["REQUEST_METHOD"] == "POST"
            and environ["PATH_INFO"] == "/publish"
            and "HTTP_CE_SPECVERSION" in environ
            and len(environ.get(bodies.BODY, b"")) <= AT_ONCE_MAX_BODY
        ):
            return None
        deferred = pending.of(environ)
        if deferred is None or not self._admission.try_enter():
            return None
        try:
            read = functools.partial(body_read_first, environ, self._max_size)
            mode, messages, grant = self.accept(environ, read)
            # not binary: a ce-specversion header beside a CloudEvents content type
            handled = mode == "binary"
            if handled:
                self.store(environ, messages, grant)
        except Exception:  # answered by Flask, which repeats the step that raised, and logs
            handled = False
        if not handled:
            self._admission.leave()
            return None
        deferred.release_after(self._admission.leave)  # the turn lasts until the PubAcks
        environ[metrics.ROUTE] = "/publish"
        return NO_CONTENT

    def _record(
        self,
        messages: list[OutboundMessage],
        outcomes: list[PublishError | None],
        started: float,
        grant: publishers.Grant,
    ) -> dict[int, PublishError]:
        """Record the outcomes of publishing ``messages``, begun at ``started``; the failures."""
        counted = self._metrics
        elapsed_ms = (time.perf_counter() - started) * 1000
        failures = {i: error for i, error in enumerate(outcomes) if error is not None}
        code = str(next(iter(failures.values())).status) if failures else "204"
        counted.backend_duration.labels(code, counted.destination).observe(elapsed_ms)
        stored = Counter(  # one increment per type and source: a batch holds many of one type
            counted.event_labels(message.event_type, message.event_source)
            for index, message in enumerate(messages)
            if index not in failures
        )
        for (event_type, source), count in stored.items():
            counted.published.labels(event_type, source, "204").inc(count)
        if len(failures) < len(messages):
            counted.publisher_events.labels(grant.name).inc(len(messages) - len(failures))
        return failures


#: ``POST /publish``'s success, as the view's Flask response reaches the server: no headers.
NO_CONTENT: pending.Answer = (204, [], b"")


def headers_of(environ: dict[str, Any]) -> dict[str, str]:
    """The request headers (lower-case names), read from the environ in one pass, with a
    Content-Type granian could not read kept as ``""``.

    Granian puts ``""`` into the environ for a header value with bytes outside visible ASCII;
    Werkzeug's ``request.headers`` leaves an empty ``CONTENT_TYPE`` out, which would deliver
    such an event without its datacontenttype instead of refusing it.
    """
    headers = {
        key[5:].replace("_", "-").lower(): value
        for key, value in environ.items()
        if key.startswith("HTTP_")
    }
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if key in environ:
            headers[key.replace("_", "-").lower()] = environ[key]
    return headers


def declared_length(environ: dict[str, Any]) -> int | None:
    """The body's ``Content-Length`` as Werkzeug's ``request.content_length`` reads it."""
    return get_content_length(environ.get("CONTENT_LENGTH"), environ.get("HTTP_TRANSFER_ENCODING"))


def body_read_first(environ: dict[str, Any], limit: int) -> bytes:
    """The body :class:`proxy.bodies.BodiesFirst` read (at most one byte past the limit): 413
    when it is larger than ``MAX_REQUEST_SIZE``, 400 when it ended before its
    ``Content-Length`` (see :func:`proxy.views._read_body`)."""
    declared = declared_length(environ)
    read: bytes = environ[bodies.BODY]
    if (declared is not None and declared > limit) or len(read) > limit:
        raise RequestEntityTooLarge()
    if declared is not None and len(read) < declared:
        raise cut_off(len(read), declared)
    return read


def cut_off(received: int, declared: int) -> ClientDisconnected:
    return ClientDisconnected(
        f"the body ended after {received} of the {declared} bytes its Content-Length announced"
    )


def dedup_name(grant: publishers.Grant) -> str | None:
    """The publisher's name in the dedup key; None while publishing is open, which keeps the
    key of (source, id) that events stored before credentials were required have."""
    return None if grant is publishers.OPEN else grant.name


def prepare(
    event: cloudevent.Event, trace: dict[str, str], prefix: str, publisher: str | None
) -> OutboundMessage:
    """The stored message of a valid event: its subject, its guards checked, its original type
    and the request's trace context added."""
    subject = eventtypes.subject_for(event.get_source(), event.get_type(), prefix)
    guards.check(subject, event.get_data())
    stored = cloudevent.with_extensions(
        event, replacing={"originaltype": event.get_type()}, adding=trace
    )
    return outbound(stored, subject, publisher)

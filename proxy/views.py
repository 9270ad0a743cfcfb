"""HTTP endpoints of the proxy: thin adapters between Flask and the pure kernel.

``/publish`` takes CloudEvents in binary, structured and batch mode and answers 204 once
JetStream has acknowledged every event; ``/<application>/v1/events`` takes Kyma's legacy events
and answers 200 with the event id, as Kyma does.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge
from werkzeug.wrappers import Response as BaseResponse

from eventing import publishers
from eventing.errors import InvalidEvent, InvalidLegacyEvent, PublishError
from eventing.events import binding, cloudevent, eventtypes, legacy
from eventing.nats.messages import OutboundMessage, outbound
from eventing.settings import Settings
from eventing.sources.source import SubscriptionSource
from eventing.subscriptions import model
from proxy import auth, bodies, guards, pending, problems
from proxy.admission import Admission
from proxy.metrics import ProxyMetrics
from proxy.publisher import Publisher

blueprint = Blueprint("events", __name__)
_READ_LOCK = threading.Lock()  # the reader caches; one thread refreshes it at a time


@blueprint.post("/publish")
def publish() -> Response:
    settings = _settings()
    grant = auth.publisher_of()
    prefix = settings.events.type_prefix
    headers = _headers()
    trace = binding.trace_extensions(headers.items())
    mode, messages = binding.parse_http(
        headers,
        _read_body(),
        lambda event: _prepare(event, trace, prefix, _dedup_name(grant)),
    )
    auth.check(grant, [(m.event_source, m.event_type) for m in messages])
    failures = _store(messages, grant, batch=mode == "batch")
    if not failures:
        return _no_content()
    if mode != "batch":
        raise failures[0]
    return problems.batch_failure(failures, len(messages))


@blueprint.post("/<application>/v1/events")
def legacy_publish(application: str) -> Response:
    settings = _settings()
    grant = auth.publisher_of()
    converted = legacy.parse(application, _read_body(), settings.events.type_prefix)
    try:
        guards.check(converted.subject, converted.event.get_data())
        trace = binding.trace_extensions(_headers().items())
    except InvalidEvent as exc:
        raise InvalidLegacyEvent(
            legacy.BAD_PAYLOAD, "Bad payload syntax", more_info=str(exc)
        ) from None
    event = cloudevent.with_extensions(converted.event, replacing={}, adding=trace)
    auth.check(grant, [(event.get_source(), event.get_type())])
    failures = _store([outbound(event, converted.subject, _dedup_name(grant))], grant, legacy=True)
    if failures:
        raise failures[0]
    return jsonify({"event-id": event.get_id(), "status": "", "reason": ""})


@blueprint.get("/<application>/v1/events/subscribed")
def subscribed(application: str) -> Response:
    settings = _settings()
    reader: SubscriptionSource = current_app.extensions["eventing.subscriptions"]
    try:
        with _READ_LOCK:
            snapshot, _ = reader.read()
    except Exception as exc:  # the Kubernetes API is unreachable; the folder never raises
        return problems.subscriptions_unavailable(exc)
    pairs = model.subscribed(application, snapshot.valid, settings.events.type_prefix)
    return jsonify({"eventsInfo": pairs})


@blueprint.route("/healthz", methods=["GET", "HEAD"])
def healthz() -> Response:
    return Response("ok\n", mimetype="text/plain")


@blueprint.route("/readyz", methods=["GET", "HEAD"])
def readyz() -> Response:
    publisher: Publisher = current_app.extensions["eventing.publisher"]
    if publisher.ready():
        return Response("ready\n", mimetype="text/plain")
    return Response(
        "not ready: NATS is not connected or the stream does not answer\n",
        500,
        mimetype="text/plain",
    )


@blueprint.get("/metrics")
def metrics() -> BaseResponse:
    return Response.from_app(_metrics().wsgi_app, request.environ)


def _headers() -> dict[str, str]:
    """The request headers (lower-case names), read from the environ in one pass, with a
    Content-Type granian could not read kept as ``""``.

    Granian puts ``""`` into the environ for a header value with bytes outside visible ASCII;
    Werkzeug's ``request.headers`` leaves an empty ``CONTENT_TYPE`` out, which would deliver
    such an event without its datacontenttype instead of refusing it.
    """
    environ = request.environ
    headers = {
        key[5:].replace("_", "-").lower(): value
        for key, value in environ.items()
        if key.startswith("HTTP_")
    }
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if key in environ:
            headers[key.replace("_", "-").lower()] = environ[key]
    return headers


def _read_body() -> bytes:
    """The whole request body: 413 when it is larger than ``MAX_REQUEST_SIZE``, 400 when it
    ended before its ``Content-Length``.

    Werkzeug refuses an oversized ``Content-Length``, but a chunked body it merely cuts at the
    limit, which would store a truncated event; so we read one byte past the limit ourselves.
    Granian ends the input stream early, without an error, when the client goes away mid-body,
    and Werkzeug trusts a server that ends the stream itself; so a body shorter than its
    ``Content-Length`` would be stored cut off, and the client's retry then dropped as a
    duplicate of it. Chunked bodies have no length to compare with: a cut-off one is refused
    only where it no longer parses (every JSON mode), see the README's "Hostile input".
    """
    declared = request.content_length
    limit: int = current_app.config["MAX_CONTENT_LENGTH"]
    read: bytes | None = request.environ.get(bodies.BODY)
    if read is not None:  # proxy.bodies read it (at most one byte past the limit)
        if (declared is not None and declared > limit) or len(read) > limit:
            raise RequestEntityTooLarge()
        if declared is not None and len(read) < declared:
            raise _cut_off(len(read), declared)
        return read
    if declared is not None or "wsgi.input_terminated" not in request.environ:
        body = request.get_data(cache=False)
        if declared is not None and len(body) < declared:
            raise _cut_off(len(body), declared)
        return body
    stream = request.environ["wsgi.input"]
    chunks, size = [], 0
    while size <= limit:
        chunk = stream.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise RequestEntityTooLarge()
    return b"".join(chunks)


def _cut_off(received: int, declared: int) -> ClientDisconnected:
    return ClientDisconnected(
        f"the body ended after {received} of the {declared} bytes its Content-Length announced"
    )


class _Empty(Response):
    """An answer without a body, and so without a Content-Type."""

    default_mimetype = None


def _no_content() -> Response:
    return _Empty(status=204)


def _dedup_name(grant: publishers.Grant) -> str | None:
    """The publisher's name in the dedup key; None while publishing is open, which keeps the
    key of (source, id) that events stored before credentials were required have."""
    return None if grant is publishers.OPEN else grant.name


def _prepare(
    event: cloudevent.Event, trace: dict[str, str], prefix: str, publisher: str | None
) -> OutboundMessage:
    subject = eventtypes.subject_for(event.get_source(), event.get_type(), prefix)
    guards.check(subject, event.get_data())
    stored = cloudevent.with_extensions(
        event, replacing={"originaltype": event.get_type()}, adding=trace
    )
    return outbound(stored, subject, publisher)


def _store(
    messages: list[OutboundMessage],
    grant: publishers.Grant,
    *,
    batch: bool = False,
    legacy: bool = False,
) -> dict[int, PublishError]:
    """Publish, holding the events in flight, and record metrics; the failures by index (empty:
    everything stored). Served by :class:`proxy.bodies.BodiesFirst`, the events are left to its
    event loop instead (:mod:`proxy.pending`), held in flight until their PubAcks, and this
    returns no failures: the loop answers with ``batch``'s or ``legacy``'s failure answer if
    some events are not stored, else with the view's own.

    Raises:
        BatchTooLarge: more events than a process may hold in flight at all.
        Overloaded: the process holds too many events in flight to take these now.
    """
    publisher: Publisher = current_app.extensions["eventing.publisher"]
    admission: Admission = current_app.extensions["eventing.admission"]
    metrics = _metrics()
    deferred = pending.of(request.environ)
    if deferred is not None:
        admission.hold(len(messages))
        started = time.perf_counter()

        def settle(outcomes: list[PublishError | None]) -> pending.Answer | None:
            admission.release(len(messages))
            failures = _record(metrics, messages, outcomes, started, grant)
            if not failures:
                return None
            return problems.failure_answer(failures, len(messages), batch=batch, legacy=legacy)

        deferred.defer(messages, settle)
        return {}
    with admission.holding(len(messages)):
        started = time.perf_counter()
        outcomes = publisher.publish(messages)
    return _record(metrics, messages, outcomes, started, grant)


def _record(
    metrics: ProxyMetrics,
    messages: list[OutboundMessage],
    outcomes: list[PublishError | None],
    started: float,
    grant: publishers.Grant,
) -> dict[int, PublishError]:
    """Record the outcomes of publishing ``messages``, begun at ``started``; the failures."""
    elapsed_ms = (time.perf_counter() - started) * 1000
    failures = {i: error for i, error in enumerate(outcomes) if error is not None}
    code = str(next(iter(failures.values())).status) if failures else "204"
    metrics.backend_duration.labels(code, metrics.destination).observe(elapsed_ms)
    stored = Counter(  # one increment per type and source: a batch holds many of one type
        metrics.event_labels(message.event_type, message.event_source)
        for index, message in enumerate(messages)
        if index not in failures
    )
    for (event_type, source), count in stored.items():
        metrics.published.labels(event_type, source, "204").inc(count)
    if len(failures) < len(messages):
        metrics.publisher_events.labels(grant.name).inc(len(messages) - len(failures))
    return failures


def _settings() -> Settings:
    settings: Settings = current_app.extensions["eventing.settings"]
    return settings


def _metrics() -> ProxyMetrics:
    metrics: ProxyMetrics = current_app.extensions["eventing.metrics"]
    return metrics

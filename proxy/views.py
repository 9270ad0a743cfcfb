"""HTTP endpoints of the proxy: thin adapters between Flask and the pure kernel.

``/publish`` takes CloudEvents in binary, structured and batch mode and answers 204 once
JetStream has acknowledged every event; ``/<application>/v1/events`` takes Kyma's legacy events
and answers 200 with the event id, as Kyma does.
"""

from __future__ import annotations

import threading

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Response as BaseResponse

from eventing.errors import Forbidden, InvalidEvent, InvalidLegacyEvent, Unauthenticated
from eventing.events import binding, cloudevent, legacy
from eventing.nats.messages import outbound
from eventing.settings import Settings
from eventing.sources.source import SubscriptionSource
from eventing.subscriptions import model
from proxy import auth, bodies, guards, problems
from proxy.metrics import ProxyMetrics
from proxy.publisher import Publisher
from proxy.publishing import Publishing, body_read_first, cut_off, dedup_name, headers_of

blueprint = Blueprint("events", __name__)
_READ_LOCK = threading.Lock()  # the reader caches; one thread refreshes it at a time


@blueprint.post("/publish")
def publish() -> Response:
    publishing = _publishing()
    try:
        mode, messages, grant = publishing.accept(request.environ, _read_body)
    except (Unauthenticated, Forbidden) as refusal:
        auth.count_refusal(_metrics(), refusal)
        raise
    failures = publishing.store(request.environ, messages, grant, batch=mode == "batch")
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
        trace = binding.trace_extensions(headers_of(request.environ).items())
    except InvalidEvent as exc:
        raise InvalidLegacyEvent(
            legacy.BAD_PAYLOAD, "Bad payload syntax", more_info=str(exc)
        ) from None
    event = cloudevent.with_extensions(converted.event, replacing={}, adding=trace)
    auth.check(grant, [(event.get_source(), event.get_type())])
    message = outbound(event, converted.subject, dedup_name(grant))
    failures = _publishing().store(request.environ, [message], grant, legacy=True)
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
    limit: int = current_app.config["MAX_CONTENT_LENGTH"]
    if bodies.BODY in request.environ:  # proxy.bodies read it (at most one byte past the limit)
        return body_read_first(request.environ, limit)
    declared = request.content_length
    if declared is not None or "wsgi.input_terminated" not in request.environ:
        body = request.get_data(cache=False)
        if declared is not None and len(body) < declared:
            raise cut_off(len(body), declared)
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


class _Empty(Response):
    """An answer without a body, and so without a Content-Type."""

    default_mimetype = None


def _no_content() -> Response:
    return _Empty(status=204)


def _publishing() -> Publishing:
    publishing: Publishing = current_app.extensions["eventing.publishing"]
    return publishing


def _settings() -> Settings:
    settings: Settings = current_app.extensions["eventing.settings"]
    return settings


def _metrics() -> ProxyMetrics:
    metrics: ProxyMetrics = current_app.extensions["eventing.metrics"]
    return metrics

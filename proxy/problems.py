"""Error answers: every error the proxy sends, on ``/publish`` and the legacy endpoint alike.

Every failure a request can meet ends here, so no traceback or HTML page ever reaches a client
and an unexpected error is logged once, with its traceback, and answered 500. This is the one
module that decides an error's body and headers: a problem document (RFC 9457) on ``/publish``
and everywhere else, Kyma's bodies on ``/<application>/v1/events``; and a failure to store
(:class:`eventing.errors.PublishError`) answers its own status, with ``Retry-After`` where
retrying later helps (:func:`failure_headers`). Answers made before Flask runs (admission's 503,
:mod:`proxy.bodies`' 408) come from :func:`early_answer`, with the same bodies and headers.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from eventing.errors import (
    Forbidden,
    InvalidBatch,
    InvalidEvent,
    InvalidLegacyEvent,
    Overloaded,
    PublishError,
    Unauthenticated,
)

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
LEGACY_JSON = "application/json"
LEGACY_ENDPOINT = "events.legacy_publish"
#: The legacy endpoint as a route label (Flask's rule, as the request metrics write it).
LEGACY_ROUTE = "/{application}/v1/events"
_NOT_STORED = "Event not stored"
_CHALLENGE = 'Bearer realm="eventing"'


def register(app: Flask) -> None:
    """Install the error handlers on ``app``."""
    app.register_error_handler(InvalidEvent, _invalid_event)
    app.register_error_handler(InvalidLegacyEvent, _invalid_legacy_event)
    app.register_error_handler(PublishError, _publish_error)
    app.register_error_handler(Unauthenticated, _unauthenticated)
    app.register_error_handler(Forbidden, _forbidden)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)


def failure_headers(error: PublishError) -> dict[str, str]:
    """The headers a failure to store adds to its answer: ``Retry-After`` for an overload (too
    many requests or events in this process), which passes; none for the others."""
    if isinstance(error, Overloaded):
        return {"Retry-After": str(error.retry_after)}
    return {}


def early_answer(
    route: str | None, status: int, title: str, detail: str, headers: dict[str, str]
) -> tuple[list[tuple[str, str]], bytes]:
    """Headers and body of an error answered before Flask, on the request metrics' ``route``
    label (None: no route of ours): the legacy endpoint's are Kyma's ``{"status", "message"}``,
    the others' a problem document. ``headers`` go along (``Retry-After``, ``Connection``)."""
    if route == LEGACY_ROUTE:
        content_type, document = LEGACY_JSON, _legacy_failure(status, detail)
    else:
        content_type, document = PROBLEM_JSON, _problem(status, title, detail)
    body = _encode(document)
    return [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        *headers.items(),
    ], body


def early_failure(route: str, error: PublishError) -> tuple[list[tuple[str, str]], bytes]:
    """Headers and body of a failure to store answered before Flask (an overload refused by
    :mod:`proxy.admission`): the answer :func:`_publish_error` gives inside Flask."""
    return early_answer(route, error.status, _NOT_STORED, str(error), failure_headers(error))


def problem(status: int, title: str, detail: str, **extra: Any) -> Response:
    """An ``application/problem+json`` response (RFC 9457)."""
    return _response(status, PROBLEM_JSON, _problem(status, title, detail, **extra))


def batch_failure(errors: dict[int, PublishError], total: int) -> Response:
    """A batch some of whose events JetStream did not store: what failed, by index."""
    first = errors[min(errors)]
    response = problem(
        first.status,
        "Some events were not stored",
        f"{len(errors)} of {total} events were not stored; retrying the whole batch is safe,"
        " events already stored are recognised by source and id and stored once",
        errors=[
            {"index": index, "status": error.status, "detail": str(error)}
            for index, error in sorted(errors.items())
        ],
    )
    response.headers.update(failure_headers(first))
    return response


def failure_answer(
    errors: dict[int, PublishError], total: int, *, batch: bool, legacy: bool
) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body of the answer to events JetStream did not all store, given
    outside Flask (on the event loop, :mod:`proxy.pending`): the answer a view gives inside it
    (:func:`batch_failure` in batch mode, else the error handler's for its one event)."""
    if batch:
        response = batch_failure(errors, total)
        body = response.get_data()
        headers = [*response.headers.to_wsgi_list(), ("Content-Length", str(len(body)))]
        return response.status_code, headers, body
    error = errors[min(errors)]
    _log_failure(error)
    headers, body = early_failure(LEGACY_ROUTE if legacy else "/publish", error)
    return error.status, headers, body


def subscriptions_unavailable(error: Exception) -> Response:
    """The Subscriptions cannot be read right now (the Kubernetes API does not answer)."""
    return problem(
        503, "Subscriptions unavailable", f"cannot list subscriptions right now: {error}"
    )


def _problem(status: int, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}


def _legacy_failure(status: int, message: str) -> dict[str, Any]:
    return {"status": status, "message": message}


def _legacy(status: int, document: dict[str, Any]) -> Response:
    """A legacy endpoint error in Kyma's shape (``application/json``)."""
    return _response(status, LEGACY_JSON, document)


def _response(status: int, content_type: str, document: dict[str, Any]) -> Response:
    return Response(_encode(document), status, content_type=content_type)


def _encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


def _invalid_event(error: InvalidEvent) -> Response:
    extra: dict[str, Any] = {}
    if error.attribute:
        extra["attribute"] = error.attribute
    if isinstance(error, InvalidBatch):
        extra["errors"] = [
            {"index": index, "attribute": exc.attribute, "detail": str(exc)}
            for index, exc in sorted(error.errors.items())
        ]
    title = _INVALID_TITLES.get(error.status, "Invalid CloudEvent")
    return problem(error.status, title, str(error), **extra)


_INVALID_TITLES = {413: "Batch too large", 415: "Unsupported Media Type"}


def _invalid_legacy_event(error: InvalidLegacyEvent) -> Response:
    body: dict[str, Any] = {"status": 400, "type": error.kind, "message": str(error)}
    if error.field:
        body["details"] = [{"field": error.field, "type": error.field_kind, "message": str(error)}]
    else:
        body["moreInfo"] = error.more_info
    return _legacy(400, body)


def _publish_error(error: PublishError) -> Response:
    if request.endpoint == LEGACY_ENDPOINT:
        response = _legacy(error.status, _legacy_failure(error.status, str(error)))
    else:
        response = problem(error.status, _NOT_STORED, str(error))
    response.headers.update(failure_headers(error))
    _log_failure(error)
    return response


def _log_failure(error: PublishError) -> None:
    if error.status >= 500 and not isinstance(error, Overloaded):
        # an overload is counted in the request metrics; a line each would flood the log
        # exactly when the process is short of time
        logger.warning("publish failed (%s): %s", error.status, error)


def _unauthenticated(error: Unauthenticated) -> Response:
    """401 with RFC 6750's challenge; the detail says what was expected, never the credential."""
    if request.endpoint == LEGACY_ENDPOINT:
        response = _legacy(401, _legacy_failure(401, str(error)))
    else:
        response = problem(401, "Unauthorized", str(error))
    challenge = _CHALLENGE + (f', error="{error.error}"' if error.error else "")
    response.headers["WWW-Authenticate"] = challenge  # RFC 6750 section 3
    return response


def _forbidden(error: Forbidden) -> Response:
    """403 naming each refused event and what the publisher may publish."""
    if request.endpoint == LEGACY_ENDPOINT:
        return _legacy(403, _legacy_failure(403, str(error)))
    return problem(
        403,
        "Forbidden",
        str(error),
        publisher=error.publisher,
        allowed={"sources": list(error.sources), "types": list(error.types)},
        errors=[{"index": index, "detail": text} for index, text in sorted(error.refusals.items())],
    )


def _http_error(error: HTTPException) -> Response:
    status = error.code or 500
    if status == 413 and request.endpoint == LEGACY_ENDPOINT:
        return _legacy(
            413,
            {
                "status": 413,
                "type": "request_body_too_large",
                "message": "Request body too large",
                "moreInfo": "http: request body too large",
            },
        )
    detail = error.description or error.name
    if status == 400 and request.endpoint == LEGACY_ENDPOINT:  # e.g. a body cut short
        return _legacy(
            400,
            {
                "status": 400,
                "type": "bad_payload_syntax",
                "message": "Bad payload syntax",
                "moreInfo": detail,
            },
        )
    if status == 413:
        limit = request.max_content_length
        detail = f"the request body is larger than the limit of {limit} bytes (MAX_REQUEST_SIZE)"
    response = problem(status, error.name, detail)
    if status == 405 and error.get_headers():
        for name, value in error.get_headers():
            if name.lower() == "allow":
                response.headers["Allow"] = value
    return response


def _unexpected(error: Exception) -> Response:
    logger.error("unexpected error on %s %s", request.method, request.path, exc_info=error)
    return problem(500, "Internal Server Error", "an unexpected error occurred; it has been logged")

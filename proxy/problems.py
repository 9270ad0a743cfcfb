"""Error answers: JSON problem documents on ``/publish``, Kyma's bodies on the legacy endpoint.

Every failure a request can meet ends here, so no traceback or HTML page ever reaches a client
and an unexpected error is logged once, with its traceback, and answered 500.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from eventing.errors import (
    InvalidBatch,
    InvalidEvent,
    InvalidLegacyEvent,
    Overloaded,
    PublishError,
)

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
LEGACY_ENDPOINT = "events.legacy_publish"


def register(app: Flask) -> None:
    """Install the error handlers on ``app``."""
    app.register_error_handler(InvalidEvent, _invalid_event)
    app.register_error_handler(InvalidLegacyEvent, _invalid_legacy_event)
    app.register_error_handler(PublishError, _publish_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)


def problem(status: int, title: str, detail: str, **extra: Any) -> Response:
    """An ``application/problem+json`` response (RFC 9457)."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    response = jsonify(body)
    response.status_code = status
    response.mimetype = PROBLEM_JSON
    return response


def legacy_error(status: int, body: dict[str, Any]) -> Response:
    """A legacy endpoint error in Kyma's shape (``application/json``)."""
    response = jsonify(body)
    response.status_code = status
    return response


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
    if isinstance(first, Overloaded):
        response.headers["Retry-After"] = str(first.retry_after)
    return response


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
    return legacy_error(400, body)


def _publish_error(error: PublishError) -> Response:
    if request.endpoint == LEGACY_ENDPOINT:
        response = legacy_error(error.status, {"status": error.status, "message": str(error)})
    else:
        response = problem(error.status, "Event not stored", str(error))
    if isinstance(error, Overloaded):
        response.headers["Retry-After"] = str(error.retry_after)
    if error.status >= 500 and not isinstance(error, Overloaded):
        # an overload is counted in the request metrics; a line each would flood the log
        # exactly when the process is short of time
        logger.warning("publish failed (%s): %s", error.status, error)
    return response


def _http_error(error: HTTPException) -> Response:
    status = error.code or 500
    if status == 413 and request.endpoint == LEGACY_ENDPOINT:
        return legacy_error(
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
        return legacy_error(
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

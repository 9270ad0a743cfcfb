"""Publishes and receives CloudEvents with the Python ``cloudevents`` SDK (2.x core API).

    python -m tests.interop.sdk_python publish URL binary|structured < events.jsonl
    python -m tests.interop.sdk_python receive PORT

A separate process like the Go and Node programs, so every SDK is driven the same way. The SDK
serialises (``to_binary_event``, ``to_structured_event``) and parses (``from_http_event``);
``requests`` and werkzeug carry the bytes. The SDK has no batch format, so no batch mode.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import requests
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.http import (
    HTTPMessage,
    from_http_event,
    to_binary_event,
    to_structured_event,
)
from cloudevents.core.v1.event import CloudEvent
from dateutil.parser import isoparse  # type: ignore[import-untyped]
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response


def to_event(neutral: dict[str, Any]) -> CloudEvent:
    """The event built with the SDK's types (``time`` a datetime, so microseconds at most)."""
    attributes: dict[str, Any] = {
        "specversion": "1.0",
        "id": neutral["id"],
        "source": neutral["source"],
        "type": neutral["type"],
    }
    for name in ("subject", "datacontenttype"):
        if neutral.get(name) is not None:
            attributes[name] = neutral[name]
    if neutral.get("time") is not None:
        attributes["time"] = isoparse(neutral["time"])
    attributes.update(neutral.get("extensions", {}))
    data: Any = None
    if neutral.get("data_json") is not None:
        data = neutral["data_json"]
    elif neutral.get("data_base64") is not None:
        data = base64.b64decode(neutral["data_base64"])
    return CloudEvent(attributes, data)


def publish(url: str, mode: str, lines: Iterable[str]) -> None:
    serialise: Callable[[BaseCloudEvent], HTTPMessage] = {
        "binary": to_binary_event,
        "structured": to_structured_event,
    }[mode]
    for line in lines:
        neutral = json.loads(line)
        result: dict[str, Any] = {"id": neutral["id"]}
        try:
            message = serialise(to_event(neutral))
            response = requests.post(url, headers=message.headers, data=message.body, timeout=10)
        except Exception as error:  # the SDK's or client's refusal is the result
            result.update(status=0, error=f"{type(error).__name__}: {error}")
        else:
            result["status"] = response.status_code
            if response.status_code >= 300:
                result["error"] = response.text
        print(json.dumps(result), flush=True)


def received(event: BaseCloudEvent) -> dict[str, Any]:
    """The event as the SDK holds it: every attribute, data bytes in base64."""
    attributes = {
        name: value.isoformat() if isinstance(value, datetime) else value
        for name, value in event.get_attributes().items()
        if value is not None
    }
    data = event.get_data()
    if data is not None and not isinstance(data, bytes):
        data = json.dumps(data).encode() if not isinstance(data, str) else data.encode()
    return {
        "attributes": attributes,
        "data_base64": None if data is None else base64.b64encode(data).decode(),
    }


def receive(port: int) -> None:
    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        try:
            event = from_http_event(HTTPMessage(dict(request.headers), request.get_data()))
        except Exception as error:  # a parse failure is reported, answered 400
            line: dict[str, Any] = {"error": f"{type(error).__name__}: {error}"}
            status = 400
        else:
            line, status = received(event), 204
        print(json.dumps(line), flush=True)
        return Response(status=status)(environ, start_response)

    make_server("127.0.0.1", port, application, threaded=False).serve_forever()


def main(arguments: list[str]) -> None:
    if arguments[:1] == ["publish"] and len(arguments) == 3:
        publish(arguments[1], arguments[2], sys.stdin)
    elif arguments[:1] == ["receive"] and len(arguments) == 2:
        receive(int(arguments[1]))
    else:
        sys.exit("usage: sdk_python publish URL MODE < events.jsonl | sdk_python receive PORT")


if __name__ == "__main__":
    main(sys.argv[1:])

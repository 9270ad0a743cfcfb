"""``eventing publish``: one CloudEvent to the proxy, in binary or structured mode.

The event is built and checked with the kernel's own model (:mod:`eventing.events.cloudevent`),
so what the proxy would refuse as malformed is a usage error here, and the request is encoded
the way the workers encode theirs. What only the proxy can decide (credentials, grants,
limits) comes back as its problem document.
"""

from __future__ import annotations

import json
import uuid
from typing import IO, Any

import click

from cli import api
from eventing.errors import InvalidEvent
from eventing.events import cloudevent


@click.command()
@click.option("--source", required=True, help="The event's source, e.g. /orders.")
@click.option("--type", "event_type", required=True, help="The event's type.")
@click.option("--id", "event_id", help="The event's id (default: a new UUID).")
@click.option("--data", help="The event's data, a JSON value.")
@click.option(
    "--data-file",
    type=click.File("rb"),
    help="A file (- for stdin) holding the data: JSON is sent as JSON, anything else as bytes.",
)
@click.option(
    "--binary/--structured",
    default=True,
    help="HTTP binding mode: ce-* headers and the data as body (default), or one JSON document.",
)
@click.pass_obj
def publish(
    services: api.Services,
    source: str,
    event_type: str,
    event_id: str | None,
    data: str | None,
    data_file: IO[bytes] | None,
    binary: bool,
) -> None:
    """Publish one event to the proxy (EVENTING_PROXY_URL) and print its id and the answer."""
    if data is not None and data_file is not None:
        raise click.UsageError("give the data once: --data or --data-file, not both")
    event_id = event_id or str(uuid.uuid4())
    attributes: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "type": event_type,
    }
    value: Any = None
    if data is not None:
        try:
            value = json.loads(data)
        except ValueError as exc:
            raise click.BadParameter(f"expected a JSON value: {exc}", param_hint="--data") from None
        attributes["datacontenttype"] = "application/json"
    elif data_file is not None:
        value = _file_data(data_file.read())
        is_json = not isinstance(value, bytes)
        attributes["datacontenttype"] = (
            "application/json" if is_json else "application/octet-stream"
        )
    try:
        event = cloudevent.build(attributes, value)
    except InvalidEvent as exc:
        raise click.UsageError(f"not a valid CloudEvent: {exc}") from None
    stored = cloudevent.to_stored(event)
    if binary:
        headers, body = cloudevent.to_binary_request(stored, event_type)
    else:
        headers, body = {"Content-Type": "application/cloudevents+json"}, stored
    try:
        response = services.proxy.request("POST", "/publish", data=body, headers=headers)
    except api.Problem as exc:
        raise api.Failure(f"event {event_id} not published: {exc}") from None
    answer = f"{response.status_code} {response.reason}"
    text = response.text.strip()
    click.echo(f"{event_id}\t{answer}{': ' + text if text else ''}")


def _file_data(content: bytes) -> Any:
    """A file's JSON value, or its bytes when it holds no JSON."""
    try:
        return json.loads(content)
    except ValueError:
        return content

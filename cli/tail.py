"""``eventing tail``: deliveries to one subscription as they happen, one line each, from the
manager's NDJSON stream (GET /subscriptions/{ns}/{name}/tail). Ctrl-C ends it quietly."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.text import Text

from cli import api, shown
from cli.options import MOMENT, SUBSCRIPTION, subscription_path


@click.command()
@click.argument("subscription", type=SUBSCRIPTION)
@click.option(
    "--since", type=MOMENT, help="First the records since then (RFC 3339, or 15m, 2h ago)."
)
@click.option("--json", "as_json", is_flag=True, help="Print each record as the API sent it.")
@click.pass_obj
def tail(services: api.Services, subscription: str, since: str | None, as_json: bool) -> None:
    """Follow SUBSCRIPTION's deliveries: time, outcome, ce-id, source, result, seconds."""
    out = shown.console()
    path = f"{subscription_path(subscription)}/tail"
    try:
        for line in services.manager.lines(path, {"since": since} if since else None):
            if as_json:
                click.echo(line.decode(errors="replace"))
            else:
                out.print(record_line(_record(line)), soft_wrap=True)
    except KeyboardInterrupt:
        return
    raise api.Failure(f"the manager ended the tail of {subscription}")


def _record(line: bytes) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise api.Failure(f"the manager sent a tail line that is no JSON object: {line[:200]!r}")
    return record


def record_line(record: dict[str, Any]) -> Text:
    """One ledger record (``Record.shown()``) as one line."""
    attempt = record.get("attempt") or {}
    seconds = attempt.get("seconds")
    line = Text(f"{record.get('time')}  ")
    line.append_text(shown.outcome(str(record.get("outcome"))))
    line.append(f"  {record.get('id')}  {record.get('source')}")
    if attempt:
        line.append(f"  #{attempt.get('number')} {shown.result(attempt)}")
    elif record.get("reason"):
        line.append(f"  {record['reason']}")
    if isinstance(seconds, int | float):
        line.append(f"  {seconds:.3f}s")
    return line

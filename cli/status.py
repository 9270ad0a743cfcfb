"""``eventing subscriptions`` and ``eventing events show``: how subscriptions stand, and what
happened to one event at each of them (GET /subscriptions, GET /events)."""

from __future__ import annotations

from typing import Any

import click
from rich.text import Text

from cli import api, shown
from cli.options import json_option


@click.command()
@json_option
@click.pass_obj
def subscriptions(services: api.Services, as_json: bool) -> None:
    """Every subscription: ready, its deliveries pending, retrying, dead-lettered, last error."""
    document = services.manager.document("GET", "/subscriptions")
    if as_json:
        shown.print_json(document)
        return
    rows = shown.table(
        "SUBSCRIPTION", "READY", "PENDING", "RETRYING", "DEAD-LETTERED", "LAST ERROR"
    )
    for item in document.get("items", []):
        metadata, status = item.get("metadata", {}), item.get("status") or {}
        delivery = status.get("delivery") or {}  # absent from a manager older than the ledger
        rows.add_row(
            f"{metadata.get('namespace')}/{metadata.get('name')}",
            "yes" if status.get("ready") else "no",
            shown.cell(delivery.get("pending")),
            shown.cell(delivery.get("retrying")),
            shown.cell(delivery.get("deadLettered")),
            _last_error(delivery),
        )
    shown.console().print(rows)
    for bad in document.get("unreadable", []):
        click.echo(f"unreadable: {bad.get('file')}: {bad.get('problem')}", err=True)


@click.group()
def events() -> None:
    """What happened to events (the delivery ledger)."""


@events.command()
@click.option("--source", required=True, help="The event's source.")
@click.argument("event_id", metavar="ID")
@json_option
@click.pass_obj
def show(services: api.Services, source: str, event_id: str, as_json: bool) -> None:
    """Per subscription: where event ID stands and every attempt at its sink."""
    document = services.manager.document(
        "GET", "/events", params={"source": source, "id": event_id}
    )
    if as_json:
        shown.print_json(document)
        return
    out = shown.console()
    out.print(
        f"event {document.get('id')} from {document.get('source')}, type {document.get('type')}"
    )
    for subscription, delivery in sorted((document.get("subscriptions") or {}).items()):
        out.print()
        heading = Text(f"{subscription}: ")
        heading.append_text(shown.outcome(str(delivery.get("outcome"))))
        if delivery.get("sequence") is not None:
            heading.append(f" (sequence {delivery['sequence']})")
        if delivery.get("reason"):
            heading.append(f": {delivery['reason']}")
        out.print(heading)
        attempts = delivery.get("attempts") or []
        if attempts:
            out.print(shown.attempts_table(attempts))
        else:
            out.print("  no attempt yet")


def _last_error(delivery: dict[str, Any]) -> str:
    error = delivery.get("lastError")
    if not error:
        return "-"
    text = " ".join(shown.cell(error.get(f)) for f in ("time", "status") if error.get(f))
    text = f"{text} {error.get('reason', '')}".strip()
    if delivery.get("failingSince"):
        text += f" (failing since {delivery['failingSince']})"
    return text

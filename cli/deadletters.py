"""``eventing dlq``: list, show, redrive and purge dead letters (the manager's /deadletters).

A listing follows the API's pages (``next``) up to ``--limit``; a redrive is a long operation,
followed until it ends (:mod:`cli.progress`); a purge asks first, since nothing brings a purged
dead letter back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from cli import api, progress, shown
from cli.options import MOMENT, SUBSCRIPTION, json_option, one_of

PAGE = 1000  #: the most dead letters the API gives in one page
F = TypeVar("F", bound=Callable[..., Any])


def _which(command: F) -> F:
    """``--subscription`` and ``--sequence``: the dead letters a redrive or purge acts on."""
    command = click.option(
        "--sequence", type=click.IntRange(min=1), multiple=True, help="This one (repeat)."
    )(command)
    return click.option(
        "--subscription", type=SUBSCRIPTION, help="Every dead letter of this subscription."
    )(command)


@click.group()
def dlq() -> None:
    """Dead letters: events out of attempts, or refused for good by their sink."""


@dlq.command("list")
@click.option("--subscription", type=SUBSCRIPTION, help="Only this subscription's.")
@click.option("--reason", help="Only those whose reason contains this text (any case).")
@click.option("--since", type=MOMENT, help="Only those since then (RFC 3339, or 15m, 2h ago).")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="List at most this many (pages are followed up to it).",
)
@json_option
@click.pass_obj
def listing(
    services: api.Services,
    subscription: str | None,
    reason: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Dead letters, oldest first."""
    query: dict[str, str | int] = {
        name: value
        for name, value in (("subscription", subscription), ("reason", reason), ("since", since))
        if value
    }
    items: list[dict[str, Any]] = []
    after: Any = None
    while True:
        page: dict[str, str | int] = {**query, "limit": min(PAGE, limit - len(items))}
        if after is not None:
            page["after"] = after
        document = services.manager.document("GET", "/deadletters", params=page)
        items.extend(document.get("items", []))
        after = document.get("next")
        if after is None or len(items) >= limit:
            break
    if len(items) > limit:  # a page longer than asked for: the rest comes after the last shown
        items, after = items[:limit], items[limit - 1].get("sequence")
    if as_json:
        shown.print_json({"items": items, "next": after})
        return
    rows = shown.table(
        "SEQUENCE", "TIME", "SUBSCRIPTION", "SOURCE", "ID", "TYPE", "STATUS", "ATTEMPTS", "REASON"
    )
    for item in items:
        rows.add_row(
            *(
                shown.cell(item.get(field))
                for field in (
                    "sequence",
                    "time",
                    "subscription",
                    "source",
                    "id",
                    "type",
                    "status",
                    "attempts",
                    "reason",
                )
            )
        )
    shown.console().print(rows)
    if after is not None:
        click.echo(f"more after sequence {after}: raise --limit to see them", err=True)


@dlq.command("show")
@click.argument("sequence", type=click.IntRange(min=1))
@json_option
@click.pass_obj
def show(services: api.Services, sequence: int, as_json: bool) -> None:
    """One dead letter: why, where it was going, the event, and the ledger's attempts."""
    document = services.manager.document("GET", f"/deadletters/{sequence}")
    if as_json:
        shown.print_json(document)
        return
    out = shown.console()
    fields = shown.table("", "")
    fields.show_header = False
    for field in ("sequence", "time", "subscription", "sink", "type", "source", "id", "status"):
        fields.add_row(field, shown.cell(document.get(field)))
    fields.add_row("reason", shown.cell(document.get("reason")))
    out.print(fields)
    out.print()
    out.print("event:")
    out.print_json(data=document.get("event"))
    attempts = document.get("attempts")
    if isinstance(attempts, list) and attempts:
        out.print()
        out.print(shown.attempts_table(attempts, title="attempts"))
    elif attempts:
        out.print(f"{attempts} attempts (the ledger keeps no detail of them any more)")


@dlq.command()
@_which
@click.option("--reason", help="With --subscription: only those whose reason contains this.")
@click.option("--since", type=MOMENT, help="With --subscription: only those since then.")
@click.option("--no-wait", is_flag=True, help="Print the operation started and return.")
@json_option
@click.pass_obj
def redrive(
    services: api.Services,
    subscription: str | None,
    sequence: tuple[int, ...],
    reason: str | None,
    since: str | None,
    no_wait: bool,
    as_json: bool,
) -> None:
    """Deliver dead letters again, to their subscription's current sink only."""
    body: dict[str, Any]
    if one_of(subscription=subscription, sequence=sequence) == "subscription":
        body = {"subscription": subscription}
        body.update({k: v for k, v in (("reason", reason), ("since", since)) if v})
    elif reason or since:
        raise click.UsageError("--reason and --since filter a --subscription's dead letters")
    else:
        body = {"sequences": list(sequence)}
    document = services.manager.document("POST", "/deadletters/redrive", body=body)
    operation = progress.started(document)
    if no_wait:
        if as_json:
            shown.print_json(document)
        else:
            click.echo(f"{operation['id']} started: eventing follows it without --no-wait")
        return
    progress.follow(services, operation, as_json=as_json)


@dlq.command()
@_which
@click.option("--before", type=MOMENT, help="Every dead letter older than this.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_obj
def purge(
    services: api.Services,
    subscription: str | None,
    sequence: tuple[int, ...],
    before: str | None,
    yes: bool,
    as_json: bool,
) -> None:
    """Delete dead letters for good."""
    chosen = one_of(subscription=subscription, sequence=sequence, before=before)
    body: dict[str, Any]
    if chosen == "subscription":
        body, what = {"subscription": subscription}, f"every dead letter of {subscription}"
    elif chosen == "sequence":
        body = {"sequences": list(sequence)}
        what = "dead letter" + ("s " if len(sequence) > 1 else " ")
        what += ", ".join(map(str, sequence))
    else:
        body, what = {"before": before}, f"every dead letter older than {before}"
    if not yes:
        click.confirm(f"Purge {what}? This cannot be undone", abort=True, err=True)
    document = services.manager.document("POST", "/deadletters/purge", body=body)
    if as_json:
        shown.print_json(document)
    else:
        click.echo(f"purged {document.get('purged')} dead letters")

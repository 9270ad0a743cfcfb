"""How documents of the API look to a person: rich tables on stdout, colours only on a
terminal (rich decides, and honours NO_COLOR), and JSON exactly as the API sent it for scripts."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

#: How each outcome of the ledger (eventing.delivery.ledger.OUTCOMES) is drawn on a terminal.
OUTCOME_STYLES = {
    "delivered": "green",
    "redriven": "green",
    "retrying": "yellow",
    "pending": "cyan",
    "dead-lettered": "bold red",
}


def console() -> Console:
    """Where tables go: stdout, with no guessing at what looks like a number or a URL."""
    return Console(highlight=False)


def print_json(document: Any) -> None:
    """``document`` as indented JSON on stdout."""
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))


def table(*columns: str, title: str | None = None) -> Table:
    return Table(
        *columns, title=title, title_justify="left", box=None, pad_edge=False, header_style="bold"
    )


def outcome(name: str) -> Text:
    return Text(name, style=OUTCOME_STYLES.get(name, ""))


def cell(value: Any) -> str:
    """A value as a table shows it; nothing as ``-``."""
    if value is None or value == "":
        return "-"
    return str(value)


def result(attempt: Mapping[str, Any]) -> str:
    """What one attempt came to: the sink's status, or why there was none."""
    status, error = attempt.get("status"), attempt.get("error")
    if status is not None:
        return f"{status} {error}" if error else str(status)
    kind = str(attempt.get("kind", "error"))
    return f"{kind}: {error}" if error else kind


def attempts_table(attempts: Iterable[Mapping[str, Any]], title: str | None = None) -> Table:
    """Every attempt, oldest first: number, start, duration, result, the sink's answer."""
    shown = table("#", "TIME", "SECONDS", "RESULT", "ANSWER", title=title)
    for attempt in attempts:
        seconds = attempt.get("seconds")
        shown.add_row(
            cell(attempt.get("number")),
            cell(attempt.get("time")),
            f"{seconds:.3f}" if isinstance(seconds, int | float) else "-",
            result(attempt),
            cell(" ".join(str(attempt.get("answer", "")).split())[:120]),
        )
    return shown

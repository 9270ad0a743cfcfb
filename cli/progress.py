"""Following a long operation (a replay, a redrive) on ``GET /operations/{id}`` until it ends.

The bar goes to stderr, and only on a terminal, so ``--json`` output and pipes stay clean; the
summary goes to stdout. Ctrl-C stops the waiting, not the operation: the manager goes on, and
the message says where to look.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli import api, shown

POLL = 0.5  #: seconds between two looks at an operation
INTERRUPTED = 130  #: exit code when Ctrl-C ends the waiting


def follow(services: api.Services, operation: dict[str, Any], *, as_json: bool) -> None:
    """Poll ``operation`` until it is no longer running, then print how it ended.

    Raises:
        api.Failure: the operation failed (its detail says why), or the manager did.
    """
    path = f"/operations/{quote(str(operation['id']), safe='')}"
    terminal = Console(stderr=True)
    try:
        if terminal.is_terminal:
            operation = _with_bar(services, path, operation, terminal)
        else:
            while operation.get("state") == "running":
                time.sleep(POLL)
                operation = services.manager.document("GET", path)
    except KeyboardInterrupt:
        click.echo(
            f"stopped waiting; {operation['id']} goes on in the manager: GET {path}", err=True
        )
        raise SystemExit(INTERRUPTED) from None
    if as_json:
        shown.print_json(operation)
    else:
        click.echo(summary(operation))
    if operation.get("state") == "failed":
        raise api.Failure(f"{operation['id']} failed: {operation.get('detail') or 'no detail'}")


def started(document: Any) -> dict[str, Any]:
    """The operation a 202 answer started.

    Raises:
        api.Failure: the answer holds none.
    """
    operation = document.get("operation") if isinstance(document, dict) else None
    if not isinstance(operation, dict) or "id" not in operation:
        raise api.Failure(f"the manager started no operation: it answered {document!r:.200}")
    return operation


def summary(operation: dict[str, Any]) -> str:
    """How far an operation came, in one line."""
    line = (
        f"{operation['id']} {operation.get('state')}: {operation.get('done', 0)} of"
        f" {operation.get('total', 0)} events handed over"
    )
    if operation.get("skipped"):
        line += f", {operation['skipped']} skipped"
    if operation.get("expired"):
        line += f", {operation['expired']} expired (retention removed them before the replay)"
    detail = operation.get("detail")
    return f"{line}; {detail}" if detail else line


def _with_bar(
    services: api.Services, path: str, operation: dict[str, Any], terminal: Console
) -> dict[str, Any]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=terminal) as bar:
        label = f"{operation.get('kind', 'operation')} {operation.get('subscription', '')}"
        task = bar.add_task(label.strip(), total=operation.get("total") or None)
        while True:
            bar.update(task, total=operation.get("total") or None, completed=operation.get("done"))
            if operation.get("state") != "running":
                return operation
            time.sleep(POLL)
            operation = services.manager.document("GET", path)

"""How the bench scripts print their results: Markdown tables, sizes in MiB."""

from __future__ import annotations

import math
from collections.abc import Sequence


def render(head: tuple[str, ...], lines: Sequence[tuple[str, ...]]) -> str:
    """A Markdown table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(line[i]) for line in [head, *lines]) for i in range(len(head))]

    def row(cells: tuple[str, ...]) -> str:
        padded = [cells[0].ljust(widths[0])]
        padded += [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "| " + " | ".join(padded) + " |"

    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([row(head), separator, *map(row, lines)])


def mib(size: int) -> str:
    return f"{size / 2**20:,.0f} MiB"


def ms_per(cpu_seconds: float, count: float) -> float:
    """Milliseconds of CPU per unit (request, event) when ``count`` units took ``cpu_seconds``;
    NaN when there were none, so an empty row shows no figure instead of a division error."""
    return cpu_seconds * 1000 / count if count else math.nan


def ms(value: float) -> str:
    """A CPU figure in milliseconds as the tables print it ("-": none)."""
    return "-" if math.isnan(value) else f"{value:.2f}"

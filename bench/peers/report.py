"""What the peer suite recorded, round by round, and the tables it prints (pure).

Every figure is a median over the rounds with its range, because on a shared 2-core machine one
round can be disturbed; a ratio is ours ÷ Kyma's, of the medians, with the range of the per-round
ratios (round ``n`` of ours against round ``n`` of Kyma, which ran right after it).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from bench.tables import mib, render

SIDES = ("ours", "kyma")


@dataclass(frozen=True)
class PublishRound:
    """One wrk run against one side's proxy."""

    side: str
    load: str  #: e.g. "binary, 16 conns"
    round: int
    accepted: int  #: events answered 2xx (a batch request counts its events)
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int  #: non-2xx answers and socket errors
    stored: int  #: messages the stream gained
    proxy_cpu: float  #: CPU seconds of the proxy's process tree over the run
    nats_cpu: float  #: CPU seconds of the side's nats-server over the run

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0

    @property
    def proxy_ms(self) -> float:
        """Proxy CPU milliseconds per accepted event."""
        return per_event_ms(self.proxy_cpu, self.accepted)

    @property
    def nats_ms(self) -> float:
        return per_event_ms(self.nats_cpu, self.accepted)


@dataclass(frozen=True)
class DeliveryRound:
    """One end-to-end run: wrk into one side's proxy, its dispatcher to the sink."""

    side: str
    round: int
    accepted: int  #: events the proxy answered 2xx
    errors: int
    delivered: int  #: unique ids the sink received
    received: int  #: requests the sink received (duplicates included)
    started: float  #: Unix time the load started
    load_ended: float
    last_arrival: float  #: Unix time of the sink's last request
    cpu: dict[str, float] = field(default_factory=dict)  #: CPU seconds per component

    @property
    def rate(self) -> float:
        """Delivered events per second, load start to last delivery."""
        seconds = self.last_arrival - self.started
        return self.delivered / seconds if self.delivered and seconds > 0 else 0.0

    @property
    def duplicates(self) -> int:
        return self.received - self.delivered

    @property
    def lost(self) -> int:
        """Accepted events that never reached the sink: must be 0. (The sink may get a few
        more than wrk counted: requests in flight when wrk stopped.)"""
        return max(0, self.accepted - self.delivered)

    @property
    def drain_seconds(self) -> float:
        return max(0.0, self.last_arrival - self.load_ended)

    def cpu_ms(self) -> dict[str, float]:
        """CPU milliseconds per delivered event, per component and in all (``sum``)."""
        each = {name: per_event_ms(seconds, self.delivered) for name, seconds in self.cpu.items()}
        return {**each, "sum": sum(each.values())}


@dataclass(frozen=True)
class LatencyRound:
    """Paced binary events through one side, publish → sink."""

    side: str
    rate: int  #: events/s the publisher kept to
    round: int
    sent: int
    failures: int  #: requests not answered 2xx
    delivered: int
    p50_ms: float  #: from when each event was due to its first arrival at the sink
    p99_ms: float


@dataclass(frozen=True)
class Memory:
    """Resident memory of one component's process tree at one moment."""

    rss: int  #: bytes, summed over the tree's processes (shared pages counted in each)
    pss: int  #: bytes, proportional set size: shared pages split between their users
    processes: int


@dataclass(frozen=True)
class Busy:
    """CPU seconds used so far, at one moment."""

    at: float  #: time.monotonic()
    machine: float  #: every core's busy time
    measured: float  #: the processes the suite measures


def elsewhere_percent(started: Busy, ended: Busy) -> float:
    """Percent of one core the rest of the machine used between the two moments."""
    wall = ended.at - started.at
    rest = (ended.machine - started.machine) - (ended.measured - started.measured)
    return max(0.0, rest) / wall * 100 if wall > 0 else 0.0


def per_event_ms(cpu_seconds: float, events: int) -> float:
    return cpu_seconds * 1000 / events if events else math.nan


def spread(values: Sequence[float], fmt: str = "{:,.0f}") -> str:
    """``median [min-max]``, or the value alone when there is one round."""
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    low, high = fmt.format(min(values)), fmt.format(max(values))
    return f"{fmt.format(statistics.median(values))} [{low}-{high}]"


def ratio(ours: Sequence[float], kyma: Sequence[float], fmt: str = "{:.2f}") -> str:
    """Ours ÷ Kyma's: of the medians, with the range of the per-round ratios."""
    if not ours or not kyma or statistics.median(kyma) == 0:
        return "-"
    of_medians = fmt.format(statistics.median(ours) / statistics.median(kyma))
    per_round = [o / k for o, k in zip(ours, kyma, strict=False) if k]
    if len(per_round) < 2:
        return f"{of_medians}x"
    return f"{of_medians}x [{fmt.format(min(per_round))}-{fmt.format(max(per_round))}]"


Round = TypeVar("Round", PublishRound, DeliveryRound, LatencyRound)


def _by_round(rounds: Iterable[Round], side: str, **fields: object) -> list[Round]:
    """``side``'s rounds whose ``fields`` have the values given, in round order."""
    return sorted(
        (
            r
            for r in rounds
            if r.side == side and all(getattr(r, k) == v for k, v in fields.items())
        ),
        key=lambda r: r.round,
    )


def publish_rows(loads: Sequence[str], batch: str, single: str) -> list[tuple[str, str, str]]:
    rows = [(load, load, load) for load in loads if load != batch]
    if batch in loads:
        rows.append((f"ours {batch} vs Kyma {single}", batch, single))
    return rows


def _medians(
    ours: list[PublishRound],
    kyma: list[PublishRound],
    value: Callable[[PublishRound], float],
    fmt: str,
) -> str:
    """``ours / Kyma``: the median of ``value`` over each side's rounds."""
    return " / ".join(
        fmt.format(statistics.median(value(r) for r in side)) if side else "-"
        for side in (ours, kyma)
    )


def publish_table(rounds: Sequence[PublishRound], rows: Sequence[tuple[str, str, str]]) -> str:
    head = (
        "load",
        "events/s ours",
        "events/s Kyma",
        "ours ÷ Kyma",
        "CPU ms/event proxy ours / Kyma",
        "nats ms/event ours / Kyma",
        "p50 ms ours / Kyma",
        "p99 ms ours / Kyma",
        "errors ours / Kyma",
        "stored - 2xx ours / Kyma",
    )
    lines = []
    for label, our_load, kyma_load in rows:
        ours = _by_round(rounds, "ours", load=our_load)
        kyma = _by_round(rounds, "kyma", load=kyma_load)

        def surplus(side: list[PublishRound]) -> str:
            return " ".join(f"{r.stored - r.accepted:+,}" for r in side) or "-"

        lines.append(
            (
                label,
                spread([r.rate for r in ours]),
                spread([r.rate for r in kyma]),
                ratio([r.rate for r in ours], [r.rate for r in kyma]),
                _medians(ours, kyma, lambda r: r.proxy_ms, "{:.3f}"),
                _medians(ours, kyma, lambda r: r.nats_ms, "{:.3f}"),
                _medians(ours, kyma, lambda r: r.p50_ms, "{:.2f}"),
                _medians(ours, kyma, lambda r: r.p99_ms, "{:.1f}"),
                f"{sum(r.errors for r in ours):,} / {sum(r.errors for r in kyma):,}",
                f"{surplus(ours)} / {surplus(kyma)}",
            )
        )
    return render(head, lines)


def delivery_table(rounds: Sequence[DeliveryRound]) -> str:
    head = (
        "system",
        "delivered/s",
        "CPU ms per delivered event",
        "accepted",
        "delivered",
        "duplicates",
        "lost",
        "drain s",
    )
    lines = []
    for side in SIDES:
        mine = _by_round(rounds, side)
        if not mine:
            continue
        components = list(mine[0].cpu_ms())
        cpu = ", ".join(
            f"{name} {spread([r.cpu_ms()[name] for r in mine], '{:.2f}')}" for name in components
        )
        lines.append(
            (
                side,
                spread([r.rate for r in mine]),
                cpu,
                f"{sum(r.accepted for r in mine):,}",
                f"{sum(r.delivered for r in mine):,}",
                f"{sum(r.duplicates for r in mine):,}",
                f"{sum(r.lost for r in mine):,}",
                spread([r.drain_seconds for r in mine], "{:.1f}"),
            )
        )
    ours = [r for r in rounds if r.side == "ours"]
    kyma = [r for r in rounds if r.side == "kyma"]
    lines.append(
        (
            "ours ÷ Kyma",
            ratio([r.rate for r in ours], [r.rate for r in kyma]),
            "sum "
            + ratio([r.cpu_ms()["sum"] for r in ours], [r.cpu_ms()["sum"] for r in kyma], "{:.1f}"),
            *("",) * 5,
        )
    )
    return render(head, lines)


def latency_table(rounds: Sequence[LatencyRound]) -> str:
    head = ("paced events/s", "system", "publish→sink p50 ms", "p99 ms", "sent", "failed", "lost")
    lines = []
    for rate in sorted({r.rate for r in rounds}):
        for side in SIDES:
            mine = _by_round(rounds, side, rate=rate)
            if not mine:
                continue
            lines.append(
                (
                    f"{rate:,}",
                    side,
                    spread([r.p50_ms for r in mine], "{:.1f}"),
                    spread([r.p99_ms for r in mine], "{:.1f}"),
                    f"{sum(r.sent for r in mine):,}",
                    f"{sum(r.failures for r in mine):,}",
                    f"{sum(max(0, r.sent - r.failures - r.delivered) for r in mine):,}",
                )
            )
    return render(head, lines)


def memory_table(snapshots: dict[str, dict[str, dict[str, Memory]]]) -> str:
    """``snapshots``: scenario → side → component → its memory after that scenario's rounds."""
    head = ("after", "system", "component", "RSS", "PSS", "processes")
    lines = []
    for scenario, sides in snapshots.items():
        for side, components in sides.items():
            for name, memory in components.items():
                lines.append(
                    (scenario, side, name, mib(memory.rss), mib(memory.pss), str(memory.processes))
                )
            total = Memory(
                sum(m.rss for m in components.values()),
                sum(m.pss for m in components.values()),
                sum(m.processes for m in components.values()),
            )
            lines.append(
                (scenario, side, "all", mib(total.rss), mib(total.pss), str(total.processes))
            )
    return render(head, lines)

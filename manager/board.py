"""The status board: the manager's current status view, and the metrics that mirror it.

After each reconcile the runner hands the board what it found (the snapshot, the consumers not
set up, a problem that kept it from NATS); between reconciles the board only follows the pull
tasks' backlogs (a consumer that shed events says so for :data:`SHEDDING_SHOWN`). The view
itself is :func:`eventing.subscriptions.status.view`'s, a pure function; the board adds only the
clock and the metrics. The HTTP API (:mod:`manager.status`) and the Kubernetes status writer read
:attr:`StatusBoard.view`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Protocol

from eventing.settings import Settings
from eventing.sources.snapshot import Snapshot
from eventing.subscriptions import status
from eventing.subscriptions.model import Subscription
from manager.metrics import ManagerMetrics

SHEDDING_SHOWN = 300.0  #: how long a subscription's status reports that it shed events
BACKEND = "NATS_Jetstream"  #: the ``eventing_backend`` label of Kyma's status metric


class Backlog(Protocol):
    """What the pull task of a consumer reports about its backlog."""

    @property
    def pending(self) -> int: ...

    @property
    def shed(self) -> int: ...

    @property
    def last_shed(self) -> float | None: ...


class StatusBoard:
    """Holds the view the manager shows, replaced as a whole on every change."""

    def __init__(
        self,
        metrics: ManagerMetrics,
        *,
        stream: str,
        dead_letter_stream: str,
        max_backlog: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.view = status.View()
        self._metrics = metrics
        self._stream = stream
        self._dead_letter_stream = dead_letter_stream
        self._max_backlog = max_backlog
        self._clock = clock
        self._last: tuple[Snapshot, Mapping[str, str], str | None, Mapping[str, str]] | None = None
        self._shedding_shown: dict[str, str] = {}

    @classmethod
    def for_settings(cls, settings: Settings, metrics: ManagerMetrics) -> StatusBoard:
        """The board of a manager configured by ``settings``."""
        return cls(
            metrics,
            stream=settings.stream.name,
            dead_letter_stream=settings.stream.dead_letter_name,
            max_backlog=settings.manager.max_backlog,
        )

    def publish(
        self,
        snapshot: Snapshot,
        errors: Mapping[str, str],
        problem: str | None,
        backlogs: Mapping[str, Backlog],
        *,
        refused: Mapping[str, str],
    ) -> status.View:
        """Show ``snapshot`` as a reconcile left it: ``errors`` by consumer name, ``problem``
        if NATS could not be reconciled at all, ``refused`` sinks by subscription. Returns the
        new view."""
        self._last = (snapshot, errors, problem, refused)
        self._shedding_shown = shedding = self._shedding(backlogs)
        self.view = view = status.view(
            snapshot.entries,
            snapshot.unreadable,
            errors=errors,
            problem=problem,
            shedding=shedding,
            refused=refused,
            previous=self.view,
        )
        for entry, item in zip(snapshot.entries, view.items, strict=True):
            if isinstance(entry, Subscription):
                ready = 1 if item["status"]["ready"] else 0
                for binding in entry.bindings:
                    self._metrics.status.labels(
                        entry.name, entry.namespace, binding.consumer_name, BACKEND, self._stream
                    ).set(ready)
        return view

    def follow(self, backlogs: Mapping[str, Backlog]) -> None:
        """Between reconciles: record each backlog, and show a change in shedding."""
        for name, backlog in backlogs.items():
            self._metrics.pending.labels(name).set(backlog.pending)
        if self._last is not None and self._shedding(backlogs) != self._shedding_shown:
            snapshot, errors, problem, refused = self._last
            self.publish(snapshot, errors, problem, backlogs, refused=refused)

    def _shedding(self, backlogs: Mapping[str, Backlog]) -> dict[str, str]:
        """Why each consumer that shed events within :data:`SHEDDING_SHOWN` did, by name."""
        now = self._clock()
        return {
            name: status.shed_reason(
                backlog.shed,
                backlog.last_shed,
                dead_letter_stream=self._dead_letter_stream,
                max_backlog=self._max_backlog,
            )
            for name, backlog in backlogs.items()
            if backlog.last_shed is not None and now - backlog.last_shed < SHEDDING_SHOWN
        }

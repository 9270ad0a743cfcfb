"""The status board: the manager's current status view, and the metrics that mirror it.

After each reconcile the runner hands the board what it found (the snapshot, the consumers not
set up, a problem that kept it from NATS); between reconciles the board follows the pull
tasks' backlogs (a consumer that shed events says so for :data:`SHEDDING_SHOWN`) and the
delivery figures the ledger follower keeps in :attr:`StatusBoard.health`
(:mod:`manager.health`), and shows them anew when they changed. The view itself is
:func:`eventing.subscriptions.status.view`'s, a pure function; the board adds only the clock
and the metrics. The HTTP API (:mod:`manager.status`) and the Kubernetes status writer read
:attr:`StatusBoard.view`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from eventing.settings import Settings
from eventing.sources.snapshot import Snapshot
from eventing.subscriptions import status
from eventing.subscriptions.model import Subscription
from manager.health import DeliveryHealth
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
        self._pending_shown: dict[str, int] = {}
        self.health = DeliveryHealth()  #: fed by :func:`manager.health.follow`
        self._health_shown = self.health.version
        #: each consumer's labels of the manager's own series: namespace, name, type
        self._consumers: dict[str, tuple[str, str, str]] = {}

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
        self._pending_shown = pending = {name: b.pending for name, b in backlogs.items()}
        self.health.keep_only([entry.key for entry in snapshot.entries])
        self._health_shown = self.health.version
        delivery = self.health.figures()
        self.view = view = status.view(
            snapshot.entries,
            snapshot.unreadable,
            errors=errors,
            problem=problem,
            shedding=shedding,
            refused=refused,
            pending=pending,
            delivery=delivery,
            previous=self.view,
        )
        consumers: dict[str, tuple[str, str, str]] = {}
        for entry, item in zip(snapshot.entries, view.items, strict=True):
            if isinstance(entry, Subscription):
                ready = 1 if item["status"]["ready"] else 0
                for binding in entry.bindings:
                    consumers[binding.consumer_name] = (
                        entry.namespace,
                        entry.name,
                        binding.original_type,
                    )
                    self._metrics.status.labels(
                        entry.name, entry.namespace, binding.consumer_name, BACKEND, self._stream
                    ).set(ready)
                retrying = delivery[entry.key].retrying if entry.key in delivery else 0
                self._metrics.in_retry.labels(entry.namespace, entry.name).set(retrying)
        self._forget_series(consumers)
        return view

    def _forget_series(self, consumers: dict[str, tuple[str, str, str]]) -> None:
        """Remove the gauges of subscriptions and types gone (a gauge would show its last value
        for good), and keep the labels of the consumers there are now."""
        subscriptions = {labels[:2] for labels in consumers.values()}
        for name, labels in self._consumers.items() - consumers.items():
            namespace, subscription, _ = labels
            with contextlib.suppress(KeyError):  # never set
                self._metrics.pending.remove(*labels)
            with contextlib.suppress(KeyError):
                self._metrics.status.remove(subscription, namespace, name, BACKEND, self._stream)
            if labels[:2] not in subscriptions:
                with contextlib.suppress(KeyError):
                    self._metrics.in_retry.remove(namespace, subscription)
        self._consumers = consumers

    def follow(self, backlogs: Mapping[str, Backlog]) -> None:
        """Between reconciles: record each backlog, and show a change in shedding, in a
        backlog or in the delivery figures."""
        for name, backlog in backlogs.items():
            labels = self._consumers.get(name)
            if labels is not None:
                self._metrics.pending.labels(*labels).set(backlog.pending)
        if self._last is not None and (
            self._shedding(backlogs) != self._shedding_shown
            or {name: b.pending for name, b in backlogs.items()} != self._pending_shown
            or self.health.version != self._health_shown
        ):
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

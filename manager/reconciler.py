"""The reconciler: carries out :mod:`manager.reconcile`'s plan against JetStream.

Given a snapshot of the subscriptions, it lists the stream's consumers, creates, updates and
deletes what the plan says (each failed action retried with back-off,
:class:`~manager.reconcile.Retries`), and points the pull tasks at the consumers that exist.
It decides nothing itself (that is the pure plan's job) and shows nothing (that is the status
board's): it returns what it could not do, as an :class:`Outcome`, including the subscriptions
whose sink the egress policy refuses (:mod:`manager.sinks`), whose pulls it holds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from eventing.delivery.egress import EgressPolicy, policy_for
from eventing.nats.client import JetStreamClient
from eventing.settings import Settings
from eventing.sources.snapshot import Snapshot
from manager import consumers, reconcile, sinks
from manager.metrics import ManagerMetrics
from manager.reconcile import Action

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one reconcile could not do."""

    problem: str | None = None  #: why nothing was reconciled (NATS down, a failed listing)
    errors: Mapping[str, str] = field(default_factory=dict)  #: consumers not set up, by name
    deletions_done: bool = False  #: every consumer meant to go is gone
    refused: Mapping[str, str] = field(default_factory=dict)  #: sinks refused, by subscription
    created: tuple[str, ...] = ()  #: consumers this reconcile created (a startFrom replays)


class Pulls(Protocol):
    """What the reconciler asks of the pull tasks (:class:`~manager.consumers.Dispatcher`)."""

    def sync(self, targets: dict[str, consumers.Target]) -> None: ...


class Reconciler:
    """Brings the stream's consumers and the pull tasks in line with each snapshot."""

    def __init__(
        self,
        client: JetStreamClient,
        pulls: Pulls,
        metrics: ManagerMetrics,
        *,
        stream: str,
        ack_wait: float,
        egress: EgressPolicy,
    ) -> None:
        self._client = client
        self._egress = egress
        self._pulls = pulls
        self._metrics = metrics
        self._stream = stream
        self._ack_wait = ack_wait
        self._retries = reconcile.Retries()

    @classmethod
    def for_settings(
        cls, client: JetStreamClient, pulls: Pulls, metrics: ManagerMetrics, settings: Settings
    ) -> Reconciler:
        """The reconciler of a manager configured by ``settings``."""
        return cls(
            client,
            pulls,
            metrics,
            stream=settings.stream.name,
            ack_wait=settings.delivery.ack_wait,
            egress=policy_for(settings),
        )

    @property
    def next_retry(self) -> float | None:
        """When (``time.monotonic()``) a failed consumer action is due again, if one is."""
        return self._retries.next_attempt

    async def reconcile(self, snapshot: Snapshot) -> Outcome:
        """Apply the plan for ``snapshot``; never raises for NATS trouble, which the outcome
        reports (the next reconcile tries again)."""
        valid = snapshot.valid
        wanted = reconcile.desired(valid, self._ack_wait)
        if not self._client.is_connected:
            return Outcome(problem="NATS connection not ready")
        try:
            js = self._client.jetstream
            actual = await consumers.actual_consumers(js, self._stream)
            actions = reconcile.plan(
                wanted, actual, snapshot.invalid_keys, snapshot.unreadable_files
            )
            errors = await self._apply(actions)
        except Exception as exc:  # NATS trouble of any kind: report it, retry on the next poll
            problem = f"{type(exc).__name__}: {exc}"
            logger.warning("reconcile failed: %s", problem)
            # The pulls go on as they were: the consumers they read still exist, and stopping
            # them would only delay delivery until the next success.
            return Outcome(problem=problem)
        # The consumers of a refused sink are held: their events wait, within MAX_BACKLOG.
        refused = await sinks.refusals(valid, self._egress)
        by_name = {s.name: s for s in wanted.values()}
        self._pulls.sync(
            {
                name: consumers.Target(subscription, by_name[name], refused.get(subscription.key))
                for subscription in valid
                for name in (b.consumer_name for b in subscription.bindings)
                if name not in errors
            }
        )
        deletions_done = not any(
            isinstance(a, reconcile.Delete) and a.name in errors for a in actions
        )
        created = tuple(s.name for s in consumers.created(actions) if s.name not in errors)
        return Outcome(
            errors=errors, deletions_done=deletions_done, refused=refused, created=created
        )

    async def _apply(self, actions: list[Action]) -> dict[str, str]:
        """Carry out the actions that are due; the error of each consumer not set up (held
        back or failed now), by name."""
        self._retries.forget_except({reconcile.target_of(a) for a in actions})
        attempt, errors = self._retries.due(actions, time.monotonic())
        failed = await consumers.apply(self._client.jetstream, self._stream, attempt)
        for failure in self._retries.record(attempt, failed, time.monotonic()):
            action = failure.action
            what = (
                f"deleting consumer {action.name}"
                if isinstance(action, reconcile.Delete)
                else f"consumer {action.spec.name} of {action.spec.subscription}"
                f" ({action.spec.event_type})"
            )
            logger.warning("%s failed: %s", what, failure.error)
        if failed:
            pause = min(self._retries.failures[name].pause for name in failed)
            logger.warning(
                "%d consumer action(s) failed; each is retried with back-off, the next in %g s",
                len(failed),
                pause,
            )
        for spec in consumers.created(attempt):
            if spec.name not in failed:
                namespace, _, name = spec.subscription.partition("/")
                self._metrics.subscribed.labels(name, namespace, spec.event_type, spec.name).inc()
        return {**errors, **failed}

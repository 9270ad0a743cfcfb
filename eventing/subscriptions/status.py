"""What a subscription's status says, in Kyma's shape, and the manager's whole status view (pure).

The manager computes status after every reconcile; the same dicts go to ``GET /subscriptions``
and (from a Kubernetes source) to each object's status subresource, so a sink shows there without
its credentials. Everything here is a
function of its arguments, the clock included (``now``), so the shapes are unit-tested without
a manager: nothing reads NATS, a file or the time on its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from eventing.errors import InvalidSubscription
from eventing.redaction import mask_url
from eventing.subscriptions.model import API_VERSION, KIND, Subscription
from eventing.units import rfc3339

VALID = "Subscription spec valid"
ACTIVE = "Subscription active"
BACKLOG = "Backlog within limit"
SINK = "Sink allowed"
DELIVERING = "Sink delivering"


@dataclass(frozen=True, slots=True)
class LastError:
    """A subscription's last failed attempt: when, the sink's status (None: no answer), why."""

    time: float  #: Unix seconds
    status: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the delivery ledger says of a subscription's deliveries (:mod:`manager.health`
    counts them); ``failing`` is why its sink counts as failing (None: it does not)."""

    delivered: int = 0
    dead_lettered: int = 0
    retrying: int = 0  #: events whose last attempt failed and that will be tried again
    last_error: LastError | None = None
    failing_since: float | None = None  #: the first failure of the run that made it failing
    failing: str | None = None

    def shown(self, pending: int) -> dict[str, Any]:
        """``status.delivery``: Kyma's status has none, so the names follow its camelCase."""
        error = self.last_error
        return {
            "delivered": self.delivered,
            "deadLettered": self.dead_lettered,
            "pending": pending,
            "retrying": self.retrying,
            "lastError": None
            if error is None
            else {"time": rfc3339(error.time), "status": error.status, "reason": error.reason},
            "failingSince": None if self.failing_since is None else rfc3339(self.failing_since),
        }


@dataclass(frozen=True, slots=True)
class View:
    """What the manager shows: every subscription object with its status, readiness, and the
    manifest files that could not be read (``{file, problem}``; a file is no subscription).

    Replaced as a whole after each change, never mutated, so readers need no lock.
    """

    items: tuple[dict[str, Any], ...] = ()
    ready: bool = False
    by_key: Mapping[str, dict[str, Any]] = field(default_factory=dict)  #: ``namespace/name``
    unreadable: tuple[dict[str, str], ...] = ()


class UnreadableFile(Protocol):
    """A manifest file a source could not read (its shape, as the sources report it)."""

    @property
    def file(self) -> str: ...

    @property
    def problem(self) -> str: ...


def view(
    entries: Iterable[Subscription | InvalidSubscription],
    unreadable: Iterable[UnreadableFile] = (),
    *,
    errors: Mapping[str, str] | None = None,
    problem: str | None = None,
    shedding: Mapping[str, str] | None = None,
    refused: Mapping[str, str] | None = None,
    pending: Mapping[str, int] | None = None,
    delivery: Mapping[str, Delivery] | None = None,
    previous: View | None = None,
    now: datetime | None = None,
) -> View:
    """The status view of a source's entries after a reconcile.

    Parameters:
        entries: every subscription of the source, valid or not.
        unreadable: the files the source could not read.
        errors: why each consumer not set up is not, by consumer name.
        problem: why no consumer could be reconciled at all (e.g. NATS down); makes every
            subscription not ready, and the view not ready.
        shedding: why each consumer that lately shed events to the dead-letter stream did.
        refused: why the egress policy refuses each subscription's sink, by ``namespace/name``;
            such a subscription is not ready.
        pending: each consumer's backlog, by consumer name (a subscription's is its consumers'
            sum).
        delivery: what the ledger says of each subscription's deliveries, by ``namespace/name``.
        previous: the view this one replaces; a condition that did not change keeps its
            ``lastTransitionTime``.
        now: the time of a condition that changed.

    Returns:
        One item per entry, in the source's order.
    """
    errors = errors or {}
    shedding = shedding or {}
    refused = refused or {}
    pending = pending or {}
    delivery = delivery or {}
    shown = previous.by_key if previous is not None else {}
    items: list[dict[str, Any]] = []
    for entry in entries:
        if isinstance(entry, Subscription):
            failure = problem or next(
                (errors[b.consumer_name] for b in entry.bindings if b.consumer_name in errors),
                None,
            )
            shed = "; ".join(
                f"{b.original_type}: {shedding[b.consumer_name]}"
                for b in entry.bindings
                if b.consumer_name in shedding
            )
            status = status_of(
                entry,
                failure,
                shedding=shed or None,
                refused=refused.get(entry.key),
                delivery=delivery.get(entry.key, Delivery()),
                pending=sum(pending.get(b.consumer_name, 0) for b in entry.bindings),
                now=now,
            )
            item = _item(entry.namespace, entry.name, _shown_spec(entry.spec_as_written()), status)
        else:
            namespace, _, name = entry.key.partition("/")
            item = _item(namespace, name, None, status_invalid(entry, now=now))
        key = f"{item['metadata']['namespace']}/{item['metadata']['name']}"
        before = shown.get(key)
        if before is not None:
            item["status"] = keep_transition_times(before["status"], item["status"])
        items.append(item)
    return View(
        items=tuple(items),
        ready=problem is None,
        by_key={f"{i['metadata']['namespace']}/{i['metadata']['name']}": i for i in items},
        unreadable=tuple({"file": bad.file, "problem": bad.problem} for bad in unreadable),
    )


def shed_reason(shed: int, last_shed: float, *, dead_letter_stream: str, max_backlog: int) -> str:
    """Why a consumer's oldest waiting events went to the dead-letter stream (``last_shed`` in
    seconds since the epoch): the text of its Backlog condition."""
    return (
        f"{shed} oldest waiting events moved to the dead-letter stream {dead_letter_stream}"
        f" (last at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(last_shed))}):"
        f" more than MAX_BACKLOG={max_backlog} events were waiting"
    )


def _shown_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec as written, but for the sink's credentials (it goes to whoever reads status)."""
    sink = spec.get("sink")
    return {**spec, "sink": mask_url(sink)} if isinstance(sink, str) else spec


def _item(
    namespace: str, name: str, spec: dict[str, Any] | None, status: dict[str, Any]
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"namespace": namespace, "name": name},
    }
    if spec is not None:
        item["spec"] = spec
    item["status"] = status
    return item


def condition(
    kind: str, ok: bool, reason: str, message: str = "", *, now: datetime | None = None
) -> dict[str, str]:
    """One status condition in Kyma's shape."""
    return {
        "type": kind,
        "status": "True" if ok else "False",
        "lastTransitionTime": (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "reason": reason,
        "message": message,
    }


def keep_transition_times(old: Mapping[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``new`` with each condition's ``lastTransitionTime`` taken from ``old`` when the
    condition's type, status, reason and message did not change (Kubernetes' convention: the
    time says when the condition last changed, not when it was last computed)."""
    before = {c.get("type"): c for c in old.get("conditions") or []}
    conditions = []
    for condition in new.get("conditions") or []:
        previous = before.get(condition["type"])
        if previous is not None and all(
            previous.get(f) == condition[f] for f in ("status", "reason", "message")
        ):
            condition = {**condition, "lastTransitionTime": previous["lastTransitionTime"]}
        conditions.append(condition)
    return {**new, "conditions": conditions}


def status_invalid(error: InvalidSubscription, *, now: datetime | None = None) -> dict[str, Any]:
    """Kyma's status for an invalid spec: not ready, no types, one False condition."""
    return {
        "ready": False,
        "types": [],
        "conditions": [
            condition(VALID, False, "Subscription spec has validation errors", str(error), now=now)
        ],
    }


def status_of(
    subscription: Subscription,
    error: str | None = None,
    *,
    shedding: str | None = None,
    refused: str | None = None,
    delivery: Delivery = Delivery(),
    pending: int = 0,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Kyma's status for a valid subscription; ``error`` says why its consumers are not active.

    ``shedding`` says why the oldest waiting events went to the dead-letter stream lately (a
    backlog over ``MAX_BACKLOG``); the subscription stays ready, but its sink is not keeping up.
    ``refused`` says why the egress policy refuses its sink: it is not ready, and gets nothing.
    ``delivery`` and ``pending`` (its backlog) become ``status.delivery``; a sink that keeps
    failing (``delivery.failing``) turns the Sink delivering condition False. ``ready`` keeps
    Kyma's NATS meaning (the subscription is set up and pulled), as with a shedding backlog:
    the sink's health is this condition's, and an operator's alert's.
    """
    active = (
        condition(ACTIVE, True, "NATS Subscription active", now=now)
        if error is None
        else condition(ACTIVE, False, "NATS Subscription not active", error, now=now)
    )
    backlog = (
        condition(BACKLOG, True, "Backlog within limit", now=now)
        if shedding is None
        else condition(BACKLOG, False, "Oldest events dead-lettered", shedding, now=now)
    )
    sink = (
        condition(SINK, True, "Sink allowed by the egress policy", now=now)
        if refused is None
        else condition(SINK, False, "Sink refused by the egress policy", refused, now=now)
    )
    delivering = (
        condition(DELIVERING, True, "Sink accepts events", now=now)
        if delivery.failing is None
        else condition(DELIVERING, False, "Sink failing", delivery.failing, now=now)
    )
    return {
        "ready": error is None and refused is None,
        "types": [
            {"originalType": b.original_type, "cleanType": b.clean_type}
            for b in subscription.bindings
        ],
        "backend": {
            "types": [
                {"originalType": b.original_type, "consumerName": b.consumer_name}
                for b in subscription.bindings
            ]
        },
        "conditions": [
            condition(VALID, True, "Subscription spec has no validation errors", now=now),
            active,
            backlog,
            sink,
            delivering,
        ],
        "delivery": delivery.shown(pending),
    }

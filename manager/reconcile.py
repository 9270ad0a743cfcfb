"""What the JetStream consumers should be, and the actions that get them there (pure).

One durable pull consumer per (subscription, type), named as Kyma names it. Its
``max_ack_pending`` is the subscription's ``maxInFlightMessages``: unacknowledged messages include
jobs waiting in the broker, so that is the bound on concurrent requests to the sink. Consumers
marked as ours that no subscription wants any more are deleted (orphans); consumers of other
owners in the same stream are left alone. So are the consumers of a subscription whose spec
became invalid: deleting a consumer drops its backlog from the interest stream, and a typo must
not cost a subscriber its events (Kyma keeps them too). Only deleting the subscription does.
"""

from __future__ import annotations

from dataclasses import dataclass

from eventing.subscription import Subscription, TypeBinding

MANAGED_BY = "eventing.manager"  #: value of the consumer metadata key "managed-by"
_ACK_WAIT_MARGIN = 5.0


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """A consumer as it should be."""

    name: str
    subscription: str  #: namespace/name
    event_type: str
    subjects: tuple[str, ...]
    max_ack_pending: int
    ack_wait: float  #: seconds


@dataclass(frozen=True, slots=True)
class ActualConsumer:
    """A consumer as JetStream reports it."""

    name: str
    subjects: tuple[str, ...]
    max_ack_pending: int
    ack_wait: float
    managed: bool  #: created by us (metadata managed-by)
    subscription: str = ""  #: namespace/name from the consumer's metadata


@dataclass(frozen=True, slots=True)
class Create:
    spec: ConsumerSpec


@dataclass(frozen=True, slots=True)
class Update:
    spec: ConsumerSpec


@dataclass(frozen=True, slots=True)
class Delete:
    name: str


Action = Create | Update | Delete


def ack_wait_for(subscription: Subscription, least: float) -> float:
    """An ack wait that outlasts one request to the sink (workers send keepalives between them)."""
    return max(least, 2 * subscription.delivery.timeout + _ACK_WAIT_MARGIN)


def desired(
    subscriptions: tuple[Subscription, ...], least_ack_wait: float
) -> dict[str, ConsumerSpec]:
    """Every consumer the subscriptions need, by name."""
    specs: dict[str, ConsumerSpec] = {}
    for subscription in subscriptions:
        for binding in subscription.bindings:
            specs[binding.consumer_name] = _spec(subscription, binding, least_ack_wait)
    return specs


def plan(
    wanted: dict[str, ConsumerSpec],
    actual: dict[str, ActualConsumer],
    keep: frozenset[str] | None = frozenset(),
) -> list[Action]:
    """The actions that turn ``actual`` into ``wanted``: deletions first, then the rest by name.

    ``keep`` names (``namespace/name``) the invalid subscriptions whose consumers stay; None
    keeps every consumer (some subscriptions could not even be named).
    """
    actions: list[Action] = [
        Delete(name)
        for name, current in sorted(actual.items())
        if name not in wanted
        and current.managed
        and keep is not None
        and current.subscription not in keep
    ]
    for name in sorted(wanted):
        spec, current = wanted[name], actual.get(name)
        if current is None:
            actions.append(Create(spec))
        elif (
            set(current.subjects) != set(spec.subjects)
            or current.max_ack_pending != spec.max_ack_pending
            or abs(current.ack_wait - spec.ack_wait) > 0.001
            or not current.managed
        ):
            actions.append(Update(spec))
    return actions


def _spec(subscription: Subscription, binding: TypeBinding, least_ack_wait: float) -> ConsumerSpec:
    return ConsumerSpec(
        name=binding.consumer_name,
        subscription=subscription.key,
        event_type=binding.original_type,
        subjects=binding.subjects,
        max_ack_pending=subscription.max_in_flight,
        ack_wait=ack_wait_for(subscription, least_ack_wait),
    )

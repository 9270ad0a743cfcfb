"""What the JetStream consumers should be, and the actions that get them there (pure).

One durable pull consumer per (subscription, type), named as Kyma names it. Its
``max_ack_pending`` is the subscription's ``maxInFlightMessages``: unacknowledged messages include
jobs waiting in the broker, so that is the bound on concurrent requests to the sink. Consumers
marked as ours that no subscription wants any more are deleted (orphans); consumers of other
owners in the same stream are left alone. So are the consumers of a subscription whose spec
became invalid: deleting a consumer drops its backlog from the interest stream, and a typo must
not cost a subscriber its events (Kyma keeps them too). Only deleting the subscription does.
Nor does a manifest file that cannot be read: each consumer records the file its subscription
came from, and the consumers of an unreadable file stay while every other file's changes apply.

An action that failed (the server's consumer limit reached, say) is not repeated on every
reconcile: :class:`Retries` spaces its attempts out, doubling up to a minute.
"""

from __future__ import annotations

from dataclasses import dataclass

from eventing.subscriptions.model import Subscription, TypeBinding

MANAGED_BY = "eventing.manager"  #: value of the consumer metadata key "managed-by"
_ACK_WAIT_MARGIN = 5.0
FIRST_RETRY = 1.0  #: seconds before a failed action is tried again; doubled on each failure
LAST_RETRY = 60.0  #: the longest pause between two attempts


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """A consumer as it should be."""

    name: str
    subscription: str  #: namespace/name
    event_type: str
    subjects: tuple[str, ...]
    max_ack_pending: int
    ack_wait: float  #: seconds
    origin: str = ""  #: the subscription's manifest file (empty on Kubernetes)


@dataclass(frozen=True, slots=True)
class ActualConsumer:
    """A consumer as JetStream reports it."""

    name: str
    subjects: tuple[str, ...]
    max_ack_pending: int
    ack_wait: float
    managed: bool  #: created by us (metadata managed-by)
    subscription: str = ""  #: namespace/name from the consumer's metadata
    origin: str | None = None  #: manifest file from its metadata; None when not recorded


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
    keep: frozenset[str] = frozenset(),
    unreadable: frozenset[str] = frozenset(),
) -> list[Action]:
    """The actions that turn ``actual`` into ``wanted``: deletions first, then the rest by name.

    ``keep`` names (``namespace/name``) the invalid subscriptions whose consumers stay;
    ``unreadable`` the manifest files whose consumers stay. A consumer that recorded no file
    (made by an older version) stays while any file is unreadable: it may be from that file.
    """
    actions: list[Action] = [
        Delete(name)
        for name, current in sorted(actual.items())
        if name not in wanted
        and current.managed
        and current.subscription not in keep
        and not (unreadable and (current.origin is None or current.origin in unreadable))
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
            or current.origin != spec.origin
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
        origin=subscription.origin,
    )


def target_of(action: Action) -> str:
    """The name of the consumer an action is about."""
    return action.name if isinstance(action, Delete) else action.spec.name


@dataclass(frozen=True, slots=True)
class Failure:
    """The last failed attempt of an action, and when it may be tried again."""

    action: Action
    error: str
    pause: float  #: seconds between this attempt and the next
    retry_at: float  #: monotonic seconds


class Retries:
    """Spaces out the attempts of failed actions (pure: the caller passes the clock).

    Past the server's consumer limit every create fails; retrying all of them on every
    reconcile (each second) kept the manager busy at 0.6 core for nothing. A failed action is
    held back for :data:`FIRST_RETRY` seconds, doubled after each further failure up to
    :data:`LAST_RETRY`; a different action for the same consumer (its spec changed) goes at once,
    and so does everything held after a deletion succeeded (it may have freed a slot).
    """

    def __init__(self) -> None:
        self.failures: dict[str, Failure] = {}  #: by consumer name

    def due(self, actions: list[Action], now: float) -> tuple[list[Action], dict[str, str]]:
        """The actions to attempt now, and the last error of each one held back, by name."""
        attempt: list[Action] = []
        held: dict[str, str] = {}
        for action in actions:
            failure = self.failures.get(target_of(action))
            if failure is not None and failure.action == action and failure.retry_at > now:
                held[target_of(action)] = failure.error
            else:
                attempt.append(action)
        return attempt, held

    def record(self, tried: list[Action], errors: dict[str, str], now: float) -> list[Failure]:
        """Note the outcome of ``tried``; the failures that are new or changed their error."""
        changed = []
        for action in tried:
            name = target_of(action)
            previous = self.failures.pop(name, None)
            if name not in errors:
                continue
            pause = FIRST_RETRY
            if previous is not None and previous.action == action:
                pause = min(previous.pause * 2, LAST_RETRY)
            failure = Failure(action, errors[name], pause, now + pause)
            self.failures[name] = failure
            if previous is None or previous.error != failure.error:
                changed.append(failure)
        if any(isinstance(a, Delete) and target_of(a) not in errors for a in tried):
            for name, failure in self.failures.items():
                self.failures[name] = Failure(failure.action, failure.error, failure.pause, now)
        return changed

    def forget_except(self, names: set[str]) -> None:
        """Drop the failures of consumers no action is about any more."""
        for name in set(self.failures) - names:
            del self.failures[name]

    @property
    def next_attempt(self) -> float | None:
        """When the earliest held action is due (monotonic seconds); None if none is held."""
        return min((f.retry_at for f in self.failures.values()), default=None)

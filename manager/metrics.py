"""The manager's Prometheus metrics: Kyma's names (kyma-eventing.md §5.8) plus ours.

One registry per manager (not prometheus_client's global one), so in-process tests can run
several managers side by side and read each one's figures.

Kyma's series keep Kyma's labels (``consumer_name`` among them); ours are labelled by the
subscription's namespace and name and, where one subscription has a consumer per type, the
event type (:data:`BY_TYPE`): a consumer name is a hash nobody can read on a dashboard.
Every label value comes from a Subscription an operator wrote.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from manager.consumers import Target

BY_SUBSCRIPTION = ["subscription_namespace", "subscription_name"]
BY_TYPE = [*BY_SUBSCRIPTION, "event_type"]  #: one consumer's series


class ManagerMetrics:
    """Kyma's manager metrics (kyma-eventing.md §5.8) plus the jobs we enqueue."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.subscribed = Counter(
            "eventing_ec_event_type_subscribed",
            "Consumers created for an event type of a subscription.",
            ["subscription_name", "subscription_namespace", "event_type", "consumer_name"],
            registry=self.registry,
        )
        self.status = Gauge(
            "eventing_ec_subscription_status",
            "1 while a subscription's consumer is active, 0 otherwise.",
            [
                "subscription_name",
                "subscription_namespace",
                "consumer_name",
                "eventing_backend",
                "stream_name",
            ],
            registry=self.registry,
        )
        self.health = Gauge(
            "eventing_ec_health", "1 while the manager runs.", registry=self.registry
        )
        self.enqueued = Counter(
            "eventing_manager_jobs_enqueued",
            "Delivery jobs handed to the workers, by subscription and type.",
            BY_TYPE,
            registry=self.registry,
        )
        self.pending = Gauge(
            "eventing_manager_consumer_pending",
            "Events stored for a subscription's type and not yet handed to the workers (its"
            " backlog).",
            BY_TYPE,
            registry=self.registry,
        )
        self.shed = Counter(
            "eventing_manager_backlog_dead_lettered",
            "Oldest waiting events moved to the dead-letter stream because a backlog exceeded"
            " MAX_BACKLOG.",
            BY_TYPE,
            registry=self.registry,
        )
        self.filtered = Counter(
            "eventing_delivery_filtered",
            "Events acked without delivery: they shared a consumer's subject, not its"
            " subscription's source or type.",
            BY_TYPE,
            registry=self.registry,
        )
        self.in_retry = Gauge(
            "eventing_manager_in_retry",
            "Events whose last attempt failed and that will be tried again, by subscription"
            " (from the delivery ledger).",
            BY_SUBSCRIPTION,
            registry=self.registry,
        )
        self.archive_expired = Counter(
            "eventing_archive_expired",
            "Events a replay asked for that the archive's retention had removed (an upper"
            " bound: JetStream keeps no subject of what it removed).",
            ["subscription_namespace", "subscription_name"],
            registry=self.registry,
        )
        self.leader = Gauge(
            "eventing_manager_leader",
            "1 while this manager works: it holds the Lease, or LEADER_ELECTION is off.",
            registry=self.registry,
        )
        self.health.set(1)


def labels_of(target: Target | None) -> tuple[str, str, str]:
    """The :data:`BY_TYPE` labels of a consumer's series. A consumer that is no longer pulled
    (a batch that ended after its subscription went) has none to give: ``("", "", "")``."""
    if target is None:
        return "", "", ""
    subscription = target.subscription
    return subscription.namespace, subscription.name, target.spec.event_type

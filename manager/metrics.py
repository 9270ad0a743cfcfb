"""The manager's Prometheus metrics: Kyma's names (kyma-eventing.md §5.8) plus ours.

One registry per manager (not prometheus_client's global one), so in-process tests can run
several managers side by side and read each one's figures.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


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
            "Delivery jobs handed to the workers, by consumer.",
            ["consumer_name"],
            registry=self.registry,
        )
        self.pending = Gauge(
            "eventing_manager_consumer_pending",
            "Events stored for a consumer and not yet handed to the workers (its backlog).",
            ["consumer_name"],
            registry=self.registry,
        )
        self.shed = Counter(
            "eventing_manager_backlog_dead_lettered",
            "Oldest waiting events moved to the dead-letter stream because a backlog exceeded"
            " MAX_BACKLOG.",
            ["consumer_name"],
            registry=self.registry,
        )
        self.filtered = Counter(
            "eventing_delivery_filtered",
            "Events acked without delivery: they shared a consumer's subject, not its"
            " subscription's source or type.",
            ["consumer_name"],
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

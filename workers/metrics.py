"""Delivery metrics with Kyma's names (kyma-eventing.md §5.8), across all worker processes.

Worker processes write to the metrics folder ``eventing-worker`` hands over before any of them
starts (:func:`eventing.settings.hand_over_metrics_dir`, one folder per ``eventing-worker``);
one forked process serves their sum (prometheus_client's own server over its multiprocess
collector, which reads the folder at every scrape) on ``WORKER_METRICS_PORT``, or, when another
``eventing-worker`` on the host serves there already (``honcho start -c worker=3``), on the next
free port of the :data:`PORT_RANGE` above it, and logs the one it took. So every
``eventing-worker`` serves complete metrics of its own, and a scrape of every port of the range
counts every delivery on the host.

Kyma's two series keep Kyma's names and labels, but for what Kyma gets wrong: an attempt that
got no answer has ``response_code=""`` (Kyma counts it as 500, as if the sink had answered
500), and the duration buckets reach past the longest timeout (Kyma's stop at 1.024 s, the
default timeout is 10 s). Ours are labelled by the subscription's namespace and name, not by
the consumer's hash: attempts by kind (:data:`eventing.delivery.ledger.KINDS`) and status
class, dead letters, and two histograms observed at the sink's 2xx whose buckets reach a day
(retries take hours): the latency from JetStream's store time (``published``) and the event's
age (its ``time`` attribute; an event without one is not observed).

Every label is bounded: the subscription's name, namespace, event type, sink (without its
credentials: :func:`eventing.redaction.mask_url`) and consumer come from the Subscriptions an
operator wrote, a refused job's reason is one of :data:`eventing.errors.UntrustedJob.REASONS`,
an attempt's kind one of :data:`~eventing.delivery.ledger.KINDS`, and the one label a sink
chooses, its response code, is one of HTTP's registered statuses or ``other`` (a sink answering
a new three-digit status each time would otherwise add series to every subscription for good).
"""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Callable
from datetime import datetime
from http import HTTPStatus

from dramatiq import Middleware
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

from eventing.delivery.jobs import DeliveryJob
from eventing.redaction import mask_url
from eventing.settings import metrics_dir, settings_or_exit
from workers.delivery import Attempt

#: Kyma's 2 ms doubling, on to 262 s: past the 10 s default timeout and most longer ones
_BUCKETS = tuple(0.002 * 2**n for n in range(18))
#: publish → delivery and event age: from milliseconds to a day of retries
_LATENCY_BUCKETS = (
    *(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    *(60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 43200.0, 86400.0),
)
_BY_SUBSCRIPTION = ["subscription_namespace", "subscription_name"]
_CODES = frozenset(str(status.value) for status in HTTPStatus)
_AttemptSeries = tuple[Counter, Histogram, Counter]
PORT_RANGE = 10  #: ports tried from WORKER_METRICS_PORT up: one per eventing-worker on a host

logger = logging.getLogger(__name__)


class DeliveryMetrics:
    """Counters of the workers; :meth:`observer` makes the callback workers.attempts.run wants."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = [
            "subscription_name",
            "subscription_namespace",
            "event_type",
            "sink",
            "response_code",
            "consumer_name",
        ]
        self.deliveries = Counter(
            "eventing_ec_nats_delivery_per_subscription",
            "HTTP attempts to deliver an event to a sink, by answer (empty: no answer).",
            labels,
            registry=self.registry,
        )
        self.duration = Histogram(
            "eventing_ec_nats_subscriber_dispatch_duration_seconds",
            "Duration of one HTTP attempt to a sink.",
            labels,
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.attempts = Counter(
            "eventing_delivery_attempts",
            "HTTP attempts to deliver an event, by kind (answered, timeout, connection-refused,"
            " ...) and, when answered, status class (2xx, 4xx, 5xx, other).",
            [*_BY_SUBSCRIPTION, "kind", "status_class"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "eventing_delivery_dead_lettered",
            "Events the workers moved to the dead-letter stream: a permanent failure, or out of"
            " retries.",
            ["subscription_name", "subscription_namespace"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "eventing_delivery_latency_seconds",
            "From JetStream storing an event to its sink's 2xx, retries included.",
            _BY_SUBSCRIPTION,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.age = Histogram(
            "eventing_delivery_event_age_seconds",
            "From an event's time attribute to its sink's 2xx (events without one: not observed).",
            _BY_SUBSCRIPTION,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.refused = Counter(
            "eventing_worker_refused_jobs",
            "Delivery jobs dropped unread: unsigned, altered, malformed, or acking outside the"
            " stream's consumer (reason).",
            ["reason"],
            registry=self.registry,
        )
        #: the series an attempt counts in, by its labels: looking them up per attempt (a lock
        #: and a tuple each) was a third of the metrics' cost; the labels are bounded (above)
        self._attempt_series: dict[tuple[str, ...], _AttemptSeries] = {}
        self.ledger_write_failures = Counter(
            "eventing_ledger_write_failures",
            "Delivery ledger records that could not be stored (the deliveries went on).",
            registry=self.registry,
        )

    def observer(self, job: DeliveryJob) -> Callable[[Attempt], None]:
        namespace, _, name = job.subscription.partition("/")
        sink = mask_url(job.sink)

        def observe(attempt: Attempt) -> None:
            code = "" if attempt.status is None else str(attempt.status)
            code = code if code in _CODES or not code else "other"
            labels = (name, namespace, job.event_type, sink, code, job.consumer, attempt.kind)
            series = self._attempt_series.get(labels)
            if series is None:
                series = self._attempt_series[labels] = self._series_of_attempt(*labels)
            deliveries, duration, attempts = series
            deliveries.inc()
            duration.observe(attempt.seconds)
            attempts.inc()
            if code.startswith("2"):
                delivered = attempt.started + attempt.seconds
                if job.published:
                    self.latency.labels(namespace, name).observe(delivered - job.published)
                created = _event_time(job.event)
                if created is not None:
                    self.age.labels(namespace, name).observe(delivered - created)

        return observe

    def _series_of_attempt(
        self,
        name: str,
        namespace: str,
        event_type: str,
        sink: str,
        code: str,
        consumer: str,
        kind: str,
    ) -> _AttemptSeries:
        labels = (name, namespace, event_type, sink, code, consumer)
        return (
            self.deliveries.labels(*labels),
            self.duration.labels(*labels),
            self.attempts.labels(namespace, name, kind, _status_class(code)),
        )

    def dead_lettered(self, job: DeliveryJob) -> None:
        """Count ``job``'s event moved to the dead-letter stream."""
        namespace, _, name = job.subscription.partition("/")
        self.dead_letters.labels(name, namespace).inc()


def _status_class(code: str) -> str:
    """``2xx``, ``4xx``...: the status class of a response code (``""``: no answer)."""
    return f"{code[0]}xx" if code[:1] in ("1", "2", "3", "4", "5") else code


def _event_time(stored: str) -> float | None:
    """The ``time`` attribute of a stored event, in Unix seconds (None: absent or unreadable;
    the proxy checked it, but anyone with NATS access may have written the stream)."""
    try:
        value = json.loads(stored).get("time")
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except (ValueError, AttributeError):
        return None
    return moment.timestamp() if moment is not None and moment.tzinfo is not None else None


class MetricsServer(Middleware):
    """Asks dramatiq's main process to fork :func:`serve_metrics` once."""

    @property
    def forks(self) -> list[Callable[[], int]]:
        return [serve_metrics]


def serve_metrics() -> int:
    """Serve the summed metrics of every worker process until killed (a dramatiq fork).

    Returns 1 when every port of the range is taken (logged as an error: the metrics of this
    eventing-worker are not served).
    """
    # dramatiq imports this function by name in a fresh fork, so it reads its settings itself.
    workers = settings_or_exit("eventing-worker", warn=False).workers  # validated and warned
    first, host = workers.metrics_port, workers.metrics_host
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics_dir())  # type: ignore[no-untyped-call]
    for port in range(first, min(first + PORT_RANGE, 65536)):
        try:
            _, serving = start_http_server(port, host, registry=registry)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            continue
        taken = "" if port == first else f" ({first} to {port - 1} are taken)"
        logger.info("serving the delivery metrics on http://%s:%d/metrics%s", host, port, taken)
        serving.join()
        return 0
    logger.error(
        "cannot serve the delivery metrics: ports %d to %d on %s are all taken; this"
        " eventing-worker's deliveries are not counted anywhere (raise WORKER_METRICS_PORT or free"
        " a port)",
        first,
        first + PORT_RANGE - 1,
        host,
    )
    return 1

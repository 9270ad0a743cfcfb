"""``setup_broker``: what dramatiq's CLI calls in every process to get our broker.

Settings → broker (Redis, or RabbitMQ with publisher confirms) → our middleware (the NATS
connection for acks, quiet idle threads, metrics) → ``dramatiq.set_broker`` → the delivery actor.
The process's egress policy is installed first (:mod:`workers.egress`).
"""

from __future__ import annotations

import logging

import dramatiq

from eventing.delivery import signatures
from eventing.delivery.egress import policy_for
from eventing.delivery.jobs import make_broker
from eventing.nats import streams
from eventing.settings import local_state_dir, settings_or_exit
from workers import actors, egress
from workers.connection import NatsAcknowledger
from workers.idle import QuietThreads
from workers.metrics import DeliveryMetrics, MetricsServer
from workers.secrets import Secrets
from workers.shutdown import GracefulStop


def setup_broker() -> dramatiq.Broker:
    """Build, register and return the broker with the delivery actor declared."""
    settings = settings_or_exit("eventing-worker", warn=False)  # eventing-worker warned
    logging.getLogger().setLevel(settings.log_level)
    egress.install(policy_for(settings))
    broker = make_broker(settings.delivery)
    stop = GracefulStop()
    metrics = DeliveryMetrics()
    acks = NatsAcknowledger(settings.nats, settings.stream, stop, metrics.ledger_write_failures.inc)
    broker.add_middleware(acks)
    broker.add_middleware(stop)
    broker.add_middleware(QuietThreads())
    if settings.workers.metrics_port:
        broker.add_middleware(MetricsServer())
    dramatiq.set_broker(broker)
    key = signatures.load_key(settings.delivery.job_signing_key_file, local_state_dir())
    actors.declare(
        broker,
        settings.delivery,
        acks,
        metrics,
        stop.stopping,
        secrets=Secrets(settings.source),
        key=key,
        streams=streams.job_streams(settings.stream),
    )
    return broker

"""The HTTP ingress: a Flask app that stores published events in JetStream.

``create_app`` is the only public name; ``eventing-proxy`` (:mod:`proxy.server`) serves it with
granian, several worker processes each with their own NATS connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask

from eventing.redaction import without_credentials
from eventing.settings import Settings
from eventing.sources.source import source_for

if TYPE_CHECKING:  # imported by create_app: the launcher, which imports this package, must
    # not import nats-py before it decided on its transports (proxy.server)
    from proxy.publisher import Publisher

__all__ = ["create_app"]


def create_app(settings: Settings, *, publisher: Publisher | None = None) -> Flask:
    """Build the proxy app.

    Parameters:
        settings: the entry point's (:func:`eventing.settings.settings_or_exit`).
        publisher: anything with ``publish(messages)`` and ``ready()``; defaults to a
            :class:`proxy.publisher.JetStreamPublisher`, which connects lazily.

    Raises:
        ConfigError: a file of publishers' credentials is missing or invalid.
    """
    # Imported here: the launcher (proxy.server, which imports this package) needs none of them,
    # and the metrics read the snapshots folder it hands over (proxy.metrics).
    from proxy import admission, auth, metrics, problems, views
    from proxy.publisher import JetStreamPublisher
    from proxy.publishing import Publishing

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.proxy.max_request_size
    app.extensions["eventing.settings"] = settings
    app.extensions["eventing.auth"] = auth.Authenticator(settings.proxy)
    app.extensions["eventing.publisher"] = publisher or JetStreamPublisher(settings)
    app.extensions["eventing.metrics"] = counted = metrics.ProxyMetrics(
        destination=without_credentials(",".join(settings.nats.urls)),
        max_event_types=settings.proxy.metrics_max_event_types,
    )
    app.extensions["eventing.subscriptions"] = source_for(settings, watch=False)
    app.extensions["eventing.admission"] = turns = admission.Admission(
        slots=settings.proxy.threads,
        waiting=admission.waiting_room(settings.proxy.threads),
        patience=admission.PATIENCE,
        retry_after=settings.proxy.retry_after,
        max_events=settings.proxy.max_in_flight,
    )
    app.extensions["eventing.publishing"] = Publishing(
        type_prefix=settings.events.type_prefix,
        max_size=settings.proxy.max_request_size,
        authenticator=app.extensions["eventing.auth"],
        metrics=counted,
        admission=turns,
        publisher=app.extensions["eventing.publisher"],
        at_once=settings.proxy.publish_on_loop,
    )
    app.register_blueprint(views.blueprint)
    problems.register(app)
    app.wsgi_app = admission.Gate(app.wsgi_app, turns)  # type: ignore[method-assign]
    metrics.install(app, counted)  # outermost: it counts admission's refusals too
    return app

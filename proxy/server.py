"""``eventing-proxy``: serve the proxy with granian, several worker processes.

Why granian: on this project's 2-core machines a minimal Flask app publishing to JetStream served
about twice as many requests per second under granian's WSGI interface as under gunicorn
gthread; ``python -m bench --suite publish`` measures the proxy itself. Each worker process
builds its own app through the :func:`app` factory and connects to NATS lazily. Granian serves
it through its RSGI interface, so that request bodies are read before any thread is given to
them (:mod:`proxy.bodies`).
"""

from __future__ import annotations

import logging.config
import shutil
import signal
import sys
import tempfile
from typing import TYPE_CHECKING

from eventing.errors import ConfigError
from eventing.settings import hand_over_metrics_dir, settings_or_exit

if TYPE_CHECKING:  # the app is built in each worker process, by app(), never in the launcher
    from proxy.bodies import BodiesFirst


def main() -> int:
    """Validate the environment, then serve until SIGINT/SIGTERM."""
    settings = settings_or_exit("eventing-proxy")
    log_config = _log_config(settings.log_level)
    logging.config.dictConfig(log_config)
    _without_unused_transport(settings.nats.urls)
    from proxy import auth

    try:  # each worker reads the files again; a bad one should stop the launcher, not them
        auth.Authenticator(settings.proxy)
    except ConfigError as exc:
        print(f"eventing-proxy: {exc}", file=sys.stderr)
        return 2
    auth.warn_if_open(settings.proxy)

    from granian.constants import Interfaces, Loops
    from granian.server import Server

    metrics_dir = tempfile.mkdtemp(prefix="eventing-proxy-metrics-")
    hand_over_metrics_dir(metrics_dir, snapshots=True)
    try:
        Server(
            "proxy.server:app",
            factory=True,
            interface=Interfaces.RSGI,
            # every request passes through this loop: under asyncio's own loop the proxy served
            # a quarter fewer requests than under the WSGI interface, under uvloop as many
            loop=Loops.uvloop,
            address=settings.proxy.host,
            port=settings.proxy.port,
            workers=settings.proxy.workers,
            websockets=False,
            backpressure=_CONNECTIONS_PER_WORKER,
            respawn_failed_workers=True,
            # granian loses a SIGTERM that reaches a worker between its handlers and its server
            # starting; the launcher would then wait for that worker for good
            workers_kill_timeout=_WORKERS_KILL_TIMEOUT,
            log_dictconfig=log_config,
            log_access=False,
        ).serve()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def app() -> BodiesFirst:
    """The RSGI application of one granian worker process: the Flask app, bodies read first,
    on as many threads as admission needs (:func:`proxy.admission.thread_count`)."""
    # A forked worker inherits the launcher's handlers, so a SIGTERM (honcho's, or granian's
    # own at shutdown) that came while this factory ran was swallowed, and the worker then
    # served on while the launcher waited for it: `eventing-proxy` hung on SIGTERM about one
    # start in ten. Until granian installs the worker's handlers, a signal ends the worker.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)
    from proxy import admission, bodies, create_app
    from proxy.publisher import JetStreamPublisher

    settings = settings_or_exit("eventing-proxy", warn=False)  # main() validated and warned
    publisher = JetStreamPublisher(settings)
    flask_app = create_app(settings, publisher=publisher)
    return bodies.BodiesFirst(
        flask_app,
        threads=admission.thread_count(settings.proxy.threads),
        limits=bodies.BodyLimits(
            timeout=settings.proxy.body_timeout,
            min_rate=settings.proxy.body_min_rate,
            max_size=settings.proxy.max_request_size,
        ),
        metrics=flask_app.extensions["eventing.metrics"],
        on_loop=publisher.serve_on,  # NATS on granian's loop, no loop thread of its own
        publish=publisher.publish_here,  # and the views' events published there
        at_once=flask_app.extensions["eventing.publishing"].at_once,  # binary /publish, no Flask
    )


#: Seconds the launcher waits for its workers to stop before it kills them: within honcho's 5 s.
_WORKERS_KILL_TIMEOUT = 3

#: Connections one worker serves at once. Granian's default (backlog / workers, 512 here) is
#: a limit on connections, not requests, and idle keep-alive connections hold their place: 1,024
#: clients that merely stayed connected (or opened a socket and sent nothing, which no timeout
#: ends) locked every other client out. Load is bounded per request instead (proxy.admission);
#: an open connection costs about 15 KiB.
_CONNECTIONS_PER_WORKER = 8192


def _without_unused_transport(urls: tuple[str, ...]) -> None:
    """Keep nats-py from importing aiohttp, its websocket transport, unless a ``ws://`` or
    ``wss://`` URL needs it: nothing else in the proxy does, and it costs each process (the
    launcher and every worker forked from it) about 9 MiB. nats-py imports it optionally, and
    an import refused here counts as not installed."""
    if not any(url.startswith(("ws://", "wss://")) for url in urls):
        sys.modules.setdefault("aiohttp", None)  # type: ignore[arg-type]


def _log_config(level: str) -> dict[str, object]:
    """Our log format for every process; granian merges it into its own configuration
    shallowly, so its handler names (console, access) are kept."""
    line = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"
    stdout = {"class": "logging.StreamHandler", "stream": "ext://sys.stdout", "formatter": "plain"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": line}},
        "handlers": {"console": stdout, "access": stdout},
        "root": {"level": level, "handlers": ["console"]},
    }


if __name__ == "__main__":
    sys.exit(main())

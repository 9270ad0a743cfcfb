"""``eventing-worker``: dramatiq's worker CLI with our broker, queue and sizing.

Runs ``dramatiq workers.broker:setup_broker --processes WORKER_PROCESSES --threads
WORKER_THREADS --queues eventing.delivery`` after validating the environment and preparing the
shared folder the worker processes write their metrics to. Scale out by running more of these,
on as many machines as you like: they share the jobs through the broker.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

from eventing.delivery import signatures
from eventing.delivery.egress import loopback_warning, policy_for
from eventing.errors import ConfigError
from eventing.settings import hand_over_metrics_dir, local_state_dir, settings_or_exit


def main() -> int:
    settings = settings_or_exit("eventing-worker")
    try:  # a bad key ends the start here, and the launcher makes the machine's own key once
        signatures.load_key(settings.delivery.job_signing_key_file, local_state_dir())
    except ConfigError as exc:
        print(f"eventing-worker: {exc}", file=sys.stderr)
        return 2
    warning = loopback_warning(policy_for(settings))
    if warning is not None:
        print(f"eventing-worker: warning: {warning}", file=sys.stderr, flush=True)
    metrics_dir = tempfile.mkdtemp(prefix="eventing-worker-metrics-")
    hand_over_metrics_dir(metrics_dir)
    # dramatiq reads this when first imported, and its worker processes inherit the value.
    os.environ["dramatiq_worker_timeout"] = str(  # noqa: SIM112 - dramatiq's own spelling
        max(1, round(settings.workers.queue_poll_max * 1000))
    )
    from dramatiq.cli import main as dramatiq_main
    from dramatiq.cli import make_argument_parser

    from eventing.delivery.jobs import QUEUE

    arguments = make_argument_parser().parse_args(  # type: ignore[no-untyped-call]
        [
            "workers.broker:setup_broker",
            "--processes",
            str(settings.workers.processes),
            "--threads",
            str(settings.workers.threads),
            "--queues",
            QUEUE,
            # Jobs hand their events back on shutdown; honcho kills everything after 5 s.
            "--worker-shutdown-timeout",
            "4000",
        ]
    )
    try:
        return int(dramatiq_main(arguments) or 0)  # type: ignore[no-untyped-call]
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

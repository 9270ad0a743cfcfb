"""``eventing-manager``: settings → logging → the manager's loop."""

from __future__ import annotations

import asyncio
import logging
import sys

from eventing.errors import ConfigError
from eventing.settings import settings_or_exit
from manager import runner


def main() -> int:
    settings = settings_or_exit("eventing-manager")
    logging.basicConfig(
        level=settings.log_level,
        stream=sys.stdout,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        runner.job_signing_key(settings)  # a bad key file ends the start, not the first job
    except ConfigError as exc:
        print(f"eventing-manager: {exc}", file=sys.stderr)
        return 2
    try:
        kept_leadership = asyncio.run(runner.run(settings))
    except OSError as exc:  # e.g. the status port is taken
        logging.getLogger("manager").error("cannot start: %s", exc)
        return 1
    except ConfigError as exc:  # as settings_or_exit reports a bad variable
        print(f"eventing-manager: {exc}", file=sys.stderr)
        return 2
    return 0 if kept_leadership else 1


if __name__ == "__main__":
    sys.exit(main())

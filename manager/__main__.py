"""``eventing-manager``: settings → logging → the manager's loop."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from eventing.config import Settings
from eventing.errors import ConfigError
from manager import runner


def main() -> int:
    try:
        settings = Settings.from_environ(os.environ)
    except ConfigError as exc:
        print(f"eventing-manager: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        stream=sys.stdout,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        asyncio.run(runner.run(settings))
    except OSError as exc:  # e.g. the status port is taken
        logging.getLogger("manager").error("cannot start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

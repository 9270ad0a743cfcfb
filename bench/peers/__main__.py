"""The peer suite inside its namespaces: started by ``python -m bench --suite peers``
(:func:`bench.peers.run`), never by hand."""

from __future__ import annotations

import signal
import sys

from bench import interrupt
from bench.peers import parse_args, suite


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM ends the run like Ctrl-C, so every process is stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    return interrupt.handled(lambda: suite.run(args))


if __name__ == "__main__":
    sys.exit(main())

"""How a bench script ends on Ctrl-C: one line and exit status 130, not a traceback.

The harness's context managers have stopped the servers and removed the files by the time the
``KeyboardInterrupt`` reaches here, which is what the line tells the user.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


def handled(run: Callable[[], int]) -> int:
    """``run()``'s exit status, or 130 after Ctrl-C."""
    try:
        return run()
    except KeyboardInterrupt:
        print("interrupted; servers stopped and files removed", file=sys.stderr)
        return 130

"""CPU time and resident memory of process trees, read from /proc while a benchmark runs.

Shared by every bench suite. A tree, not a process: the proxy is a
granian main process with worker processes, the workers a dramatiq parent with children, so
each service's memory is the sum over its tree at one moment. Worker processes that die are
respawned (granian, dramatiq) and would hide a crash from a glance at the end, so every pid seen
in a tree is remembered too.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _parents() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    return parents


def tree(root: int, parents: dict[int, int] | None = None) -> list[int]:
    """``root`` and its descendants, breadth first."""
    parents = _parents() if parents is None else parents
    found = [root] if root in parents else []
    for pid in found:  # grows while we walk it
        found += [child for child, parent in parents.items() if parent == pid]
    return found


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time one process has used so far (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: all but idle and iowait)."""
    ticks = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / _TICKS


def rss(pid: int) -> int:
    """Resident bytes of one process (0 once it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


@dataclass
class Peaks:
    """What the sampler saw of one tree."""

    total: int = 0  #: largest sum of the tree's RSS at one sample
    single: int = 0  #: largest RSS of one process
    pids: set[int] = field(default_factory=set)  #: every process seen in the tree
    #: CPU seconds each process used while sampled: (at the first sample, at the last)
    cpu: dict[int, tuple[float, float]] = field(default_factory=dict)

    def cpu_used(self) -> float:
        """CPU seconds the tree used between the first and the last sample."""
        return sum(last - first for first, last in self.cpu.values())


class RssSampler:
    """Samples named process trees every ``interval`` seconds in a thread, until stopped.

    Use as a context manager; ``roots`` maps a name to the pid at the top of its tree and may
    be changed while sampling (a restarted process).
    """

    def __init__(self, roots: dict[str, int], interval: float = 0.5) -> None:
        self.roots = dict(roots)
        self.peaks = {name: Peaks() for name in roots}
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        parents = _parents()
        for name, root in list(self.roots.items()):
            pids = tree(root, parents)
            sizes = [rss(pid) for pid in pids]
            peaks = self.peaks.setdefault(name, Peaks())
            peaks.total = max(peaks.total, sum(sizes))
            peaks.single = max([peaks.single, *sizes])
            peaks.pids.update(pids)
            for pid in pids:
                used = cpu_seconds(pid)
                peaks.cpu[pid] = (peaks.cpu.get(pid, (used, used))[0], used)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._interval)

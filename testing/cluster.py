"""A real JetStream cluster for the fault tests: three routed nats-servers on loopback.

Apart from :mod:`testing.servers` because only the cluster faults (tests/faults) need it: it adds
cluster routes, the monitoring endpoints that tell who leads, and a wait for a cluster that has
caught up, none of which a single server has.
"""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from testing.servers import NatsServer, answers_ok, free_port, wait_until


class ClusterNode(NatsServer):
    """A :class:`NatsServer` that is one named member of a :class:`NatsCluster`."""

    def __init__(
        self,
        binary: Path,
        workdir: Path,
        *,
        server_name: str,
        cluster_name: str,
        cluster_port: int,
        routes: list[str],
    ) -> None:
        super().__init__(binary, workdir)
        self.server_name = server_name
        self.cluster_name = cluster_name
        self.cluster_port = cluster_port
        self.routes = routes

    def command(self) -> list[str]:
        return [
            *super().command(),
            "--name",
            self.server_name,
            "--cluster_name",
            self.cluster_name,
            "--cluster",
            f"nats://127.0.0.1:{self.cluster_port}",
            "--routes",
            ",".join(self.routes),
        ]

    def monitor(self, path: str) -> dict[str, Any] | None:
        """The JSON of a monitoring endpoint (``/jsz?…``), or None if the node does not answer."""
        url = f"http://127.0.0.1:{self.monitor_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return dict(json.load(response))
        except (OSError, ValueError):
            return None

    def clients(self) -> Counter[str]:
        """The client connections this node serves right now, counted by client name."""
        info = self.monitor("/connz?limit=1024") or {}
        return Counter(str(c.get("name", "")) for c in info.get("connections") or [])

    def is_healthy(self) -> bool:
        """Whether the node is running and JetStream on it is current (full ``/healthz``)."""
        if self.process is None or self.process.poll() is not None:
            return False
        return answers_ok(f"http://127.0.0.1:{self.monitor_port}/healthz")


class NatsCluster:
    """Three routed ``nats-server -js`` nodes on loopback: one JetStream cluster.

    Each node has its own name, ports and store, and can be killed and restarted on them like a
    single :class:`NatsServer`. :attr:`url` lists every node, as ``NATS_URL`` takes it.
    """

    def __init__(self, binary: Path, workdir: Path, size: int = 3) -> None:
        cluster_ports = [free_port() for _ in range(size)]
        self.nodes: list[ClusterNode] = []
        for index, port in enumerate(cluster_ports):
            node_dir = workdir / f"n{index + 1}"
            node_dir.mkdir()
            self.nodes.append(
                ClusterNode(
                    binary,
                    node_dir,
                    server_name=f"n{index + 1}",
                    cluster_name="eventing-test",
                    cluster_port=port,
                    routes=[f"nats://127.0.0.1:{p}" for p in cluster_ports if p != port],
                )
            )

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def start(self) -> None:
        """Start every node, then wait until the cluster has elected a JetStream meta leader."""
        for node in self.nodes:
            node.start()
        self.wait_healthy(60)

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()

    def node(self, server_name: str) -> ClusterNode:
        return next(node for node in self.nodes if node.server_name == server_name)

    def clients(self) -> Counter[str]:
        """The client connections of every node, counted by client name."""
        return sum((node.clients() for node in self.nodes), Counter())

    def meta_leader(self) -> str | None:
        """Name of the JetStream meta leader as the running nodes agree on it, else None."""
        leaders = {
            (info.get("meta_cluster") or {}).get("leader")
            for node in self.nodes
            if node.process is not None and node.process.poll() is None
            for info in [node.monitor("/jsz")]
            if info is not None
        }
        leader = leaders.pop() if len(leaders) == 1 else None
        return str(leader) if leader else None

    def stream_leader(self, stream: str) -> str | None:
        """Name of the node leading ``stream``'s replica group, or None while it has none."""
        for node in self.nodes:
            info = node.monitor("/jsz?accounts=true&streams=true")
            for account in (info or {}).get("account_details") or []:
                for detail in account.get("stream_detail") or []:
                    leader = (detail.get("cluster") or {}).get("leader")
                    if detail.get("name") == stream and leader:
                        return str(leader)
        return None

    def wait_healthy(self, timeout: float) -> None:
        """Wait until a meta leader is elected and JetStream is current on every node."""
        wait_until(
            lambda: self.meta_leader() is not None and all(n.is_healthy() for n in self.nodes),
            timeout,
            "the NATS cluster to elect a meta leader and catch up",
            interval=0.2,
        )

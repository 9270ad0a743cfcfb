"""A 3-node NATS cluster loses a node at a time while events are published.

Stream and dead-letter stream are replicated to all three nodes (``JS_STREAM_REPLICAS=3``); every
process is given all three URLs. A PubAck means a quorum stored the event, so killing any one
node with SIGKILL loses nothing. Killing the stream's leader shows how long publishing pauses
for an election; killing the node most of our processes are connected to shows them moving to
the other URLs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import nats
import pytest

from testing.cluster import ClusterNode, NatsCluster
from testing.counting import Load, settle
from testing.servers import wait_until
from testing.sink import SinkServer
from tests.faults.conftest import StartSystem

pytestmark = [pytest.mark.integration, pytest.mark.faults]

RATE = 200.0
#: Publishes in flight to the dying leader fail after REQUEST_TIMEOUT (5 s), the others wait for
#: the new leader (nats-server elects within 4 to 9 s); clients retry within 0.2 s.
MAX_PUBLISH_GAP = 12.0


def test_nodes_killed_one_at_a_time_in_a_three_node_cluster(
    nats_cluster: NatsCluster, start_system: StartSystem, sink_server: SinkServer
) -> None:
    system = start_system(nats_cluster, JS_STREAM_REPLICAS="3")
    assert set(_peers(system.nats_url).values()) == {3}, "streams and consumers on every node"
    load = Load(system.proxy_url, "cluster", rate=RATE).start()
    time.sleep(5)

    leader = nats_cluster.stream_leader("sap")
    assert leader is not None
    elected_after = _crash(
        nats_cluster,
        nats_cluster.node(leader),
        lambda: nats_cluster.stream_leader("sap") not in (None, leader),
        "a new stream leader",
    )

    connected = nats_cluster.clients()
    busiest = max(nats_cluster.nodes, key=lambda node: node.clients().total())
    moved = sorted(busiest.clients())
    assert moved, "each of our processes is connected to some node"
    moved_after = _crash(
        nats_cluster,
        busiest,
        lambda: nats_cluster.clients() >= connected,
        f"{', '.join(moved)} connected to the other nodes",
    )

    load.stop()
    result = settle(load, sink_server.sink, system.nats_url)
    gap = load.longest_gap()
    print(
        result.line(
            "cluster-kill-nodes",
            new_leader_after=f"{elected_after:.1f}s",
            clients_moved_after=f"{moved_after:.1f}s ({', '.join(moved)})",
            longest_publish_gap=f"{gap:.1f}s",
        )
    )
    assert result.accepted > RATE * 15
    assert result.lost == 0
    assert result.dead_lettered == 0
    assert gap < MAX_PUBLISH_GAP


def _crash(
    cluster: NatsCluster, node: ClusterNode, recovered: Callable[[], bool], what: str
) -> float:
    """Kill ``node``, wait until ``recovered`` (returning how long that took), let the system
    run on two nodes for 5 s, then restart the node and wait until it has caught up."""
    node.kill()
    killed_at = time.monotonic()
    wait_until(recovered, 30, what, interval=0.1)
    took = time.monotonic() - killed_at
    time.sleep(5)
    node.start()
    cluster.wait_healthy(60)
    time.sleep(5)
    return took


def _peers(nats_url: str) -> dict[str, int]:
    """How many nodes hold each stream and each consumer of the event stream."""

    async def read() -> dict[str, int]:
        client = await nats.connect(servers=nats_url.split(","))
        try:
            js = client.jetstream()
            peers: dict[str, int] = {}
            for stream in ("sap", "sap-dlq"):
                info = await js.stream_info(stream)
                assert info.cluster is not None
                peers[stream] = 1 + len(info.cluster.replicas or [])
            for consumer in await js.consumers_info("sap"):
                assert consumer.cluster is not None
                peers[consumer.name] = 1 + len(consumer.cluster.replicas or [])
            return peers
        finally:
            await client.close()

    return asyncio.run(read())

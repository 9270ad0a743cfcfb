"""Leader election (LEADER_ELECTION=on) against a real API server: the Lease itself, then two
manager processes of which only one works."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from eventing.settings import SourceSettings
from eventing.sources.cluster import api_client
from manager.leader import LEASE_NAME, Lease, Timing
from testing.kube import Kube
from testing.servers import NatsServer, RedisServer, free_port, wait_until
from testing.sink import SinkServer
from testing.system import Process, System, script
from tests.kubernetes.test_manager import (
    CRD,
    consumer_names_when,
    reading,
    subscription,
    wait_ready,
)

SHORT = Timing(lease_duration=2, renew_deadline=1.5, retry_period=0.2)


@pytest.fixture
def api(kube: Kube) -> Iterator[Any]:
    client = api_client(
        SourceSettings(
            kind="kubernetes",
            directory="",
            kubeconfig=str(kube.kubeconfig),
            namespaces=(),
            sink_rule=True,
        )
    )
    yield client
    client.close()


def candidate(api: Any, kube: Kube, identity: str) -> Lease:
    return Lease(api, kube.namespace, identity=identity, timing=SHORT)


def holder(kube: Kube) -> str | None:
    lease = kube.get("coordination.k8s.io/v1", "Lease", LEASE_NAME, kube.namespace)
    return lease["spec"].get("holderIdentity")  # type: ignore[no-any-return]


def test_one_candidate_holds_the_lease_and_the_other_waits(api: Any, kube: Kube) -> None:
    first, second = candidate(api, kube, "first"), candidate(api, kube, "second")

    assert first.try_acquire_or_renew()
    assert not second.try_acquire_or_renew()
    assert first.try_acquire_or_renew(), "the holder renews"
    assert not second.try_acquire_or_renew()
    assert holder(kube) == "first" == second.holder


def test_a_lease_left_unrenewed_is_taken_over_after_its_duration(api: Any, kube: Kube) -> None:
    # The second candidate's clock is the test's. With real sleeps, a first read slower than
    # half the duration (a busy API server) put the second try past the duration.
    now = [0.0]
    first = candidate(api, kube, "first")
    second = Lease(api, kube.namespace, identity="second", timing=SHORT, clock=lambda: now[0])
    assert first.try_acquire_or_renew()
    assert not second.try_acquire_or_renew()  # second starts watching the record here

    now[0] += SHORT.lease_duration / 2
    assert not second.try_acquire_or_renew(), "not before the duration has passed"
    now[0] += SHORT.lease_duration / 2 + 0.2

    assert second.try_acquire_or_renew()
    lease = kube.get("coordination.k8s.io/v1", "Lease", LEASE_NAME, kube.namespace)
    assert lease["spec"]["holderIdentity"] == "second"
    assert lease["spec"]["leaseTransitions"] == 1
    assert not first.try_acquire_or_renew(), "the old holder sees it lost the lease"
    assert first.holder == "second"


def test_a_released_lease_is_taken_over_at_once(api: Any, kube: Kube) -> None:
    first, second = candidate(api, kube, "first"), candidate(api, kube, "second")
    assert first.try_acquire_or_renew()
    assert not second.try_acquire_or_renew()

    first.release()

    assert second.try_acquire_or_renew()
    assert holder(kube) == "second"


def test_candidates_racing_for_a_new_lease_elect_exactly_one(api: Any, kube: Kube) -> None:
    candidates = [candidate(api, kube, f"c{i}") for i in range(6)]
    start = threading.Barrier(len(candidates))
    won: list[str] = []

    def race(lease: Lease) -> None:
        start.wait()
        if lease.try_acquire_or_renew():
            won.append(lease.identity)

    threads = [threading.Thread(target=race, args=(lease,)) for lease in candidates]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(won) == 1
    assert holder(kube) == won[0]


@pytest.mark.integration
def test_only_the_leading_manager_works_and_a_standby_takes_over_when_it_stops(
    kube: Kube,
    nats_server: NatsServer,
    redis_server: RedisServer,
    tmp_path: Path,
    sink_server: SinkServer,
    request: pytest.FixtureRequest,
) -> None:
    kube.apply(CRD.read_text())
    election = reading(
        kube, KUBE_SINK_RULE="off", LEADER_ELECTION="on", LEADER_ELECTION_NAMESPACE=kube.namespace
    )
    system = System(nats_server, redis_server, tmp_path, **election).start(workers=0)
    request.addfinalizer(system.stop)
    standby_port = free_port()
    standby = Process(
        "standby",
        [script("eventing-manager")],
        {**system.env, "MANAGER_PORT": str(standby_port)},
        tmp_path,
    )
    standby.start()
    request.addfinalizer(standby.stop)
    wait_until(lambda: "waiting to lead" in standby.log(), 30, f"the standby\n{standby.log()}")
    kube.apply(subscription("orders", sink_server.url, "order.created.v1"))
    wait_ready(kube, "orders")

    assert leading(system.manager_url) == 1
    assert leading(f"http://127.0.0.1:{standby_port}") == 0
    assert "holding lease" not in standby.log()

    stopped_at = time.monotonic()
    system.manager.stop()  # SIGTERM: the lease is released on the way out
    wait_until(
        lambda: leading(f"http://127.0.0.1:{standby_port}") == 1,
        30,
        f"the standby to lead\n{standby.log()}",
    )
    took_over = time.monotonic() - stopped_at
    kube.apply(subscription("payments", sink_server.url, "payment.failed.v1"))
    wait_ready(kube, "payments")

    assert took_over < Timing().lease_duration, "a released lease needs no waiting"
    assert len(consumer_names_when(system, 2)) == 2
    assert "released lease" in system.manager.log()

    # The first manager comes back as the standby; the leader now dies without releasing.
    system.manager.start()
    wait_until(  # its log goes on from its first run, which waited too
        lambda: system.manager.log().count("waiting to lead") == 2, 30, "the new standby"
    )
    killed_at = time.monotonic()
    standby.kill()
    wait_until(lambda: leading(system.manager_url) == 1, 45, f"a new leader\n{system.logs()}")
    took_over_killed = time.monotonic() - killed_at

    print(
        f"\n[leader] the standby leads {took_over:.1f} s after the leader's SIGTERM,"
        f" {took_over_killed:.1f} s after its SIGKILL"
    )
    # Never before the Lease could have expired: two managers must not work at once.
    assert took_over_killed >= Timing().lease_duration - Timing().retry_period - 1


def leading(manager_url: str) -> float:
    found = re.search(
        r"^eventing_manager_leader (\S+)$",
        requests.get(f"{manager_url}/metrics", timeout=5).text,
        re.MULTILINE,
    )
    assert found is not None
    return float(found[1])

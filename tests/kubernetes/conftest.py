"""A real kube-apiserver (with etcd) for the whole session, and a fresh namespace per test.

One control plane per session: starting one costs seconds of both cores, a namespace costs a
request. Without kube-apiserver and etcd (and no Go to build them) the tests skip, or fail when
``CI`` is set.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.kube import ControlPlane, Kube, Timings, kubebins

_TIMINGS = pytest.StashKey[Timings]()
_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything here is marked ``kubernetes``: ``pytest -m "not kubernetes"`` leaves it out."""
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.kubernetes)


@pytest.fixture(scope="session")
def kube_control_plane(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ControlPlane]:
    """etcd and kube-apiserver on free loopback ports, with an admin kubeconfig."""
    bins = kubebins()
    plane = ControlPlane(bins, tmp_path_factory.mktemp("kube"))
    try:
        plane.start()
        assert plane.timings is not None
        request.config.stash[_TIMINGS] = plane.timings
        yield plane
    finally:
        plane.stop()


@pytest.fixture
def kube(kube_control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[Kube]:
    """The admin's client, defaulting to a namespace created for this test alone.

    The namespace is not deleted afterwards: with no namespace controller running, deleting
    only marks it terminating and removes nothing.
    """
    client = Kube(kube_control_plane)
    client.namespace = client.create_namespace(_namespace_for(request.node.name))
    yield client
    client.close()


@pytest.fixture
def kubeconfig(kube: Kube) -> Path:
    """The admin kubeconfig file of the session's API server."""
    return kube.kubeconfig


def _namespace_for(test_name: str) -> str:
    """A DNS label that names the test and is unique: ``t-<test>-<random>``."""
    slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"t-{slug}-{uuid.uuid4().hex[:6]}"


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    timings = config.stash.get(_TIMINGS, None)
    if timings is not None:
        terminalreporter.write_line(
            f"kube control plane: etcd ready in {timings.etcd:.1f} s, "
            f"kube-apiserver ready {timings.apiserver:.1f} s later"
        )

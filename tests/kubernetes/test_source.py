"""The Kubernetes source in-process against a real API server: the informer's cache, the snapshot
read from it, and what ``write_back`` stores (status, finalizers)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client, watch

from eventing.errors import InvalidSubscription
from eventing.settings import Settings, SourceSettings
from eventing.sources.cluster import SubscriptionCache, _listing, api_client
from eventing.sources.kubernetes import FINALIZER, KubernetesSource
from eventing.sources.snapshot import Snapshot, parser_for
from eventing.subscriptions.status import Delivery, LastError, status_of
from testing.kube import Kube
from testing.servers import wait_until
from tests.kubernetes.test_manager import API_VERSION, CRD, get, subscription

PARSE = parser_for(Settings.from_environ({}))
SINK = "http://127.0.0.1:1/"


@pytest.fixture
def api(kube: Kube) -> Iterator[Any]:
    kube.apply(CRD.read_text())
    settings = SourceSettings(kubeconfig=str(kube.kubeconfig), namespaces=(kube.namespace,))
    connected = api_client(settings)
    yield connected
    connected.close()


@pytest.fixture
def cache(api: Any, kube: Kube) -> Iterator[SubscriptionCache]:
    watched = SubscriptionCache(api, (kube.namespace,))
    yield watched
    watched.stop()


def read_when(source: KubernetesSource, names: list[str]) -> Snapshot:
    """The snapshot once it holds exactly the subscriptions ``names``, by name."""
    found: list[Snapshot] = []

    def holds() -> bool:
        found[:] = [source.read()[0]]
        return sorted(e.key.partition("/")[2] for e in found[0].entries) == sorted(names)

    wait_until(holds, 20, f"subscriptions {names}; last read {found}")
    return found[0]


def test_the_cache_is_not_ready_before_its_list_then_follows_every_change(
    api: Any, kube: Kube, cache: SubscriptionCache
) -> None:
    kube.apply(subscription("orders", SINK, "order.created.v1"))
    source = KubernetesSource(cache, api, PARSE, sink_rule=False)
    assert not source.ready, "nothing listed yet: an empty snapshot would delete every consumer"

    cache.start()
    wait_until(lambda: source.ready, 20, "the first list")
    read_when(source, ["orders"])
    kube.apply(subscription("payments", SINK, "payment.failed.v1"))
    read_when(source, ["orders", "payments"])
    kube.apply(subscription("orders", SINK, "order.paid.v1"))
    wait_until(
        lambda: (
            [s.types for s in source.read()[0].valid if s.name == "orders"] == [("order.paid.v1",)]
        ),
        20,
        "the changed types",
    )
    kube.delete(API_VERSION, "Subscription", "payments")  # no finalizer yet: gone at once
    snapshot = read_when(source, ["orders"])

    assert source.read() == (snapshot, False), "nothing changed since: the same snapshot"


def test_the_watch_decodes_events_and_tracks_the_resource_version_to_resume_from(
    api: Any, kube: Kube
) -> None:
    """Without a return type the client's Watch yields raw events and tracks no resourceVersion,
    so the informer would resume every watch from its last list."""
    (stored,) = kube.apply(subscription("orders", SINK, "order.created.v1"))
    stream = watch.Watch()
    listed: list[bool] = []

    events = list(
        stream.stream(
            _listing(client.CustomObjectsApi(api), lambda: listed.append(True)),
            namespace=kube.namespace,
            timeout_seconds=1,
        )
    )

    changes = [e for e in events if e["type"] != "BOOKMARK"]  # bookmarks: asked for, no object
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in changes] == [("ADDED", "orders")]
    assert int(stream.resource_version) >= int(stored["metadata"]["resourceVersion"])
    assert listed == [True], "the first watch says the list before it is in the cache"


def test_an_empty_namespace_is_ready_once_listed(api: Any, cache: SubscriptionCache) -> None:
    source = KubernetesSource(cache, api, PARSE, sink_rule=False)
    cache.start()

    wait_until(lambda: source.ready, 20, "the first list")
    assert source.read()[0] == Snapshot(())


def test_without_namespaces_the_cache_watches_every_namespace(api: Any, kube: Kube) -> None:
    kube.apply(subscription("orders", SINK, "order.created.v1"))
    everywhere = SubscriptionCache(api, ())
    source = KubernetesSource(everywhere, api, PARSE, sink_rule=False)
    everywhere.start()
    try:
        wait_until(lambda: source.ready, 20, "the first list")
        wait_until(
            lambda: f"{kube.namespace}/orders" in {e.key for e in source.read()[0].entries},
            20,
            "the subscription of the test's namespace",
        )
        kube.apply(subscription("payments", SINK, "payment.failed.v1"))
        wait_until(
            lambda: f"{kube.namespace}/payments" in {e.key for e in source.read()[0].entries},
            20,
            "a subscription added while watching",
        )
    finally:
        everywhere.stop()


def test_write_back_adds_the_finalizer_and_status_and_releases_it_once_consumers_are_gone(
    api: Any, kube: Kube, cache: SubscriptionCache
) -> None:
    kube.apply(subscription("orders", SINK, "order.created.v1"))
    source = KubernetesSource(cache, api, PARSE, sink_rule=False)
    cache.start()
    (orders,) = read_when(source, ["orders"]).valid
    metadata = {"namespace": kube.namespace, "name": "orders"}
    view = [{"metadata": metadata, "status": status_of(orders)}]

    source.write_back(view, consumers_gone=True)

    stored = get(kube, "orders")
    assert stored["metadata"]["finalizers"] == [FINALIZER]
    assert stored["status"]["ready"] is True
    kube.delete(API_VERSION, "Subscription", "orders")
    read_when(source, [])  # being deleted: out of the snapshot, waiting for its finalizer
    assert kube.exists(API_VERSION, "Subscription", "orders")
    source.write_back([], consumers_gone=False)
    assert kube.exists(API_VERSION, "Subscription", "orders"), "consumers not gone: kept"

    source.write_back([], consumers_gone=True)

    wait_until(lambda: not kube.exists(API_VERSION, "Subscription", "orders"), 20, "the deletion")


class _FailingWatches(BaseHTTPRequestHandler):
    """An API server that lists no Subscription and answers every watch with a 500."""

    watches = 0

    def do_GET(self) -> None:
        if "watch=true" in self.path:
            type(self).watches += 1
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps({"items": [], "metadata": {"resourceVersion": "1"}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_failing_watch_is_reopened_after_a_pause_not_at_once() -> None:
    """The informer alone reconnects without pausing (7,807 times in 3 s, measured)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FailingWatches)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    configuration = client.Configuration(host=f"http://127.0.0.1:{server.server_port}")
    configuration.retries = False
    cache = SubscriptionCache(client.ApiClient(configuration), ("nowhere",))
    try:
        cache.start()
        wait_until(lambda: _FailingWatches.watches >= 2, 20, "a second watch")
        time.sleep(1.5)  # a window to count reconnects in, not a wait for something
        assert _FailingWatches.watches <= 4  # one per second, with slack for a busy machine
    finally:
        cache.stop()
        server.shutdown()


def test_a_subscription_naming_a_file_of_the_worker_is_invalid(
    api: Any, kube: Kube, cache: SubscriptionCache
) -> None:
    """A path would name a file of the worker's pod (its NATS credentials, say), to be sent as
    a bearer token to a sink of the subscription's choosing."""
    stealing = {"auth": {"type": "bearer", "secretFile": "/var/run/secrets/nats/creds"}}
    kube.apply(subscription("stealing", SINK, "order.created.v1", delivery=stealing))
    source = KubernetesSource(cache, api, PARSE, sink_rule=False)
    cache.start()

    (entry,) = read_when(source, ["stealing"]).entries
    assert isinstance(entry, InvalidSubscription)
    assert "secretFile, caFile, certFile and keyFile are for the folder source" in str(entry)


def test_a_sinks_recovery_clears_failing_since_and_an_unchanged_status_is_not_written_again(
    api: Any, kube: Kube, cache: SubscriptionCache
) -> None:
    """A merge patch stores no null: the write-back compares what the API server keeps, and
    sends the nulls that remove what a recovery cleared."""
    kube.apply(subscription("orders", SINK, "order.created.v1"))
    source = KubernetesSource(cache, api, PARSE, sink_rule=False)
    cache.start()
    (orders,) = read_when(source, ["orders"]).valid
    metadata = {"namespace": kube.namespace, "name": "orders"}
    error = LastError(1_767_268_800.0, None, "timed out")
    failing = Delivery(last_error=error, failing_since=1_767_268_740.0, failing="failing")
    source.write_back([{"metadata": metadata, "status": status_of(orders, delivery=failing)}], True)
    wait_until(lambda: "failingSince" in stored_delivery(source), 20, "the failing status read")

    recovered = status_of(orders, delivery=Delivery(delivered=1, last_error=error))
    source.write_back([{"metadata": metadata, "status": recovered}], True)
    wait_until(lambda: stored_delivery(source).get("delivered") == 1, 20, "the recovery read")
    assert "failingSince" not in stored_delivery(source)

    patches: list[object] = []
    patch = source._custom.patch_namespaced_custom_object_status
    source._custom.patch_namespaced_custom_object_status = lambda *a: patches.append(patch(*a))
    source.write_back([{"metadata": metadata, "status": recovered}], True)
    assert patches == []


def stored_delivery(source: KubernetesSource) -> dict[str, Any]:
    """``status.delivery`` of the one subscription, as the source's cache last saw it."""
    source.read()  # what write_back compares with comes from the last read
    (current,) = source._current.values()
    return dict((current.get("status") or {}).get("delivery") or {})

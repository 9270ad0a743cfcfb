"""The cluster's Subscription objects: the API client, an informer's cache, or a plain list.

:class:`SubscriptionCache` keeps every object current for the manager; :class:`SubscriptionLister`
lists them at most every few seconds for the proxy, whose requests are rare and whose worker
processes should hold no threads. :mod:`eventing.sources.kubernetes` turns either into a
snapshot.

The cache is the client's own ``kubernetes.informer.SharedInformer`` (list, then watch from the
last resourceVersion seen, a full list every :data:`_RELIST_EVERY` seconds), one per
namespace, with two adaptations, both measured against kube-apiserver 1.37 with client 37.0.2:

- its list reads ``.items`` and ``.metadata.resource_version`` attributes, which the dicts of
  ``CustomObjectsApi`` lack: as documented it fails every list with ``TypeError:
  'builtin_function_or_method' object is not iterable`` and its cache stays empty.
  :func:`_listing` gives it that shape, asks for bookmarks, and says when the first list is in
  the cache (the informer has no "synced" flag, and an empty list fires no event);
- a failed watch is re-opened at once, without a pause: 7,807 attempts in 3 s with the API
  server unreachable, each logged with a traceback. An ``ERROR`` handler, which the informer
  calls on its own thread, pauses :data:`_RETRY_PAUSE` before it reconnects (not after a 410,
  which it answers with a fresh list). A failed list it retries after 5 s of its own. Its own
  log line with a traceback (logger ``kubernetes.informer.informer``) stays, once a second at
  most, beside ours.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from kubernetes import client, config, informer

from eventing.settings import SourceSettings

logger = logging.getLogger(__name__)

GROUP = "eventing.kyma-project.io"
VERSION = "v1alpha2"
PLURAL = "subscriptions"

_RELIST_EVERY = 300  # a full list now and then repairs anything a watch might have missed
_RETRY_PAUSE = 1.0  # between a failed watch and the next, while the API server is unreachable
_HTTP_GONE = 410

Objects = tuple[int, list[dict[str, Any]]]  #: a version that changes with any object, the objects


def api_client(settings: SourceSettings) -> Any:
    """A client for the configured cluster: a kubeconfig file, else the pod's service account,
    else ``~/.kube/config``."""
    if settings.kubeconfig:
        return config.new_client_from_config(config_file=settings.kubeconfig)
    try:
        config.load_incluster_config()
    except config.ConfigException:
        return config.new_client_from_config()
    return client.ApiClient()


def _listing(api: client.CustomObjectsApi, on_listed: Callable[[], None]) -> Callable[..., object]:
    """The list-and-watch function a ``SharedInformer`` calls for one scope (None: all
    namespaces), adapted to the informer's reading of a list (see the module docstring).

    The informer opens its watch only after the list it made is in its cache, so the first
    watch call is the moment the scope is listed: ``on_listed`` is called then.
    """
    listed = False

    def list_subscriptions(namespace: str | None = None, **options: Any) -> object:
        """A list shaped as the informer reads it, or a watch stream.

        :rtype: object
        """
        # kubernetes.watch.Watch reads the return type above from this docstring: with one it
        # decodes each event and tracks the resourceVersion the informer resumes from.
        nonlocal listed
        if options.get("watch"):
            options["allow_watch_bookmarks"] = True
            if not listed:
                listed = True
                on_listed()
        if namespace is None:
            answer = api.list_cluster_custom_object(GROUP, VERSION, PLURAL, **options)
        else:
            answer = api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, **options)
        if options.get("watch"):
            return answer  # the stream itself
        version = answer["metadata"]["resourceVersion"]
        return SimpleNamespace(
            items=answer.get("items") or [], metadata=SimpleNamespace(resource_version=version)
        )

    return list_subscriptions


class SubscriptionCache:
    """Every Subscription object, kept current by one informer thread per namespace."""

    def __init__(self, api: Any, namespaces: tuple[str, ...]) -> None:
        objects = client.CustomObjectsApi(api)
        self._lock = threading.Lock()
        self._version = 0
        self._unlisted = len(namespaces or (None,))
        self._stopped = threading.Event()
        self._informers = [
            informer.SharedInformer(
                _listing(objects, self._listed), namespace=scope, resync_period=_RELIST_EVERY
            )
            for scope in namespaces or (None,)
        ]
        for watched in self._informers:
            for kind in (informer.ADDED, informer.MODIFIED, informer.DELETED):
                watched.add_event_handler(kind, self._changed)
            watched.add_event_handler(informer.ERROR, self._failed)

    def start(self) -> None:
        for watched in self._informers:
            watched.start()

    def stop(self) -> None:
        self._stopped.set()
        for watched in self._informers:
            watched.stop()

    def objects(self) -> Objects:
        """A version that changes with any object (0 until every namespace was listed), and
        the objects."""
        with self._lock:
            if self._unlisted:
                return 0, []
            version = self._version  # before the objects: a change in between is read again
        return version, [item for watched in self._informers for item in watched.cache.list()]

    def _listed(self) -> None:
        with self._lock:
            self._unlisted -= 1
            self._version += 1

    def _changed(self, _item: Any) -> None:
        with self._lock:
            self._version += 1

    def _failed(self, exc: Any) -> None:
        if isinstance(exc, client.ApiException) and exc.status == _HTTP_GONE:
            return  # an expired resourceVersion: the informer lists afresh at once
        if isinstance(exc, client.ApiException):
            logger.warning("watching subscriptions failed: %s %s", exc.status, exc.reason)
        else:
            logger.warning("watching subscriptions failed: %s", exc)
        self._stopped.wait(_RETRY_PAUSE)


class SubscriptionLister:
    """Every Subscription object, listed again when the last list is ``ttl`` seconds old."""

    def __init__(self, api: Any, namespaces: tuple[str, ...], ttl: float = 5.0) -> None:
        self._api = client.CustomObjectsApi(api)
        self._namespaces = namespaces
        self._ttl = ttl
        self._listed_at = -ttl
        self._items: list[dict[str, Any]] = []
        self._version = 0

    def objects(self) -> Objects:
        if time.monotonic() - self._listed_at >= self._ttl:
            items: list[dict[str, Any]] = []
            if not self._namespaces:
                items = self._api.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
            for namespace in self._namespaces:
                items += self._api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)[
                    "items"
                ]
            self._items, self._listed_at = items, time.monotonic()
            self._version += 1
        return self._version, self._items

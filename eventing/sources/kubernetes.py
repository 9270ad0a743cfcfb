"""The Kubernetes source: Subscription custom resources read through the API, status written back.

:class:`KubernetesSource` is the folder source's twin (same
:class:`~eventing.sources.source.SubscriptionSource` members), so the manager reconciles, and the
proxy answers ``/subscribed``, the same way from either. Objects come from a
:class:`SubscriptionCache` (the manager) or a :class:`SubscriptionLister` (a list at most every
few seconds; the proxy, whose requests are rare and whose worker processes should hold no
threads). After each reconcile :meth:`KubernetesSource.write_back` adds Kyma's finalizer to each
object that lacks it (a deletion waits for its consumers), writes changed statuses through the
status subresource, and releases the finalizer of objects being deleted once their consumers
are gone.

The objects themselves (an informer's cache, or a list) come from
:mod:`eventing.sources.cluster`.

We use the official client rather than kopf: the manager already is a level-triggered loop
over a whole snapshot (the folder source), and needs from Kubernetes only a current list of
objects plus status, finalizer and lease writes. kopf would bring its own event loop ownership,
per-object handlers and annotations on every object, none of which fits that loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from kubernetes import client

from eventing.errors import InvalidSubscription
from eventing.settings import SourceSettings
from eventing.sources.cluster import (
    GROUP,
    PLURAL,
    VERSION,
    SubscriptionCache,
    SubscriptionLister,
    api_client,
)
from eventing.sources.snapshot import Entry, Parse, Snapshot, validated
from eventing.subscriptions.model import Subscription, key_of
from eventing.subscriptions.status import keep_transition_times

logger = logging.getLogger(__name__)

FINALIZER = "eventing.kyma-project.io"  #: Kyma's finalizer name: consumers go before the object

_SERVICE_TTL = 10.0
_HTTP_NOT_FOUND, _HTTP_CONFLICT = 404, 409


class KubernetesSource:
    """Subscription objects into a :class:`Snapshot`, as the folder source makes one, and the
    manager's view of them back into their status and finalizers.

    Objects being deleted are left out of the snapshot (their consumers go, then
    :meth:`write_back` removes the finalizer). With the sink rule on, a sink must be the
    cluster-local address of a Service in the subscription's own namespace, and the Service
    must exist.
    """

    def __init__(
        self,
        objects: SubscriptionCache | SubscriptionLister,
        api: Any,
        parse: Parse,
        *,
        sink_rule: bool,
    ) -> None:
        self._objects = objects
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)
        self._parse = parse  #: from_manifest with the settings' defaults bound
        self._sink_rule = sink_rule
        self._services: dict[tuple[str, str], tuple[float, bool]] = {}
        self._fingerprint: tuple[Any, ...] | None = None
        self._snapshot = Snapshot(())
        self._deleting: tuple[dict[str, Any], ...] = ()  #: objects waiting for their finalizer
        self._current: dict[str, dict[str, Any]] = {}  #: the latest object of each key

    @classmethod
    def connect(cls, settings: SourceSettings, parse: Parse, *, watch: bool) -> KubernetesSource:
        """The source of the configured cluster and namespaces; ``watch`` starts a cache."""
        api = api_client(settings)
        objects: SubscriptionCache | SubscriptionLister
        if watch:
            objects = SubscriptionCache(api, settings.namespaces)
            objects.start()
        else:
            objects = SubscriptionLister(api, settings.namespaces)
        return cls(objects, api, parse, sink_rule=settings.sink_rule)

    @property
    def ready(self) -> bool:
        """Whether the objects were listed: before that an empty snapshot means "unknown", and
        reconciling it would delete every consumer."""
        return self._objects.objects()[0] > 0

    def read(self) -> tuple[Snapshot, bool]:
        """The current snapshot, and whether it differs from the previous read's."""
        version, items = self._objects.objects()
        live = [item for item in items if not item["metadata"].get("deletionTimestamp")]
        missing = frozenset(self._missing_services(live)) if self._sink_rule else frozenset()
        fingerprint = (version, missing)
        if fingerprint == self._fingerprint:
            return self._snapshot, False
        self._current = {key_of(item): item for item in items}
        self._deleting = tuple(item for item in items if item["metadata"].get("deletionTimestamp"))
        entries = tuple(self._entry(item, missing) for item in sorted(live, key=key_of))
        self._fingerprint, self._snapshot = fingerprint, Snapshot(entries)
        return self._snapshot, True

    def write_back(self, items: Sequence[dict[str, Any]], consumers_gone: bool) -> None:
        """Bring finalizers and status of the objects last read in line with the view
        ``items``; release the finalizers of objects being deleted if ``consumers_gone``.

        Every write that fails is logged and made again after the next reconcile.
        """
        for item in items:
            key = f"{item['metadata']['namespace']}/{item['metadata']['name']}"
            current = self._current.get(key)
            if current is None or current["metadata"].get("deletionTimestamp"):
                continue
            self._write(self._ensure_finalizer, current)
            self._write(self._write_status, current, item["status"])
        if consumers_gone:
            for current in self._deleting:
                if FINALIZER in (current["metadata"].get("finalizers") or []):
                    self._write(self._release, current)

    def _entry(self, item: dict[str, Any], missing: frozenset[str]) -> Entry:
        key = key_of(item)
        subscription = validated(self._parse, item)
        if isinstance(subscription, InvalidSubscription):
            return subscription
        if any(ref.file for ref in subscription.credentials.references()):
            # A path would name a file of the worker's pod (its own NATS credentials, say), to
            # be sent to a sink of the subscription's choosing.
            return InvalidSubscription(
                key,
                [
                    "spec.delivery: secretFile, caFile, certFile and keyFile are for the folder"
                    " source; name a Secret of the subscription's namespace (secretRef, caRef,"
                    " certRef)"
                ],
            )
        if self._sink_rule:
            problem = sink_rule_problem(subscription)
            if problem is None and key in missing:
                host = urlsplit(subscription.sink).hostname or ""
                service, namespace = host.split(".")[:2]
                problem = f"service {service}.{namespace} not found in the cluster"
            if problem is not None:
                return InvalidSubscription(key, [f"spec.sink: Sink validation failed: {problem}"])
        return subscription

    def _missing_services(self, items: list[dict[str, Any]]) -> set[str]:
        """Keys of the subscriptions whose sink Service does not exist (cached for a while)."""
        missing: set[str] = set()
        now = time.monotonic()
        for item in items:
            sink = (item.get("spec") or {}).get("sink")
            if not isinstance(sink, str):
                continue
            service = _service_of(sink)
            if service is None:
                continue
            name, namespace = service
            checked = self._services.get(service)
            if checked is None or now - checked[0] > _SERVICE_TTL:
                checked = (now, self._service_exists(namespace, name))
                self._services[service] = checked
            if not checked[1]:
                missing.add(key_of(item))
        return missing

    def _service_exists(self, namespace: str, name: str) -> bool:
        try:
            self._core.read_namespaced_service(name, namespace)
        except client.ApiException as exc:
            if exc.status == _HTTP_NOT_FOUND:
                return False
            logger.warning("cannot check Service %s.%s: %s", name, namespace, exc.reason)
        except Exception as exc:  # API server unreachable: keep delivering, check again later
            logger.warning("cannot check Service %s.%s: %s", name, namespace, exc)
        return True

    def _ensure_finalizer(self, current: dict[str, Any]) -> None:
        finalizers = list(current["metadata"].get("finalizers") or [])
        if FINALIZER in finalizers:
            return
        self._patch_finalizers(current, [*finalizers, FINALIZER])
        logger.info("added finalizer to subscription %s", _key(current))

    def _release(self, current: dict[str, Any]) -> None:
        finalizers = [f for f in current["metadata"].get("finalizers") or [] if f != FINALIZER]
        self._patch_finalizers(current, finalizers)
        logger.info("consumers of %s removed; released its finalizer", _key(current))

    def _patch_finalizers(self, current: dict[str, Any], finalizers: list[str]) -> None:
        metadata = current["metadata"]
        # The resourceVersion makes the patch conditional: another writer's change in between
        # is a conflict (retried on the next reconcile), never a lost finalizer.
        self._custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            metadata["namespace"],
            PLURAL,
            metadata["name"],
            {
                "metadata": {
                    "finalizers": finalizers,
                    "resourceVersion": metadata["resourceVersion"],
                }
            },
        )

    def _write_status(self, current: dict[str, Any], status: dict[str, Any]) -> None:
        old = current.get("status") or {}
        status = keep_transition_times(old, status)
        if _stored(status) == old:
            return
        metadata = current["metadata"]
        self._custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, metadata["namespace"], PLURAL, metadata["name"], {"status": status}
        )

    @staticmethod
    def _write(action: Callable[..., None], current: dict[str, Any], *arguments: Any) -> None:
        try:
            action(current, *arguments)
        except client.ApiException as exc:
            if exc.status not in (_HTTP_NOT_FOUND, _HTTP_CONFLICT):
                logger.warning("writing to subscription %s failed: %s", _key(current), exc)
        except Exception as exc:  # API server unreachable: the next reconcile writes again
            logger.warning("writing to subscription %s failed: %s", _key(current), exc)


def _stored(value: Any) -> Any:
    """What the API server keeps of a status sent as a merge patch: a null removes its field
    (``status.delivery.lastError`` is null until a first failure), so a status compared as
    sent would differ from the stored one, and be written again, at every reconcile."""
    if isinstance(value, dict):
        return {key: _stored(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_stored(item) for item in value]
    return value


def sink_rule_problem(subscription: Subscription) -> str | None:
    """Why ``subscription``'s sink breaks Kyma's rule (cluster-local, own namespace), if it does."""
    host = urlsplit(subscription.sink).hostname or ""
    if not host.endswith("svc.cluster.local"):
        return f"sink host {host!r} must end with svc.cluster.local"
    labels = host.split(".")
    if len(labels) != 5:
        return f"sink host {host!r} must be <service>.<namespace>.svc.cluster.local"
    if labels[1] != subscription.namespace:
        return (
            f"sink namespace {labels[1]!r} must be the subscription's namespace"
            f" {subscription.namespace!r}"
        )
    return None


def _service_of(sink: str) -> tuple[str, str] | None:
    try:
        labels = (urlsplit(sink).hostname or "").split(".")
    except ValueError:
        return None
    if len(labels) == 5 and labels[2:] == ["svc", "cluster", "local"]:
        return labels[0], labels[1]
    return None


def _key(current: dict[str, Any]) -> str:
    metadata = current.get("metadata") or {}
    return f"{metadata.get('namespace')}/{metadata.get('name')}"

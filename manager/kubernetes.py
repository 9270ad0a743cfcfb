"""What the manager writes back to Kubernetes: finalizers and status.

After every reconcile the manager (a) adds Kyma's finalizer to each Subscription that lacks it,
so a deletion waits for its consumers to go, (b) writes each Subscription's status through the
status subresource when it changed (condition times kept while a condition holds), and (c)
removes the finalizer of the objects being deleted once a reconcile removed their consumers.
Blocking calls; the runner makes them from a thread.
"""

from __future__ import annotations

import logging
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from eventing.sources.kubernetes import FINALIZER, GROUP, PLURAL, VERSION, KubernetesReader
from eventing.subscriptions.status import keep_transition_times

logger = logging.getLogger(__name__)

_HTTP_NOT_FOUND, _HTTP_CONFLICT = 404, 409


class StatusWriter:
    """Finalizers and status of the objects a :class:`KubernetesReader` last read."""

    def __init__(self, reader: KubernetesReader) -> None:
        self._reader = reader
        self._api = client.CustomObjectsApi(reader.api)

    def write(self, items: tuple[dict[str, Any], ...], consumers_gone: bool) -> None:
        """Bring finalizers and status in line with the view ``items`` just published.

        ``consumers_gone`` says the reconcile succeeded, so the consumers of objects being
        deleted no longer exist and their finalizers may go.
        """
        for item in items:
            key = f"{item['metadata']['namespace']}/{item['metadata']['name']}"
            current = self._reader.current.get(key)
            if current is None or current["metadata"].get("deletionTimestamp"):
                continue
            self._call(self._ensure_finalizer, current)
            self._call(self._write_status, current, item["status"])
        if consumers_gone:
            for current in self._reader.deleting:
                if FINALIZER in (current["metadata"].get("finalizers") or []):
                    self._call(self._release, current)

    def _ensure_finalizer(self, current: dict[str, Any]) -> None:
        finalizers = list(current["metadata"].get("finalizers") or [])
        if FINALIZER in finalizers:
            return
        self._patch(current, [*finalizers, FINALIZER])
        logger.info("added finalizer to subscription %s", _key(current))

    def _release(self, current: dict[str, Any]) -> None:
        finalizers = [f for f in current["metadata"].get("finalizers") or [] if f != FINALIZER]
        self._patch(current, finalizers)
        logger.info("consumers of %s removed; released its finalizer", _key(current))

    def _patch(self, current: dict[str, Any], finalizers: list[str]) -> None:
        metadata = current["metadata"]
        # The resourceVersion makes the patch conditional: another writer's change in between
        # is a conflict (retried on the next reconcile), never a lost finalizer.
        self._api.patch_namespaced_custom_object(
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
        if status == old:
            return
        metadata = current["metadata"]
        self._api.patch_namespaced_custom_object_status(
            GROUP, VERSION, metadata["namespace"], PLURAL, metadata["name"], {"status": status}
        )

    @staticmethod
    def _call(action: Any, *arguments: Any) -> None:
        try:
            action(*arguments)
        except ApiException as exc:
            if exc.status not in (_HTTP_NOT_FOUND, _HTTP_CONFLICT):
                logger.warning("writing to subscription %s failed: %s", _key(arguments[0]), exc)
        except Exception as exc:  # API server unreachable: the next reconcile writes again
            logger.warning("writing to subscription %s failed: %s", _key(arguments[0]), exc)


def _key(current: dict[str, Any]) -> str:
    metadata = current.get("metadata") or {}
    return f"{metadata.get('namespace')}/{metadata.get('name')}"

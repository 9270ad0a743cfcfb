"""What a subscription source is, and which one the settings name.

A source is one object with three members (:class:`SubscriptionSource`), so the manager and the
proxy never ask which source they hold: the manager polls ``read()`` once ``ready``, and after
each reconcile hands the status view to ``write_back()``, which Kubernetes stores (status,
finalizers) and a folder ignores. This module sits above both sources, which never import each
other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from eventing.settings import Settings
from eventing.sources.directory import DirectorySource
from eventing.sources.snapshot import Snapshot, parser_for


class SubscriptionSource(Protocol):
    """A source of subscriptions: the folder, or Kubernetes. Blocking calls: make them off a
    loop."""

    @property
    def ready(self) -> bool:
        """Whether a snapshot is complete (an incomplete one must not delete consumers)."""
        ...

    def read(self) -> tuple[Snapshot, bool]:
        """The current snapshot, and whether it differs from the previous read's."""
        ...

    def write_back(self, items: Sequence[dict[str, Any]], consumers_gone: bool) -> None:
        """Store the status view ``items`` (Kyma ``Subscription`` objects with a status) where
        the subscriptions came from; ``consumers_gone`` says the reconcile that made the view
        succeeded, so the consumers of subscriptions being deleted no longer exist."""
        ...


def source_for(settings: Settings, *, watch: bool) -> SubscriptionSource:
    """The configured source; ``watch`` keeps a Kubernetes cache current in threads (the
    manager) instead of listing on demand (the proxy)."""
    parse = parser_for(settings)
    if settings.source.kind == "directory":
        return DirectorySource(settings.source.directory, parse)
    # Imported here: the Kubernetes client is heavy, and the folder source never needs it.
    from eventing.sources import kubernetes

    return kubernetes.KubernetesSource.connect(settings.source, parse, watch=watch)

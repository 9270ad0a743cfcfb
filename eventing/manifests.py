"""Subscription manifests from a folder of YAML files (several documents per file).

Shared by the manager, which reconciles them, and the proxy, which answers
``/<application>/v1/events/subscribed`` from the same files. A folder is re-read only when a
file's name, size or modification time changed, so polling it every second is cheap.
:func:`reader_for` picks this reader or the Kubernetes one (:mod:`eventing.kubernetes`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from eventing.config import Settings
from eventing.errors import InvalidSubscription
from eventing.subscription import KIND, Subscription, from_manifest, key_of

_SUFFIXES = (".yaml", ".yml")

Entry = Subscription | InvalidSubscription
#: A manifest to a subscription (raising InvalidSubscription): from_manifest with the settings'
#: defaults bound, shared by every source.
Parse = Callable[[Mapping[str, Any]], Subscription]
UNREADABLE = "file "  #: key prefix of a file that could not be read or parsed as a whole


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every subscription of the folder: valid ones, and the invalid ones with their errors."""

    entries: tuple[Entry, ...]

    @property
    def valid(self) -> tuple[Subscription, ...]:
        return tuple(e for e in self.entries if isinstance(e, Subscription))

    @property
    def invalid_keys(self) -> frozenset[str] | None:
        """``namespace/name`` of each subscription whose spec is invalid; None when a file could
        not be read or parsed, so the subscriptions in it are unknown."""
        keys = frozenset(e.key for e in self.entries if isinstance(e, InvalidSubscription))
        return None if any(key.startswith(UNREADABLE) for key in keys) else keys


class Reader(Protocol):
    """A source of subscriptions: the folder, or Kubernetes."""

    @property
    def ready(self) -> bool:
        """Whether a snapshot is complete (an incomplete one must not delete consumers)."""
        ...

    def read(self) -> tuple[Snapshot, bool]:
        """The current snapshot, and whether it differs from the previous read's (blocking)."""
        ...


def reader_for(settings: Settings, *, watch: bool) -> Reader:
    """The configured source's reader; ``watch`` keeps a Kubernetes cache current in a thread
    (the manager) instead of listing on demand (the proxy)."""
    parse = functools.partial(
        from_manifest,
        prefix=settings.events.type_prefix,
        defaults=settings.delivery.policy,
        default_max_in_flight=settings.manager.default_max_in_flight,
    )
    if settings.source.kind == "directory":
        return DirectoryReader(settings.source.directory, parse)
    # Imported here: the Kubernetes client is heavy, and the folder source never needs it.
    from eventing import kubernetes

    api = kubernetes.api_client(settings.source)
    objects: kubernetes.SubscriptionCache | kubernetes.SubscriptionLister
    if watch:
        objects = kubernetes.SubscriptionCache(api, settings.source.namespaces)
        objects.start()
    else:
        objects = kubernetes.SubscriptionLister(api, settings.source.namespaces)
    return kubernetes.KubernetesReader(objects, api, parse, sink_rule=settings.source.sink_rule)


def parse_documents(text: str, origin: str) -> Iterator[dict[str, Any] | InvalidSubscription]:
    """The documents of one YAML file; a broken file or document yields an error instead."""
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())[:300]
        yield InvalidSubscription(f"{UNREADABLE}{origin}", [f"{origin}: not valid YAML: {problem}"])
        return
    for index, document in enumerate(documents):
        if document is None:
            continue
        if not isinstance(document, dict):
            yield InvalidSubscription(
                f"{UNREADABLE}{origin}#{index}", [f"{origin} document {index}: expected a mapping"]
            )
        elif document.get("kind") == KIND:
            yield document


class DirectoryReader:
    """Reads a folder of manifests into a :class:`Snapshot` (blocking; call it off a loop)."""

    def __init__(self, path: str, parse: Parse) -> None:
        self.path = Path(path)
        self._parse = parse  #: from_manifest with the settings' defaults bound
        self._fingerprint: tuple[tuple[str, int, int], ...] | None = None
        self._snapshot = Snapshot(())

    @property
    def ready(self) -> bool:
        return True  # a folder is read whole, every time

    def read(self) -> tuple[Snapshot, bool]:
        """The current snapshot, and whether it differs from the previous read's."""
        fingerprint = self._scan()
        if fingerprint == self._fingerprint:
            return self._snapshot, False
        entries: list[Entry] = []
        seen: set[str] = set()
        for name, _, _ in fingerprint:
            try:
                text = (self.path / name).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                entries.append(
                    InvalidSubscription(f"{UNREADABLE}{name}", [f"{name}: cannot be read: {exc}"])
                )
                continue
            for document in parse_documents(text, name):
                entries.append(self._entry(document, seen))
        self._fingerprint, self._snapshot = fingerprint, Snapshot(tuple(entries))
        return self._snapshot, True

    def _entry(self, document: dict[str, Any] | InvalidSubscription, seen: set[str]) -> Entry:
        if isinstance(document, InvalidSubscription):
            return document
        key = key_of(document)
        try:
            subscription = self._parse(document)
        except InvalidSubscription as exc:
            return exc
        if key in seen:
            return InvalidSubscription(key, [f"metadata.name: {key} is defined more than once"])
        seen.add(key)
        return subscription

    def _scan(self) -> tuple[tuple[str, int, int], ...]:
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            return ()
        files = []
        for entry in entries:
            if entry.name.endswith(_SUFFIXES) and not entry.name.startswith("."):
                try:
                    stat = entry.stat()
                except FileNotFoundError:
                    continue
                files.append((entry.name, stat.st_mtime_ns, stat.st_size))
        return tuple(sorted(files))

"""The folder source: Subscription manifests in YAML files (several documents per file).

Shared by the manager, which reconciles them, and the proxy, which answers
``/<application>/v1/events/subscribed`` from the same files. A folder is re-read only when a
file's name, size, modification time or inode changed, so polling it every second is cheap.
:class:`DirectorySource` is one of the two :class:`~eventing.sources.source.SubscriptionSource`
implementations; the other is :mod:`eventing.sources.kubernetes`, which it never imports.

Nothing in the folder may stop or blind its readers: only regular files inside the folder are
read (a FIFO would block forever, ``/dev/zero`` never end, a symlink out of the folder leak a
file), at most :data:`MAX_FILE_BYTES` of them, and YAML is composed with a bound on nesting
(deep brackets would raise RecursionError) and on what aliases expand to (an alias bomb of a
few hundred bytes grows to gigabytes). A file that breaks a rule becomes an :class:`Unreadable`
entry naming it; every other file is served as usual.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from eventing.delivery import signing
from eventing.errors import InvalidSubscription
from eventing.sources.snapshot import Entry, Parse, Snapshot, Unreadable, validated
from eventing.subscriptions.model import KIND

_SUFFIXES = (".yaml", ".yml")

MAX_FILE_BYTES = 1024 * 1024  #: a larger manifest file is refused unread
MAX_SECRET_BYTES = signing.MAX_SECRETS_TEXT  #: a larger signing secret file is refused
MAX_DEPTH = 64  #: deepest nesting of YAML collections in a document
MAX_NODES = 100_000  #: YAML nodes of one document, counting what each alias expands to


class _Refused(yaml.YAMLError):
    """A document broke a bound of :class:`_BoundedLoader` at ``mark``."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem = problem
        self.mark = mark


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a document nested deeper than :data:`MAX_DEPTH` or whose
    aliases expand it beyond :data:`MAX_NODES` nodes, while composing, before anything is built.

    The constructor shares an aliased node's object, but everything downstream that walks a
    value (validation messages, the status's echo of the spec) expands it, so the bound is on
    the expanded size. An alias to a collection still being composed (``&a [*a]``) is refused:
    it would make a value that contains itself.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0
        self._sizes: dict[str, int] = {}  #: expanded size of each anchored node, by anchor

    def compose_document(self) -> yaml.Node | None:
        self._nodes = 0
        self._sizes = {}
        return super().compose_document()

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        mark = event.start_mark
        anchor = getattr(event, "anchor", None)
        if isinstance(event, yaml.AliasEvent):
            if anchor in self.anchors and anchor not in self._sizes:
                raise _Refused(f"alias *{anchor} refers to itself", mark)
            self._count(self._sizes.get(str(anchor), 0), mark)
            return super().compose_node(parent, index)
        if self._depth >= MAX_DEPTH:
            raise _Refused(f"nested more than {MAX_DEPTH} levels deep", mark)
        before = self._nodes
        self._count(1, mark)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if anchor is not None:
            self._sizes[str(anchor)] = self._nodes - before
        return node

    def _count(self, nodes: int, mark: Any) -> None:
        self._nodes += nodes
        if self._nodes > MAX_NODES:
            raise _Refused(
                f"document of more than {MAX_NODES} nodes, counting what its aliases expand to",
                mark,
            )


def parse_documents(text: str, origin: str) -> Iterator[dict[str, Any] | Unreadable]:
    """The Subscription documents of one YAML file; a broken file or document yields an
    :class:`Unreadable` instead."""
    try:
        documents = list(yaml.load_all(text, Loader=_BoundedLoader))
    except yaml.YAMLError as exc:
        yield Unreadable(origin, f"not valid YAML: {_yaml_problem(exc)}")
        return
    for index, document in enumerate(documents):
        if document is None:
            continue
        if not isinstance(document, dict):
            yield Unreadable(
                origin, f"document {index}: expected a mapping, got {type(document).__name__}"
            )
        elif document.get("kind") == KIND:
            yield document


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong and where, without the snippet of the file PyYAML quotes (the status must
    not echo a file's content)."""
    mark: Any
    if isinstance(exc, _Refused):
        problem, mark = exc.problem, exc.mark
    elif isinstance(exc, yaml.MarkedYAMLError):
        problem = exc.problem or exc.context or type(exc).__name__
        mark = exc.problem_mark or exc.context_mark
    else:
        return type(exc).__name__
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(problem).split())[:200]


class _FileRefused(Exception):
    """A manifest file that is not read, and why."""


class DirectorySource:
    """Reads a folder of manifests into a :class:`Snapshot` (blocking; call it off a loop)."""

    def __init__(self, path: str, parse: Parse) -> None:
        self.path = Path(path)
        self._parse = parse  #: from_manifest with the settings' defaults bound
        self._fingerprint: tuple[tuple[str, int, int, int], ...] | None = None
        self._secret_files: tuple[str, ...] = ()  #: signing secrets read at the last validation
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
        unreadable: list[Unreadable] = []
        seen: set[str] = set()
        root = os.path.realpath(self.path)
        secret_files, self._secret_files = self._secret_files, ()
        for name, *_ in fingerprint:
            if name in secret_files:
                continue  # a signing secret (an absolute path), not a manifest of the folder
            try:
                text = _read_manifest(root, name)
            except FileNotFoundError:
                continue  # deleted since the scan: its subscriptions are gone
            except _FileRefused as exc:
                unreadable.append(Unreadable(name, str(exc)))
                continue
            for document in parse_documents(text, name):
                if isinstance(document, Unreadable):
                    unreadable.append(document)
                else:
                    entries.append(self._entry(document, name, seen))
        self._fingerprint = fingerprint
        self._snapshot = Snapshot(tuple(entries), tuple(unreadable))
        return self._snapshot, True

    def write_back(self, items: Sequence[dict[str, Any]], consumers_gone: bool) -> None:
        """Nothing: a folder is read-only to us, its status is served over HTTP alone."""

    def _entry(self, document: dict[str, Any], origin: str, seen: set[str]) -> Entry:
        entry = validated(self._parse, document, origin)
        if isinstance(entry, InvalidSubscription):
            return entry
        entry = replace(entry, credentials=entry.credentials.anchored(os.path.abspath(self.path)))
        secret = entry.credentials.signing
        if secret is not None and secret.file:
            self._secret_files += (secret.file,)
            problem = _signing_problem(secret.file)
            if problem is not None:
                return InvalidSubscription(
                    entry.key, [f"spec.delivery.signing.secretFile: {problem}"], origin=origin
                )
        if entry.key in seen:
            return InvalidSubscription(
                entry.key, [f"metadata.name: {entry.key} is defined more than once"], origin=origin
            )
        seen.add(entry.key)
        return entry

    def _scan(self) -> tuple[tuple[str, int, int, int], ...]:
        """What the folder holds, and the signing secrets its subscriptions named (a secret file
        that changes, appears or goes is validated again)."""
        files = []
        for path in self._secret_files:
            try:
                info = os.stat(path)
            except OSError:
                info = None
            files.append(
                (path, *((info.st_mtime_ns, info.st_size, info.st_ino) if info else (0, 0, 0)))
            )
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            return tuple(files)
        for entry in entries:
            if entry.name.endswith(_SUFFIXES) and not entry.name.startswith("."):
                try:  # the target of a symlink (a ConfigMap's update replaces it), else the link
                    info = (
                        entry.stat()
                        if os.path.exists(entry.path)
                        else entry.stat(follow_symlinks=False)
                    )
                except FileNotFoundError:
                    continue
                files.append((entry.name, info.st_mtime_ns, info.st_size, info.st_ino))
        return tuple(sorted(files))


def _signing_problem(path: str) -> str | None:
    """Why the signing secret file ``path`` cannot sign, if it cannot (never its content)."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read(MAX_SECRET_BYTES + 1)
    except (OSError, UnicodeDecodeError) as exc:
        return f"cannot be read: {getattr(exc, 'strerror', None) or type(exc).__name__}"
    if len(text) > MAX_SECRET_BYTES:
        return f"is larger than {MAX_SECRET_BYTES} bytes"
    try:
        signing.parse_secrets(text)
    except ValueError as exc:
        return str(exc)
    return None


def _read_manifest(root: str, name: str) -> str:
    """The text of manifest ``name`` in the folder whose real path is ``root``.

    Raises:
        _FileRefused: it leads out of the folder, is no regular file, is too large, or is not
            UTF-8.
        FileNotFoundError: it is gone.
    """
    real = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, real]) != root:
        raise _FileRefused("a symlink that points outside the folder; not followed")
    # Non-blocking: opening a FIFO for reading would otherwise wait for a writer. No-follow: the
    # path was resolved, so a symlink here was swapped in since.
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        descriptor = os.open(real, flags)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise _FileRefused(f"cannot be read: {exc.strerror}") from exc
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise _FileRefused("not a regular file; only regular files are read")
        data = b""
        while info.st_size <= MAX_FILE_BYTES and len(data) <= MAX_FILE_BYTES:
            chunk = os.read(descriptor, MAX_FILE_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
        if info.st_size > MAX_FILE_BYTES or len(data) > MAX_FILE_BYTES:  # or it grew meanwhile
            raise _FileRefused(f"larger than {MAX_FILE_BYTES} bytes; not read")
    finally:
        os.close(descriptor)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _FileRefused(f"not UTF-8 text (byte {exc.start})") from exc

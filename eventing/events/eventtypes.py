"""Event types to NATS subjects: Kyma's cleaning rules and our one-copy legacy scheme (pure).

Every stored event lives on a subject below ``kyma.``; subscriptions filter on the same subjects,
so the proxy and the manager must compute them with these functions and nothing else.

Two families of subjects exist (reference: kyma-eventing.md §2.2, §2.3, §2.7, §5.2):

* **standard** — ``kyma.<cleanSource>.<cleanType>`` for a CloudEvent whose type does not start
  with the legacy prefix. Whitespace, ``>``, ``*``, ``/`` and ``\\`` are removed from the type,
  and dots as well from the source.
* **prefixed** — ``kyma.<prefix>.<app>.<event>.<version>`` for types that start with the legacy
  prefix (``sap.kyma.custom`` by default) and for events sent to the legacy endpoint. The app
  keeps only letters and digits; the event name keeps letters, digits and dots and is collapsed
  to two segments (``Account.Order.Created`` → ``AccountOrder.Created``), as Kyma does.

Kyma writes every legacy event twice (once per family). We write it once, on its prefixed
subject, and a standard subscription listens on :func:`legacy_subject` of its own source and type
as well, which is how both kinds of subscribers see the one copy.
"""

from __future__ import annotations

import re

from eventing.errors import InvalidEvent
from eventing.settings import SUBJECT_PREFIX

_TYPE_UNSAFE = re.compile(r"[\s>*/\\]")
_SOURCE_UNSAFE = re.compile(r"[\s.>*/\\]")
_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]")
_NOT_ALNUM_OR_DOT = re.compile(r"[^A-Za-z0-9.]")


def clean_type(event_type: str) -> str:
    """A type as JetStream subjects carry it: whitespace, ``>``, ``*``, ``/``, ``\\`` removed."""
    return _TYPE_UNSAFE.sub("", event_type)


def clean_source(source: str) -> str:
    """A source as one subject token: whitespace, ``.``, ``>``, ``*``, ``/``, ``\\`` removed."""
    return _SOURCE_UNSAFE.sub("", source)


def clean_app(application: str) -> str:
    """An application name as Kyma's legacy path keeps it: letters and digits only."""
    return _NOT_ALNUM.sub("", application)


def is_prefixed(event_type: str, prefix: str) -> bool:
    """Whether ``event_type`` belongs to the legacy family (starts with ``<prefix>.``)."""
    return event_type.startswith(prefix + ".")


def standard_subject(source: str, event_type: str) -> str:
    """The subject of a standard event.

    Raises:
        InvalidEvent: a segment is empty after cleaning (Kyma answers 400 with the same text).
    """
    subject = f"{SUBJECT_PREFIX}.{clean_source(source)}.{clean_type(event_type)}"
    _require_segments(subject, event_type)
    return subject


def prefixed_subject(event_type: str, prefix: str) -> str:
    """The subject of a CloudEvent whose type starts with the legacy prefix.

    ``<prefix>.<app>.<businessObject…>.<operation>.<version>``: at least four segments after the
    prefix; every segment between the app and the last two is joined without dots.

    Raises:
        InvalidEvent: fewer than four segments, or an empty segment after cleaning.
    """
    segments = event_type[len(prefix) + 1 :].split(".")
    if len(segments) < 4 or not all(segments):
        raise InvalidEvent(
            f"event type {event_type!r} must be {prefix}.<app>.<event>.<operation>.<version>"
            " with no empty segment",
            attribute="type",
        )
    app, middle, operation, version = segments[0], segments[1:-2], segments[-2], segments[-1]
    rebuilt = f"{prefix}.{clean_app(app)}.{''.join(middle)}.{operation}.{version}"
    subject = f"{SUBJECT_PREFIX}.{_NOT_ALNUM_OR_DOT.sub('', rebuilt)}"
    _require_segments(subject, event_type)
    return subject


def subject_for(source: str, event_type: str, prefix: str) -> str:
    """The subject a CloudEvent published on ``/publish`` is stored under."""
    if is_prefixed(event_type, prefix):
        return prefixed_subject(event_type, prefix)
    return standard_subject(source, event_type)


def legacy_subject(application: str, event_name: str, version: str, prefix: str) -> str:
    """The subject of a legacy event ``event_name`` (without version) of ``application``.

    The same subject also serves a standard subscription of source ``application`` and type
    ``<event_name>.<version>``, which is what lets the proxy store one copy for both.

    Raises:
        InvalidEvent: a segment is empty, before or after cleaning.
    """
    if "" in event_name.split("."):
        raise InvalidEvent(f"event type {event_name!r} has an empty segment", attribute="type")
    name_segments = _NOT_ALNUM_OR_DOT.sub("", event_name).split(".")
    if len(name_segments) > 2:
        name_segments = ["".join(name_segments[:-1]), name_segments[-1]]
    event = ".".join(name_segments)
    clean_version = _NOT_ALNUM_OR_DOT.sub("", version)
    subject = f"{SUBJECT_PREFIX}.{prefix}.{clean_app(application)}.{event}.{clean_version}"
    _require_segments(subject, f"{event_name}.{version}")
    return subject


def legacy_subject_of_type(source: str, event_type: str, prefix: str) -> str | None:
    """The prefixed subject on which legacy events matching a standard subscription arrive.

    ``event_type`` is split at its last dot into event name and version. Returns ``None`` when no
    legacy event can match (no dot, or nothing left of the source or type after cleaning).
    """
    name, dot, version = event_type.rpartition(".")
    if not dot:
        return None
    try:
        return legacy_subject(source, name, version, prefix)
    except InvalidEvent:
        return None


def _require_segments(subject: str, event_type: str) -> None:
    if "" in subject.split("."):
        raise InvalidEvent(
            f"event type cannot have empty segments after cleaning: {event_type}", attribute="type"
        )

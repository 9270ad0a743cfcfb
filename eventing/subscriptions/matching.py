"""Which stored events a subscription receives: what its subjects cannot tell apart (pure).

A standard subscription listens on ``kyma.<cleaned source>.<cleaned type>`` (and on the legacy
subject of its source and type, :mod:`eventing.events.eventtypes`). Cleaning drops dots,
slashes, whitespace, ``*`` and ``>``, so sources ``myapp``, ``my.app`` and ``my/app`` share a
subject, and so do types ``order.created.v1`` and ``order.cre*ated.v1``; the legacy subject
keeps only the letters and digits of the application (``my-app`` is ``myapp``) and is also the
subject of a CloudEvent of *any* source whose type is ``sap.kyma.custom.myapp.…``. A subject
filter cannot do better, so the manager checks each pulled event with :func:`receives` before
it becomes a job.

The rule, for standard matching: the event's source as published equals the subscription's
``source``, and its type as published equals one of the subscription's types as written (no
cleaning: cleaning exists for subjects only). The type as published is the ``originaltype``
extension when the event has one (the proxy sets it on every event; Kyma's publisher proxy
rewrites ``type`` to ``kyma.<source>.<type>`` and keeps the published one there), else
``type``.

Exact matching is Kyma's subject match by definition (kyma-eventing.md §5.2: the subject is
``kyma.<type>`` verbatim, and the type an exact subscription names is the one Kyma's publisher
proxy rewrote, source cleaned in), and ``source`` plays no part in it (§3.1), so the subject
already says everything: every event on it is received.
"""

from __future__ import annotations

import json

from eventing.subscriptions.model import STANDARD, Subscription


def published(stored: str) -> tuple[str, str] | None:
    """The source and the type as published of a stored event (structured JSON), or ``None``
    when it has no string source or type (the worker dead-letters it as unreadable)."""
    try:
        document = json.loads(stored)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    source, original, event_type = (
        document.get("source"),
        document.get("originaltype"),
        document.get("type"),
    )
    as_published = original if isinstance(original, str) and original else event_type
    if not isinstance(source, str) or not isinstance(as_published, str):
        return None
    return source, as_published


def receives(subscription: Subscription, subscribed_type: str, stored: str) -> bool:
    """Whether ``subscription`` receives the stored event that its consumer of
    ``subscribed_type`` (a type as the subscription wrote it) handed out.

    An event that cannot be read is received: it is no other subscription's either, and the
    worker dead-letters it with the reason, where dropping it here would hide it.
    """
    if subscription.type_matching != STANDARD:
        return True
    event = published(stored)
    if event is None:
        return True
    source, event_type = event
    return source == subscription.source and event_type == subscribed_type

"""What every subscription source gives: a :class:`Snapshot` of entries and unreadable files.

The folder (:mod:`eventing.sources.directory`) and Kubernetes (:mod:`eventing.sources.kubernetes`)
both turn what they read into these values, through the one :func:`validated`, so the manager
reconciles and the proxy answers ``/subscribed`` the same way from either. Pure: no IO here, and
no import of either source (they import this, never each other).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from eventing.delivery import retries
from eventing.errors import InvalidSubscription
from eventing.settings import Settings
from eventing.subscriptions.model import Subscription, from_manifest, key_of

logger = logging.getLogger(__name__)

Entry = Subscription | InvalidSubscription
#: A manifest to a subscription (raising InvalidSubscription): from_manifest with the settings'
#: defaults bound, shared by every source.
Parse = Callable[[Mapping[str, Any]], Subscription]


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A manifest file that could not be read or parsed, wholly or in part (its subscriptions
    are unknown, so the consumers created from it stay)."""

    file: str
    problem: str  #: names the rule it broke and where, never echoes its content


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every subscription of the source: valid ones, invalid ones with their errors, and the
    files that could not be read."""

    entries: tuple[Entry, ...]
    unreadable: tuple[Unreadable, ...] = ()

    @property
    def valid(self) -> tuple[Subscription, ...]:
        return tuple(e for e in self.entries if isinstance(e, Subscription))

    @property
    def invalid_keys(self) -> frozenset[str]:
        """``namespace/name`` of each subscription whose spec is invalid."""
        return frozenset(e.key for e in self.entries if isinstance(e, InvalidSubscription))

    @property
    def unreadable_files(self) -> frozenset[str]:
        return frozenset(bad.file for bad in self.unreadable)


def parser_for(settings: Settings) -> Parse:
    """:func:`~eventing.subscriptions.model.from_manifest` with the settings' defaults."""
    return functools.partial(
        from_manifest,
        prefix=settings.events.type_prefix,
        defaults=retries.default_policy(settings.delivery),
        default_max_in_flight=settings.manager.default_max_in_flight,
    )


def validated(parse: Parse, document: Mapping[str, Any], origin: str = "") -> Entry:
    """``document`` as a subscription, or the reason it is none; never raises.

    A validation bug (an exception other than InvalidSubscription) costs one subscription, not
    the whole source: it is logged with its traceback and reported in that one's status.
    """
    try:
        return replace(parse(document), origin=origin)
    except InvalidSubscription as exc:
        exc.origin = origin
        return exc
    except Exception as exc:
        key = key_of(document)
        logger.exception("validating subscription %s failed unexpectedly", key)
        return InvalidSubscription(
            key, [f"cannot be validated: {type(exc).__name__}"], origin=origin
        )

"""Sinks the egress policy refuses, found at reconcile: such a subscription is not ready.

The workers check every address they connect to (:mod:`workers.egress`), which is the check
that counts; this one resolves each sink's host when the subscriptions change, so that a
refused sink shows in the subscription's status (why it is not ready) instead of in dead
letters only, and the manager pulls no events for it: they wait in the stream, as for a
subscription whose sink is down, until the sink or the policy changes (beyond ``MAX_BACKLOG``
the oldest are shed as ever). A host that does not
resolve now is not refused here (a Service may come later); its deliveries are checked when
they connect.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from eventing.delivery.egress import EgressPolicy
from eventing.subscriptions.model import Subscription

_RESOLVE_TIMEOUT = 2.0  #: seconds one host may take to resolve; slower ones are not refused here


async def refusals(subscriptions: Iterable[Subscription], policy: EgressPolicy) -> dict[str, str]:
    """Why the policy refuses each subscription's sink, by ``namespace/name``, for the sinks
    it refuses."""
    by_host: dict[str, list[Subscription]] = {}
    for subscription in subscriptions:
        host = urlsplit(subscription.sink).hostname or ""  # the model checked it has one
        by_host.setdefault(host, []).append(subscription)
    reasons = await asyncio.gather(*(_refusal(host, policy) for host in by_host))
    return {
        subscription.key: reason
        for (host, subs), reason in zip(by_host.items(), reasons, strict=True)
        if reason is not None
        for subscription in subs
    }


async def _refusal(host: str, policy: EgressPolicy) -> str | None:
    refused = policy.refusal(host)
    if refused is not None:
        return refused
    try:
        found = await asyncio.wait_for(
            asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM),
            _RESOLVE_TIMEOUT,
        )
    except (OSError, TimeoutError):
        return None
    for address in dict.fromkeys(str(info[4][0]) for info in found):
        refused = policy.refusal(host, address)
        if refused is not None:
            return refused
    return None

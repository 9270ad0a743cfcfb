"""Leader election over a ``coordination.k8s.io`` Lease, the way client-go's leaderelection works.

With ``LEADER_ELECTION=on`` a manager reconciles and pulls only while it holds the Lease
``eventing-manager``; others wait as standbys. The holder renews the Lease every
``retry_period``; a candidate takes the Lease over once it has seen it unrenewed for
``lease_duration`` (measured on its own clock, never by comparing clocks across machines). A
holder that cannot renew for ``renew_deadline`` (shorter than the duration) stops working before
anyone can take over, and exits so that it comes back as a candidate. On a clean stop the holder
releases the Lease, so a standby takes over at once instead of after the duration.

Every write is conditional on the Lease's resourceVersion: two candidates racing for the Lease
cannot both win. Blocking calls; :func:`lead` makes them from a thread.

Why not the client's own ``kubernetes.leaderelection`` (or ``kubernetes.aio.leaderelection``),
measured with client 37.0.2 against kube-apiserver 1.37 (the probe is in the commit message):

- it has no release: a stopped holder leaves the Lease to expire, so a standby waits the full
  ``lease_duration`` (15 s) where it now takes over in 1.5 s (client-go's ``ReleaseOnCancel``
  has no Python counterpart);
- ``Config`` refuses a ``retry_period`` under 1 s with ``SystemExit`` (the aio one with
  ``ValueError``), and the Lease's duration goes through ``int(str(float))``, which fails for
  15.0; our tests elect with 0.2 s periods;
- a take-over leaves ``spec.leaseTransitions`` unset (``None``), which client-go counts;
- ``try_acquire_or_renew`` raises ``urllib3.exceptions.MaxRetryError`` when the API server is
  unreachable, which ends ``LeaderElection.run``'s thread; here that only counts as "not held";
- the sync loops ``time.sleep`` with no way to stop them (a standby could not exit on SIGTERM)
  and time the Lease on the wall clock; its ``LeaseLock`` takes no API client (it uses the
  process-wide default, which a kubeconfig client does not set). The aio variant runs on the
  loop, but needs the aiohttp-based ``kubernetes.aio`` client beside the sync one the sources
  use, and logs every lost race (409) with a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

logger = logging.getLogger(__name__)

LEASE_NAME = "eventing-manager"
_HTTP_NOT_FOUND, _HTTP_CONFLICT = 404, 409


@dataclass(frozen=True, slots=True)
class Timing:
    """client-go's defaults: a holder gives up after 10 s without renewal, others wait 15 s."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


class Lease:
    """One candidate's view of the Lease ``name`` in ``namespace``."""

    def __init__(
        self,
        api: Any,
        namespace: str,
        *,
        name: str = LEASE_NAME,
        identity: str | None = None,
        timing: Timing = Timing(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name
        self.identity = identity or f"{socket.gethostname()}_{os.getpid()}"
        self.timing = timing
        self._clock = clock
        self._observed: tuple[Any, ...] | None = None  #: the last holder record seen
        self._observed_at = 0.0  #: when it last changed, on our clock
        self.holder: str | None = None  #: the holder the last read saw

    def try_acquire_or_renew(self) -> bool:
        """Take or renew the Lease; whether we hold it now. API errors count as "no"."""
        try:
            return self._try()
        except ApiException as exc:
            if exc.status != _HTTP_CONFLICT:  # a conflict is a lost race, nothing to report
                logger.warning(
                    "lease %s/%s: %s %s", self.namespace, self.name, exc.status, exc.reason
                )
        except Exception as exc:  # the API server is unreachable
            logger.warning("lease %s/%s: %s", self.namespace, self.name, exc)
        return False

    def release(self) -> None:
        """Give the Lease up if we hold it, so that a standby need not wait for it to expire."""
        with contextlib.suppress(Exception):
            lease = self._api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec.holder_identity != self.identity:
                return
            lease.spec.holder_identity = None
            lease.spec.lease_duration_seconds = 1
            lease.spec.renew_time = _now()
            self._api.replace_namespaced_lease(self.name, self.namespace, lease)
            logger.info("released lease %s/%s", self.namespace, self.name)

    def _try(self) -> bool:
        now = self._clock()
        duration = max(1, round(self.timing.lease_duration))
        try:
            lease = self._api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != _HTTP_NOT_FOUND:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=client.V1LeaseSpec(
                    holder_identity=self.identity,
                    lease_duration_seconds=duration,
                    acquire_time=_now(),
                    renew_time=_now(),
                    lease_transitions=0,
                ),
            )
            self._api.create_namespaced_lease(self.namespace, body)
            self.holder = self.identity
            return True

        spec = lease.spec
        self.holder = spec.holder_identity
        record = (spec.holder_identity, spec.renew_time, spec.lease_duration_seconds)
        if record != self._observed:
            self._observed, self._observed_at = record, now
        held_by_other = spec.holder_identity and spec.holder_identity != self.identity
        observed_duration = spec.lease_duration_seconds or duration
        if held_by_other and now < self._observed_at + observed_duration:
            return False

        if spec.holder_identity != self.identity:
            spec.acquire_time = _now()
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        spec.holder_identity = self.identity
        spec.lease_duration_seconds = duration
        spec.renew_time = _now()
        # Conditional on lease.metadata.resource_version: a concurrent writer makes this a 409.
        self._api.replace_namespaced_lease(self.name, self.namespace, lease)
        self.holder = self.identity
        return True


async def lead(lease: Lease, stop: asyncio.Event, on_change: Callable[[bool], None]) -> bool:
    """Wait until ``lease`` is ours (False if ``stop`` came first), reporting leadership
    through ``on_change``."""
    logger.info("waiting to lead: lease %s/%s as %s", lease.namespace, lease.name, lease.identity)
    while not stop.is_set():
        if await asyncio.to_thread(lease.try_acquire_or_renew):
            logger.info("leading: holding lease %s/%s", lease.namespace, lease.name)
            on_change(True)
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), lease.timing.retry_period)
    return False


async def keep(lease: Lease, stop: asyncio.Event, on_change: Callable[[bool], None]) -> bool:
    """Renew ``lease`` until ``stop``, then release it. If another candidate holds it, or no
    renewal succeeds for ``renew_deadline``, report the loss, set ``stop`` and return False."""
    renewed = time.monotonic()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), lease.timing.retry_period)
        if stop.is_set():
            break
        if await asyncio.to_thread(lease.try_acquire_or_renew):
            renewed = time.monotonic()
            continue
        taken = lease.holder not in (None, lease.identity)
        if taken or time.monotonic() - renewed >= lease.timing.renew_deadline:
            logger.error(
                "lost lease %s/%s (%s): stopping",
                lease.namespace,
                lease.name,
                f"now held by {lease.holder}" if taken else "could not renew it in time",
            )
            on_change(False)
            stop.set()
            return False
    on_change(False)
    await asyncio.to_thread(lease.release)
    return True


def _now() -> datetime:
    return datetime.now(UTC)

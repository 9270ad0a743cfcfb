"""Delivery retry policy and the schedule it produces (pure).

A policy uses Knative's DeliverySpec vocabulary: ``retry`` retries after the first attempt,
``backoffPolicy`` exponential or linear, ``backoffDelay``, a per-request ``timeout`` and
``retryAfterMax``. The delay before retry *k* (k = 1…retry) is

* exponential: ``backoffDelay * 2^(k-1)``,
* linear: ``backoffDelay * k``,

capped at ``backoff_max``, then spread by ±10 % jitter so a recovering sink is not hit by every
retry at once. A sink's ``Retry-After`` stretches a delay up to ``retryAfterMax``.

Delays up to ``in_job_wait_max`` are slept inside one delivery job (the worker keeps the
JetStream message alive meanwhile); a longer one ends the job with a delayed NAK, and the next
JetStream delivery takes over. So the attempts fall into *groups*, one per JetStream delivery
(:func:`groups`); a worker runs the rest of the group of the next attempt due, which it learns
from the count of attempts already made (kept by the workers across deliveries), or failing
that from the message's delivery count.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from eventing.settings import DeliverySettings

JITTER = 0.1


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """How often and how patiently one event is delivered to one sink."""

    retry: int  #: retries after the first attempt
    backoff_policy: str  #: "exponential" or "linear"
    backoff_delay: float  #: seconds
    backoff_max: float  #: seconds; cap of any single delay
    timeout: float  #: seconds per HTTP request
    retry_after_max: float  #: seconds; cap on a sink's Retry-After
    in_job_wait_max: float  #: seconds; longer delays hand over to a JetStream redelivery

    @property
    def attempts(self) -> int:
        return self.retry + 1

    def delay(self, retry_number: int) -> float:
        """The delay before retry ``retry_number`` (1-based), without jitter."""
        if self.backoff_policy == "linear":
            raw = self.backoff_delay * retry_number
        else:
            raw = self.backoff_delay * 2 ** (retry_number - 1)
        return min(raw, self.backoff_max)

    def jittered(self, retry_number: int, retry_after: float | None, rng: random.Random) -> float:
        """The delay to actually wait: jittered, and stretched by a sink's Retry-After."""
        delay = self.delay(retry_number) * rng.uniform(1 - JITTER, 1 + JITTER)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_after_max))
        return delay

    def to_dict(self) -> dict[str, float | int | str]:
        return {
            "retry": self.retry,
            "backoffPolicy": self.backoff_policy,
            "backoffDelay": self.backoff_delay,
            "backoffMax": self.backoff_max,
            "timeout": self.timeout,
            "retryAfterMax": self.retry_after_max,
            "inJobWaitMax": self.in_job_wait_max,
        }

    @classmethod
    def from_dict(cls, data: dict[str, float | int | str]) -> DeliveryPolicy:
        return cls(
            retry=int(data["retry"]),
            backoff_policy=str(data["backoffPolicy"]),
            backoff_delay=float(data["backoffDelay"]),
            backoff_max=float(data["backoffMax"]),
            timeout=float(data["timeout"]),
            retry_after_max=float(data["retryAfterMax"]),
            in_job_wait_max=float(data["inJobWaitMax"]),
        )


def groups(policy: DeliveryPolicy) -> list[list[int]]:
    """Attempt numbers (1-based) grouped by JetStream delivery.

    A new group starts wherever the delay before an attempt is longer than
    ``in_job_wait_max``; that delay becomes the NAK delay that ends the previous group.
    """
    result = [[1]]
    for attempt in range(2, policy.attempts + 1):
        if policy.delay(attempt - 1) > policy.in_job_wait_max:
            result.append([attempt])
        else:
            result[-1].append(attempt)
    return result


def schedule(policy: DeliveryPolicy) -> list[tuple[int, float, float, int]]:
    """Rows of (attempt, delay before it, time since the first attempt, JetStream delivery).

    Times leave out jitter and the requests' own duration; the README's tables come from here.
    """
    rows = []
    elapsed = 0.0
    for delivery, group in enumerate(groups(policy), start=1):
        for attempt in group:
            delay = policy.delay(attempt - 1) if attempt > 1 else 0.0
            elapsed += delay
            rows.append((attempt, delay, elapsed, delivery))
    return rows


def default_policy(settings: DeliverySettings) -> DeliveryPolicy:
    """The default retry policy, which a subscription's spec.delivery overrides: the fields of
    the settings group named as the policy's. Here, not in eventing.settings: the settings are
    the kernel's bottom layer and import nothing above them."""
    fields = dataclasses.fields(DeliveryPolicy)
    return DeliveryPolicy(**{field.name: getattr(settings, field.name) for field in fields})

"""What a delivery job does next: the one owner of the retry rules (pure).

A job asks :func:`next_step` when it starts and again after every failed attempt, and does what
the answer says: make one attempt after a pause (:class:`RunAttempt`), give the message back to
JetStream to be redelivered after a delay (:class:`RetryLater`), or dead-letter the event
(:class:`DeadLetter`). The inputs are the policy, how far the attempts got (:class:`Progress`),
JetStream's delivery count and the clock; nothing here sends, sleeps or reads a store, so every
rule is tested without a sink (``tests/eventing/test_steps.py``).

The rules, in order:

* a message delivered more often than the plan has groups plus ``extra_deliveries`` ends a crash
  loop as a dead letter;
* what earlier deliveries made is unknown (the attempt log did not answer): run the group of
  attempts the delivery count points at (:func:`eventing.delivery.retries.groups`);
* every attempt failed: dead letter;
* the last attempt failed in this job: the next one follows in the job after its jittered delay
  if the plan puts it in the same group and the sink's ``Retry-After`` does not ask for longer
  than a job may wait, else the message goes back to JetStream with that delay;
* the last attempt failed in an earlier delivery: the next one follows after what is left of
  its wait, in this job if that fits in ``in_job_wait_max``, else after a redelivery.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from eventing.delivery.retries import DeliveryPolicy, groups


@dataclass(frozen=True, slots=True)
class Failure:
    """How an attempt made by this delivery failed (an earlier delivery's is not kept)."""

    reason: str
    status: int | None  #: the sink's answer; None when there was none
    retry_after: float | None  #: seconds the sink asked for (Retry-After)


@dataclass(frozen=True, slots=True)
class Progress:
    """How far the attempts at one event got."""

    made: int  #: attempts made, every one failed (0: none)
    at: float  #: time.time() when the last of them failed
    failure: Failure | None = None  #: how it failed, when it failed in this delivery


NOTHING_MADE = Progress(0, 0.0)


@dataclass(frozen=True, slots=True)
class RunAttempt:
    """Make attempt ``number`` (1-based) after ``pause`` seconds, in this job."""

    number: int
    pause: float


@dataclass(frozen=True, slots=True)
class RetryLater:
    """Give the message back to JetStream, to be redelivered after ``delay`` seconds."""

    delay: float
    attempts: int
    reason: str


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: str
    status: int | None
    attempts: int


Step = RunAttempt | RetryLater | DeadLetter


def next_step(
    policy: DeliveryPolicy,
    progress: Progress | None,
    delivery_count: int,
    now: float,
    *,
    extra_deliveries: int,
    rng: random.Random,
) -> Step:
    """The next step of a job at ``now`` (``time.time()``), with ``progress`` made so far.

    ``progress`` is None when the attempt log could not say; ``delivery_count`` is JetStream's
    (1 on the first delivery).
    """
    plan = groups(policy)
    made = progress.made if progress is not None else 0
    if delivery_count > len(plan) + extra_deliveries:
        return DeadLetter(
            f"delivered {delivery_count} times by JetStream without an outcome (worker crashes"
            " or expired ack waits); giving up",
            None,
            made,
        )
    if progress is None:
        return RunAttempt(plan[min(delivery_count, len(plan)) - 1][0], 0.0)
    if made == 0:
        return RunAttempt(1, 0.0)
    failure = progress.failure
    if made >= policy.attempts:
        if failure is None:
            return DeadLetter(
                f"out of attempts: all {policy.attempts} failed before an interruption", None, made
            )
        return DeadLetter(f"out of attempts: {failure.reason}", failure.status, made)
    retry_after = failure.retry_after if failure is not None else None
    delay = policy.jittered(made, retry_after, rng)
    if failure is not None:
        asked = min(retry_after, policy.retry_after_max) if retry_after is not None else 0.0
        if policy.delay(made) > policy.in_job_wait_max or asked > policy.in_job_wait_max:
            return RetryLater(delay, made, failure.reason)
        return RunAttempt(made + 1, delay)
    pause = max(0.0, delay - (now - progress.at))
    if pause > policy.in_job_wait_max:
        return RetryLater(pause, made, f"attempt {made + 1} is not due yet")
    return RunAttempt(made + 1, pause)


def may_be_counted(attempts: int, delivery_count: int) -> bool:
    """Whether the attempt log may hold a count for an event delivered at attempt ``attempts``
    of JetStream delivery ``delivery_count``: only one that failed before has one, so an event
    delivered at its first attempt costs no request to the log."""
    return attempts > 1 or delivery_count > 1


def after_a_fault(policy: DeliveryPolicy, delivery_count: int) -> float:
    """The delay before a message comes back whose job failed by a fault of ours (not of the
    event or the sink): the policy's delay for its delivery count, so a fault that stays backs
    off like a failing sink, and the delivery limit ends it as a dead letter."""
    return policy.delay(delivery_count)

"""One delivery job: POST the event to the sink, retrying with backoff, and decide the outcome.

Pure of NATS and dramatiq: the caller passes a ``requests.Session``, a ``keepalive`` callable
that keeps the JetStream message alive, and a ``sleep``; this module returns an
:class:`Outcome` and never acks anything itself (``workers.actors`` does, in one place).

Classification (one place, :func:`classify`): 2xx delivered; 408, 429, 5xx, timeouts and
connection errors temporary (retry); anything else — other 4xx, and 3xx, since redirects are not
followed — permanent (dead letter at once).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import requests
import tenacity

from eventing import cloudevent, retries
from eventing.errors import DeliveryError, PermanentDeliveryError, TemporaryDeliveryError
from eventing.jobs import DeliveryJob

logger = logging.getLogger(__name__)

_RESPONSE_READ_LIMIT = 64 * 1024  # a sink's answer is drained this far, never more
_CONNECT_TIMEOUT_MAX = 5.0
_SLEEP_STEP = 0.25
_RNG = random.Random()  # jitter only; seeding one per job cost more than the rest of the job


@dataclass(frozen=True, slots=True)
class Delivered:
    status: int
    attempts: int


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


Outcome = Delivered | RetryLater | DeadLetter


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one HTTP attempt did, for metrics and logs."""

    status: int | None  #: None: no answer (timeout, connection error)
    seconds: float


def deliver(
    job: DeliveryJob,
    session: requests.Session,
    *,
    extra_deliveries: int,
    keepalive: Callable[[], None],
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    observe: Callable[[Attempt], None] = lambda attempt: None,
) -> Outcome:
    """Run the attempts that belong to this JetStream delivery of the event.

    Parameters:
        job: the delivery job.
        session: HTTP session (connection reuse across jobs of one thread).
        extra_deliveries: deliveries tolerated beyond the retry plan before dead-lettering.
        keepalive: restarts the message's ack wait; called at start and while waiting.
        sleep: waits between attempts (tests pass a fake).
        rng: jitter source.
        observe: told about every HTTP attempt.
    """
    policy = job.policy
    plan = retries.groups(policy)
    if job.delivery_count > len(plan) + extra_deliveries:
        return DeadLetter(
            f"delivered {job.delivery_count} times by JetStream without an outcome (worker crashes"
            " or expired ack waits); giving up",
            None,
            0,
        )
    group = plan[min(job.delivery_count, len(plan)) - 1]
    headers, body = cloudevent.to_binary_request(job.event.encode(), job.event_type)
    rng = rng or _RNG
    keepalive()
    last: DeliveryError | None = None
    made = 0

    def post() -> int:
        nonlocal made
        made += 1
        return _post(session, job, headers, body, observe)

    def wait(state: tenacity.RetryCallState) -> float:
        attempt = group[state.attempt_number - 1]
        return policy.jittered(attempt, _retry_after(state), rng)

    def too_long(state: tenacity.RetryCallState) -> bool:
        retry_after = _retry_after(state)
        return (
            retry_after is not None
            and min(retry_after, policy.retry_after_max) > policy.in_job_wait_max
        )

    def patient_sleep(seconds: float) -> None:
        _sleep_alive(seconds, sleep, keepalive, interval=max(job.ack_wait / 3, 0.1))

    retrying = tenacity.Retrying(
        stop=lambda state: state.attempt_number >= len(group) or too_long(state),
        wait=wait,
        retry=tenacity.retry_if_exception_type(TemporaryDeliveryError),
        sleep=patient_sleep,
        reraise=True,
        before_sleep=lambda state: logger.info(
            "retrying %s (seq %d) to %s: %s",
            job.subscription,
            job.stream_sequence,
            job.sink,
            state.outcome.exception() if state.outcome else "?",
        ),
    )
    try:
        status = retrying(post)
    except PermanentDeliveryError as exc:
        return DeadLetter(str(exc), exc.status, _attempts_so_far(plan, job, made))
    except TemporaryDeliveryError as exc:
        last = exc
    else:
        return Delivered(status, _attempts_so_far(plan, job, made))

    attempts = _attempts_so_far(plan, job, made)
    next_group = min(job.delivery_count, len(plan))  # index of the group after this one
    if next_group >= len(plan):
        if made >= len(group):
            return DeadLetter(f"out of attempts: {last}", last.status, attempts)
        retry_number = policy.retry  # a long Retry-After cut the last group short
    else:
        retry_number = plan[next_group][0] - 1
    delay = policy.jittered(retry_number, last.retry_after, rng)
    return RetryLater(delay, attempts, str(last))


def classify(status: int, retry_after: float | None) -> None:
    """Raise for a status that is no success; return for 2xx.

    Raises:
        TemporaryDeliveryError: 408, 429, 5xx.
        PermanentDeliveryError: anything else that is not 2xx.
    """
    if 200 <= status < 300:
        return
    if status in (408, 429) or status >= 500:
        raise TemporaryDeliveryError(
            f"sink answered {status}", status=status, retry_after=retry_after
        )
    if 300 <= status < 400:
        raise PermanentDeliveryError(
            f"sink answered {status} (redirect); redirects are not followed, point the subscription"
            " at the final URL",
            status=status,
        )
    raise PermanentDeliveryError(f"sink refused the event with {status}", status=status)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, moment - (now if now is not None else time.time()))


def _post(
    session: requests.Session,
    job: DeliveryJob,
    headers: dict[str, str],
    body: bytes,
    observe: Callable[[Attempt], None],
) -> int:
    timeout = job.policy.timeout
    started = time.perf_counter()
    try:
        response = session.post(
            job.sink,
            data=body,
            headers=headers,
            timeout=(min(timeout, _CONNECT_TIMEOUT_MAX), timeout),
            allow_redirects=False,
            stream=True,
        )
    except requests.Timeout as exc:
        observe(Attempt(None, time.perf_counter() - started))
        raise TemporaryDeliveryError(f"no answer within {timeout:g}s") from exc
    except requests.ConnectionError as exc:
        observe(Attempt(None, time.perf_counter() - started))
        raise TemporaryDeliveryError(f"cannot connect to the sink: {_short(exc)}") from exc
    except requests.RequestException as exc:
        observe(Attempt(None, time.perf_counter() - started))
        raise PermanentDeliveryError(f"cannot send to the sink: {_short(exc)}") from exc
    try:
        response.raw.read(_RESPONSE_READ_LIMIT, decode_content=False)
    except (requests.RequestException, OSError, ValueError):
        pass  # the status line is what counts; a broken body does not change it
    finally:
        response.close()
    observe(Attempt(response.status_code, time.perf_counter() - started))
    classify(response.status_code, parse_retry_after(response.headers.get("Retry-After")))
    return response.status_code


def _retry_after(state: tenacity.RetryCallState) -> float | None:
    exception = state.outcome.exception() if state.outcome else None
    return exception.retry_after if isinstance(exception, DeliveryError) else None


def _attempts_so_far(plan: list[list[int]], job: DeliveryJob, made: int) -> int:
    """Attempt number of the last attempt made, counting the groups of earlier deliveries."""
    group_index = min(job.delivery_count, len(plan)) - 1
    return plan[group_index][0] - 1 + made


def _sleep_alive(
    seconds: float, sleep: Callable[[float], None], keepalive: Callable[[], None], interval: float
) -> None:
    """Sleep ``seconds``, sending a keepalive every ``interval``.

    Sleeps in short steps: dramatiq's shutdown notice is an exception raised into this thread,
    and it only lands between steps, so a long sleep would delay a worker's exit.
    """
    remaining, since_keepalive = seconds, 0.0
    while remaining > 0:
        step = min(remaining, _SLEEP_STEP)
        sleep(step)
        remaining -= step
        since_keepalive += step
        if since_keepalive >= interval or remaining <= 0:
            keepalive()
            since_keepalive = 0.0


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "…"

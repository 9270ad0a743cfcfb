"""One delivery job: POST the event to the sink, retrying with backoff, and decide the outcome.

Pure of NATS and dramatiq: the caller passes a ``requests.Session``, a ``keepalive`` callable
that keeps the JetStream message alive, an :class:`AttemptLog` and a ``sleep``; this module
returns an :class:`Outcome` and never acks anything itself (``workers.actors`` does, in one place).

Classification (one place: :func:`classify` for answers, :func:`classify_failure` for requests
that got none): 2xx delivered; 408, 429, 5xx, timeouts and connection errors temporary (retry);
anything else — other 4xx, and 3xx, since redirects are not followed — permanent (dead letter at
once). So is an event that can never become a request (:func:`encode`): a publisher that wrote
straight into the stream, or did so before the proxy validated what it now validates, can store
CR/LF in ``traceparent`` or ``data_base64`` that is no base64. Whatever fails while building or
sending a request is one of these outcomes; nothing escapes to dramatiq, where a job that
raises would leave its message unsettled, holding a place of its subscription's in-flight window
until the ack wait ends, again at every redelivery.

Every attempt ends within the policy's timeout however the sink behaves (``workers.deadline``),
and reads at most 64 KiB of its answer. Progress survives interruptions: after each failed attempt
the job records how many were made, and a redelivery resumes from there instead of trusting
JetStream's delivery count, which a worker killed or stopping mid-job advanced too.
"""

from __future__ import annotations

import functools
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Protocol

import requests
import tenacity
import urllib3.exceptions
from requests.structures import CaseInsensitiveDict

from eventing.delivery import retries
from eventing.delivery.jobs import DeliveryJob
from eventing.errors import (
    DeliveryError,
    InvalidEvent,
    PermanentDeliveryError,
    TemporaryDeliveryError,
)
from eventing.events import cloudevent
from workers import deadline

logger = logging.getLogger(__name__)

_RESPONSE_READ_LIMIT = 64 * 1024  # a sink's answer is drained this far, never more
_CONNECT_TIMEOUT_MAX = 5.0
_SLEEP_STEP = 0.25
_RNG = random.Random()  # jitter only; seeding one per job cost more than the rest of the job
#: What a header value may hold on the wire (RFC 9110 §5.5, without obs-text): http.client
#: refuses CR and LF and cannot encode most non-ASCII text, and would send NUL or DEL as they are.
_FIELD_VALUE = re.compile(r"[\x20-\x7e\t]*")


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


class Interrupted(Exception):
    """The worker is stopping before the event had an outcome: the caller hands it back.

    Raised only where nothing is lost by stopping: before an attempt, in a wait, or after an
    attempt that failed. An attempt the sink answered 2xx always ends as :class:`Delivered`
    (dramatiq's own shutdown notice, an exception raised into the thread wherever it runs,
    landed after such answers too, and handed delivered events back for a second delivery).
    """


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one HTTP attempt did, for metrics and logs."""

    status: int | None  #: None: no answer (timeout, connection error)
    seconds: float


@dataclass(frozen=True, slots=True)
class Progress:
    """How far the attempts at one event got in earlier deliveries of its message."""

    made: int  #: attempts made, every one failed (0: none)
    at: float  #: time.time() when the last of them failed


NOTHING_MADE = Progress(0, 0.0)


class AttemptLog(Protocol):
    """Where jobs keep their :class:`Progress` across deliveries of a message.

    Implementations never raise and never keep a job waiting long: a log that cannot answer
    costs the event its exact attempt count, never its delivery.
    """

    def progress(self, job: DeliveryJob) -> Progress | None:
        """What earlier deliveries made (:data:`NOTHING_MADE` if nothing); None if unknown."""
        ...

    def record(self, job: DeliveryJob, progress: Progress) -> None: ...


def deliver(
    job: DeliveryJob,
    session: requests.Session,
    *,
    extra_deliveries: int,
    keepalive: Callable[[], None],
    log: AttemptLog,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    observe: Callable[[Attempt], None] = lambda attempt: None,
    stopping: Callable[[], bool] = lambda: False,
) -> Outcome:
    """Run the attempts that belong to this JetStream delivery of the event.

    A first delivery starts the plan (:func:`eventing.delivery.retries.groups`) and does not consult
    ``log``, so a sink that takes the event at once costs no request to it. A redelivery resumes
    after the attempts ``log`` recorded: the rest of their group, after what remains of the
    wait; if ``log`` cannot say, it runs the group its delivery count points at.

    Parameters:
        job: the delivery job.
        session: HTTP session (connection reuse across jobs of one thread); one from
            :func:`workers.deadline.session` holds every attempt to the policy's timeout.
        extra_deliveries: deliveries tolerated beyond the retry plan before dead-lettering.
        keepalive: restarts the message's ack wait; called at start and while waiting.
        log: where failed attempts are counted, and read back on a redelivery.
        sleep: waits between attempts (tests pass a fake).
        rng: jitter source.
        observe: told about every HTTP attempt.
        stopping: whether the worker is stopping; then no attempt starts, no wait goes on, and
            an attempt that fails is not counted (the shutdown may have cut it off).

    Raises:
        Interrupted: the worker is stopping and the event has no outcome yet.
    """
    policy = job.policy
    plan = retries.groups(policy)
    rng = rng or _RNG
    progress = log.progress(job) if job.delivery_count > 1 else NOTHING_MADE
    if job.delivery_count > len(plan) + extra_deliveries:
        return DeadLetter(
            f"delivered {job.delivery_count} times by JetStream without an outcome (worker crashes"
            " or expired ack waits); giving up",
            None,
            progress.made if progress is not None else 0,
        )
    try:
        headers, body = encode(job)
    except PermanentDeliveryError as exc:
        return DeadLetter(str(exc), None, progress.made if progress is not None else 0)
    start = _start(job, plan, progress, rng)
    if not isinstance(start, tuple):
        return start
    todo, pause = start
    keepalive()
    made = 0

    def post() -> int:
        nonlocal made
        if stopping():
            raise Interrupted
        number = todo[made]
        made += 1
        try:
            return _post(session, job, headers, body, observe)
        except TemporaryDeliveryError:
            if stopping():
                raise Interrupted from None
            log.record(job, Progress(number, time.time()))
            raise

    def wait(state: tenacity.RetryCallState) -> float:
        return policy.jittered(todo[state.attempt_number - 1], _retry_after(state), rng)

    def too_long(state: tenacity.RetryCallState) -> bool:
        retry_after = _retry_after(state)
        return (
            retry_after is not None
            and min(retry_after, policy.retry_after_max) > policy.in_job_wait_max
        )

    def patient_sleep(seconds: float) -> None:
        _sleep_alive(seconds, sleep, keepalive, max(job.ack_wait / 3, 0.1), stopping)

    retrying = tenacity.Retrying(
        stop=lambda state: state.attempt_number >= len(todo) or too_long(state),
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
    if pause:
        patient_sleep(pause)
    try:
        status = retrying(post)
    except PermanentDeliveryError as exc:
        return DeadLetter(str(exc), exc.status, todo[made - 1])
    except TemporaryDeliveryError as exc:
        last = exc
    else:
        return Delivered(status, todo[made - 1])

    attempt = todo[made - 1]
    if attempt >= policy.attempts:
        return DeadLetter(f"out of attempts: {last}", last.status, attempt)
    delay = policy.jittered(attempt, last.retry_after, rng)
    return RetryLater(delay, attempt, str(last))


def _start(
    job: DeliveryJob, plan: list[list[int]], progress: Progress | None, rng: random.Random
) -> tuple[list[int], float] | Outcome:
    """The attempt numbers this delivery makes and the wait before the first, or an outcome.

    With ``progress`` known: the rest of the group of the next attempt, after what is left of
    the wait before it (an interruption may have cut that wait short; a wait longer than the
    policy lets a job sleep goes back to JetStream). Unknown: the group the delivery count
    points at, or the last one again.
    """
    policy = job.policy
    if progress is None:
        return plan[min(job.delivery_count, len(plan)) - 1], 0.0
    first = progress.made + 1
    if first > policy.attempts:
        return DeadLetter(
            f"out of attempts: all {policy.attempts} failed before an interruption",
            None,
            progress.made,
        )
    group = next(group for group in plan if first in group)
    pause = 0.0
    if progress.made:
        waited = time.time() - progress.at
        pause = max(0.0, policy.jittered(progress.made, None, rng) - waited)
    if pause > policy.in_job_wait_max:
        return RetryLater(pause, progress.made, f"attempt {first} is not due yet")
    return group[group.index(first) :], pause


def encode(job: DeliveryJob) -> tuple[dict[str, str], bytes]:
    """The headers and body that deliver ``job``'s event in binary mode.

    Raises:
        PermanentDeliveryError: the event as stored can never be sent (it is no UTF-8, no event
            we can read back, or it would put in a header what no header may carry).
    """
    unable = "the stored event cannot be sent as an HTTP request"
    try:
        stored = job.event.encode()
    except UnicodeEncodeError as exc:  # the manager keeps bytes that are no UTF-8 as surrogates
        raise PermanentDeliveryError(f"{unable}: it is not UTF-8 (byte {exc.start})") from None
    try:
        headers, body = cloudevent.to_binary_request(stored, job.event_type)
    except Exception as exc:  # whatever reading back an event nobody validated raises
        raise PermanentDeliveryError(f"{unable}: {_unreadable(stored, exc)}") from exc
    for name, value in headers.items():
        if not _FIELD_VALUE.fullmatch(value):
            raise PermanentDeliveryError(
                f"{unable}: its {name} header would be {_short(ascii(value))}; a header value is"
                " visible ASCII, spaces and tabs (RFC 9110)"
            )
    return headers, body


def _unreadable(stored: bytes, exc: Exception) -> str:
    """Why ``stored`` could not be read back: the proxy's own validation names the attribute
    and what was expected, where a bare ``ValueError`` or ``KeyError`` does not; that error
    itself when the validation finds nothing wrong."""
    try:
        cloudevent.parse_structured(stored)
    except InvalidEvent as invalid:
        return _short(invalid)
    return f"{type(exc).__name__}: {_short(exc)}"


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
    with deadline.within(timeout) as limit:
        try:
            response = session.get_adapter(job.sink).send(
                _request(job.sink, headers, body),
                stream=True,
                timeout=(min(timeout, _CONNECT_TIMEOUT_MAX), timeout),
            )
        except Exception as exc:  # every failure to send is an outcome: classify_failure
            observe(Attempt(None, time.perf_counter() - started))
            raise classify_failure(exc, timeout, cut_off=limit.expired) from exc
        # http.client takes a connection cut off amid the headers for their end, so a response
        # that arrives past the deadline may be a fragment: it counts as no answer.
        complete = not limit.expired
        try:
            if complete:
                response.raw.read(_RESPONSE_READ_LIMIT, decode_content=False)
        except (urllib3.exceptions.HTTPError, OSError, ValueError):
            pass  # the status line is what counts; a broken or endless body does not change it
        finally:
            response.close()
    if not complete:
        observe(Attempt(None, time.perf_counter() - started))
        raise TemporaryDeliveryError(f"no complete answer within {timeout:g}s")
    observe(Attempt(response.status_code, time.perf_counter() - started))
    classify(response.status_code, parse_retry_after(response.headers.get("Retry-After")))
    return response.status_code


def _request(sink: str, headers: dict[str, str], body: bytes) -> requests.PreparedRequest:
    """The POST of one attempt, prepared without ``Session.request``.

    requests prepares every request anew: it parses the URL and merges the session's settings
    through isinstance checks against typing protocols, which are slow on Python 3.11; that
    was a fifth of a worker's CPU per event. The URL of a sink is prepared once, headers and
    body are ours. The session's adapter sends it: no cookies are kept or sent (one sink's
    cookies must not reach the next) and redirects are not followed anyway.
    """
    request = requests.PreparedRequest()
    request.method = "POST"
    request.url = _prepared_url(sink)
    request.headers = CaseInsensitiveDict(headers)
    request.headers["Content-Length"] = str(len(body))
    request.body = body
    return request


@functools.lru_cache(maxsize=4096)
def _prepared_url(sink: str) -> str:
    request = requests.PreparedRequest()
    request.prepare_url(sink, None)
    return str(request.url)  # prepare_url sets it or raises


def classify_failure(exc: Exception, timeout: float, *, cut_off: bool) -> DeliveryError:
    """The delivery error for a request that got no response (``cut_off``: by its deadline).

    Timeouts and connection errors are temporary. So is any other error that is not requests'
    (a fault on the way, say a socket error it did not wrap): the plan's attempts bound it.
    What cannot be sent as asked is permanent: requests' other errors (a sink URL it cannot
    parse or has no adapter for) and the ``ValueError`` http.client and urllib3 raise for a
    request they cannot encode (a host name too long for DNS, a header value they refuse).
    """
    if cut_off or isinstance(exc, requests.Timeout):
        return TemporaryDeliveryError(f"no complete answer within {timeout:g}s")
    if isinstance(exc, requests.ConnectionError):
        return TemporaryDeliveryError(f"cannot connect to the sink: {_short(exc)}")
    if isinstance(exc, requests.RequestException | ValueError | TypeError):
        return PermanentDeliveryError(f"cannot send to the sink: {_short(exc)}")
    return TemporaryDeliveryError(f"sending failed: {type(exc).__name__}: {_short(exc)}")


def _retry_after(state: tenacity.RetryCallState) -> float | None:
    exception = state.outcome.exception() if state.outcome else None
    return exception.retry_after if isinstance(exception, DeliveryError) else None


def _sleep_alive(
    seconds: float,
    sleep: Callable[[float], None],
    keepalive: Callable[[], None],
    interval: float,
    stopping: Callable[[], bool],
) -> None:
    """Sleep ``seconds``, sending a keepalive every ``interval``.

    Sleeps in short steps and looks at ``stopping`` between them, so a long wait does not delay
    a worker's exit.

    Raises:
        Interrupted: the worker is stopping.
    """
    remaining, since_keepalive = seconds, 0.0
    while remaining > 0:
        if stopping():
            raise Interrupted
        step = min(remaining, _SLEEP_STEP)
        sleep(step)
        remaining -= step
        since_keepalive += step
        if since_keepalive >= interval or remaining <= 0:
            keepalive()
            since_keepalive = 0.0


def _short(what: object) -> str:
    text = str(what)
    return text if len(text) <= 200 else text[:200] + "…"

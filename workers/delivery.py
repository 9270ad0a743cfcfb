"""One HTTP attempt at delivering an event: encode it, POST it, classify what came back.

Nothing here retries, waits or decides what comes next (:mod:`workers.attempts` runs the steps
:func:`eventing.delivery.steps.next_step` gives); this module turns a stored event into a
request (:func:`encode`), sends it (:func:`post`) and says what the answer means.

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
and reads at most 64 KiB of its answer.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import requests
import urllib3.exceptions
from requests.structures import CaseInsensitiveDict

from eventing.delivery.jobs import DeliveryJob
from eventing.delivery.ledger import ANSWER_LIMIT
from eventing.errors import (
    DeliveryError,
    InvalidEvent,
    PermanentDeliveryError,
    SinkRefused,
    TemporaryDeliveryError,
)
from eventing.events import cloudevent
from eventing.redaction import mask_text
from workers import deadline, secrets

logger = logging.getLogger(__name__)

_RESPONSE_READ_LIMIT = 64 * 1024  # a sink's answer is drained this far, never more
_CONNECT_TIMEOUT_MAX = 5.0
#: What a header value may hold on the wire (RFC 9110 §5.5, without obs-text): http.client
#: refuses CR and LF and cannot encode most non-ASCII text, and would send NUL or DEL as they are.
_FIELD_VALUE = re.compile(r"[\x20-\x7e\t]*")


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one HTTP attempt did, for metrics, logs and the ledger."""

    status: int | None  #: None: no answer (timeout, connection error)
    seconds: float
    kind: str = "answered"  #: one of :data:`eventing.delivery.ledger.KINDS`
    error: str = ""  #: why it failed, if it did (credentials masked)
    answer: bytes = b""  #: the first :data:`~eventing.delivery.ledger.ANSWER_LIMIT` bytes
    started: float = 0.0  #: Unix seconds


@dataclass(frozen=True, slots=True)
class Encoded:
    """The request that delivers an event, and the event's identity (for logs and the ledger):
    the one parse of the stored event a job makes."""

    headers: dict[str, str]
    body: bytes
    source: str
    id: str
    type: str  #: as published (``originaltype`` if the proxy kept one)


def encode(job: DeliveryJob) -> Encoded:
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
        event = cloudevent.from_stored(stored)
        headers, body = cloudevent.binary_request(event, job.event_type)
        published = event.get_extension("originaltype") or event.get_type()
        source, event_id = event.get_source(), event.get_id()
    except Exception as exc:  # whatever reading back an event nobody validated raises
        raise PermanentDeliveryError(f"{unable}: {_unreadable(stored, exc)}") from exc
    for name, value in headers.items():
        if not _FIELD_VALUE.fullmatch(value):
            raise PermanentDeliveryError(
                f"{unable}: its {name} header would be {_short(ascii(value))}; a header value is"
                " visible ASCII, spaces and tabs (RFC 9110)"
            )
    return Encoded(headers, body, source, event_id, str(published))


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


def post(
    session: requests.Session,
    job: DeliveryJob,
    headers: dict[str, str],
    body: bytes,
    observe: Callable[[Attempt], None],
    outbound: secrets.Outbound = secrets.NOTHING,
) -> int:
    """Make one attempt: POST ``body`` with ``headers`` to the sink; the status if 2xx.

    ``outbound`` adds this attempt's signature and credentials, and the CA and client
    certificate of an https sink.

    Raises:
        TemporaryDeliveryError: no answer, or one worth retrying (:func:`classify`).
        PermanentDeliveryError: an answer or failure that retrying cannot change.
    """
    timeout = job.policy.timeout
    started, began = time.perf_counter(), time.time()
    with deadline.within(timeout) as limit:
        try:
            response = session.get_adapter(job.sink).send(
                _request(job.sink, headers | outbound.headers, body),
                stream=True,
                timeout=(min(timeout, _CONNECT_TIMEOUT_MAX), timeout),
                verify=outbound.verify,
                cert=outbound.cert,
            )
        except Exception as exc:  # every failure to send is an outcome: classify_failure
            error = classify_failure(exc, timeout, cut_off=limit.expired)
            kind = failure_kind(exc, cut_off=limit.expired)
            observe(Attempt(None, time.perf_counter() - started, kind, str(error), b"", began))
            raise error from exc
        # http.client takes a connection cut off amid the headers for their end, so a response
        # that arrives past the deadline may be a fragment: it counts as no answer.
        complete, answer = not limit.expired, b""
        try:
            if complete:
                answer = response.raw.read(_RESPONSE_READ_LIMIT, decode_content=False) or b""
        except (urllib3.exceptions.HTTPError, OSError, ValueError):
            pass  # the status line is what counts; a broken or endless body does not change it
        finally:
            response.close()
    seconds = time.perf_counter() - started
    if not complete:
        error = TemporaryDeliveryError(f"no complete answer within {timeout:g}s")
        observe(Attempt(None, seconds, "timeout", str(error), b"", began))
        raise error
    status = response.status_code
    try:
        classify(status, parse_retry_after(response.headers.get("Retry-After")))
    except DeliveryError as exc:
        observe(Attempt(status, seconds, "answered", str(exc), answer[:ANSWER_LIMIT], began))
        raise
    observe(Attempt(status, seconds, "answered", "", answer[:ANSWER_LIMIT], began))
    return status


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
    if isinstance(exc, DeliveryError):  # decided before sending (workers.egress: SinkRefused)
        return exc
    if cut_off or isinstance(exc, requests.Timeout):
        return TemporaryDeliveryError(f"no complete answer within {timeout:g}s")
    if isinstance(exc, requests.ConnectionError):
        return TemporaryDeliveryError(f"cannot connect to the sink: {_short(exc)}")
    if isinstance(exc, requests.RequestException | ValueError | TypeError):
        return PermanentDeliveryError(f"cannot send to the sink: {_short(exc)}")
    return TemporaryDeliveryError(f"sending failed: {type(exc).__name__}: {_short(exc)}")


def failure_kind(exc: Exception, *, cut_off: bool) -> str:
    """Which of :data:`eventing.delivery.ledger.KINDS` a request that got no response is."""
    if isinstance(exc, SinkRefused):
        return "refused-by-policy"
    if cut_off or isinstance(exc, requests.Timeout):
        return "timeout"
    if isinstance(exc, requests.exceptions.SSLError):
        return "tls"
    if isinstance(exc, requests.ConnectionError):
        cause: BaseException | None = exc
        for _ in range(8):  # requests wraps urllib3's error, which wraps the socket's
            if cause is None:
                break
            if isinstance(cause, ConnectionRefusedError):
                return "connection-refused"
            cause = cause.__cause__ or cause.__context__ or _reason(cause)
        return "connection-error"
    if isinstance(exc, DeliveryError | requests.RequestException | ValueError | TypeError):
        return "unsendable"
    return "error"


def _reason(exc: BaseException) -> BaseException | None:
    """The error urllib3 wraps (``MaxRetryError.reason``, ``NewConnectionError``'s args)."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException):
        return reason
    wrapped = [arg for arg in getattr(exc, "args", ()) if isinstance(arg, BaseException)]
    return wrapped[0] if wrapped else None


def _short(what: object) -> str:
    """An error's text for logs and dead letters: shortened, and without the sink's secrets
    (requests and urllib3 quote the URL)."""
    text = mask_text(str(what))
    return text if len(text) <= 200 else text[:200] + "…"

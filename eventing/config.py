"""Settings: the environment, read once, validated as a whole, frozen.

Only entry points call :meth:`Settings.from_environ`; everything else receives the settings it
needs. Every variable is declared once in :data:`VARIABLES` with its default and meaning, so the
README table is generated from the same source (``python -m eventing.config``) and a bad
environment is reported in one message that names every bad variable.

Names follow Kyma's where Kyma has one (``NATS_URL``, ``EVENT_TYPE_PREFIX``, ``JS_STREAM_*``,
``INGRESS_PORT``, ``REQUEST_TIMEOUT``, ``MAX_REQUEST_SIZE``), so existing deployments map over.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from eventing.errors import ConfigError
from eventing.retries import DeliveryPolicy

T = TypeVar("T")

#: Subjects of every event start with this token; fixed, as in Kyma's publisher proxy.
SUBJECT_PREFIX = "kyma"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*(Ki|Mi|Gi|Ti|K|M|G|T)?\s*$")
_SIZE_FACTORS = {
    None: 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}
_STREAM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_PREFIX = re.compile(r"^[A-Za-z0-9]+(\.[A-Za-z0-9]+)*$")


def _duration(raw: str) -> float:
    match = _DURATION.match(raw)
    if not match:
        raise ValueError(
            "expected a duration such as 500ms, 5s, 2m or 1h (bare numbers are seconds)"
        )
    number, unit = float(match[1]), match[2] or "s"
    return number * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def _size(raw: str) -> int:
    if raw.strip() == "-1":
        return -1
    match = _SIZE.match(raw)
    if not match:
        raise ValueError("expected a byte size such as 65536, 64Ki, 700Mi or 1Gi (-1: no limit)")
    return int(match[1]) * _SIZE_FACTORS[match[2]]


def _int(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError("expected a whole number") from None
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            raise ValueError(f"expected a whole number of at least {minimum}{upper}")
        return value

    return parse


def _positive_duration(raw: str) -> float:
    value = _duration(raw)
    if value <= 0:
        raise ValueError("expected a duration above zero")
    return value


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value

    return parse


def _urls(raw: str) -> tuple[str, ...]:
    urls = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not urls or not all(re.match(r"^(nats|tls|ws|wss)://[^\s/]+$", url) for url in urls):
        raise ValueError("expected nats://host:port, several separated by commas")
    return urls


def _names(raw: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not all(re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", name) for name in names):
        raise ValueError("expected namespace names (DNS-1123 labels), separated by commas")
    return names


def _stream_name(raw: str) -> str:
    if not _STREAM_NAME.match(raw):
        raise ValueError("expected 1 to 32 letters, digits, '-' or '_'")
    return raw


def _event_type_prefix(raw: str) -> str:
    if not _PREFIX.match(raw):
        raise ValueError(
            "expected dot-separated segments of letters and digits, e.g. sap.kyma.custom"
        )
    if raw == SUBJECT_PREFIX or raw.startswith(SUBJECT_PREFIX + "."):
        # Kyma's pitfall: standard events get subjects kyma.<source>.<type>, which would then look
        # prefixed and be routed twice; refuse the value instead of silently misrouting.
        raise ValueError(f"must not be {SUBJECT_PREFIX!r} or start with '{SUBJECT_PREFIX}.'")
    return raw


def _host(raw: str) -> str:
    if not raw.strip() or any(c.isspace() for c in raw.strip()):
        raise ValueError("expected a host name or IP address")
    return raw.strip()


def _broker_url(raw: str) -> str:
    if not re.match(r"^(redis|rediss|amqp|amqps)://\S+$", raw.strip()):
        raise ValueError("expected redis://host:port/db or amqp://user:password@host:port/vhost")
    return raw.strip()


def _path(raw: str) -> str:
    if not raw.strip():
        raise ValueError("expected a folder path")
    return raw.strip()


def _log_level(raw: str) -> str:
    value = raw.strip().upper()
    if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("expected one of debug, info, warning, error")
    return value


_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/\s]*)(?P<secret>:[^@/\s]*)?@"
)


def without_credentials(text: str) -> str:
    """``text`` with the password (or token) of every URL in it masked, for logs and errors:
    ``nats://app:secret@host`` → ``nats://app:***@host``, ``nats://token@host`` → ``nats://***@host``.
    """

    def mask(match: re.Match[str]) -> str:
        if match["secret"] is not None:
            return f"{match['scheme']}{match['user']}:***@"
        return f"{match['scheme']}***@"

    return _USERINFO.sub(mask, text)


@dataclass(frozen=True, slots=True)
class Variable(Generic[T]):
    """One environment variable: its name, default, parser and meaning (for the README)."""

    name: str
    default: str
    parse: Callable[[str], T]
    help: str


NATS_URL = Variable(
    "NATS_URL", "nats://127.0.0.1:4222", _urls, "NATS server URL(s), comma-separated."
)
NATS_CONNECT_TIMEOUT = Variable(
    "NATS_CONNECT_TIMEOUT", "2s", _positive_duration, "Timeout of one connection attempt to NATS."
)
RECONNECT_WAIT = Variable(
    "RECONNECT_WAIT",
    "1s",
    _positive_duration,
    "Pause between reconnection attempts; processes retry forever instead of exiting.",
)
JS_STREAM_NAME = Variable(
    "JS_STREAM_NAME",
    "sap",
    _stream_name,
    "JetStream stream holding every event (Kyma's default install uses `sap`).",
)
JS_STREAM_STORAGE_TYPE = Variable(
    "JS_STREAM_STORAGE_TYPE",
    "file",
    _choice("file", "memory"),
    "Stream storage: `file` survives restarts.",
)
JS_STREAM_REPLICAS = Variable(
    "JS_STREAM_REPLICAS", "1", _int(1, 5), "Stream replicas; use 3 on a 3-node NATS cluster."
)
JS_STREAM_RETENTION_POLICY = Variable(
    "JS_STREAM_RETENTION_POLICY",
    "interest",
    _choice("interest", "limits"),
    "`interest` keeps an event until every consumer that wants it has acknowledged it.",
)
JS_STREAM_DISCARD_POLICY = Variable(
    "JS_STREAM_DISCARD_POLICY",
    "new",
    _choice("new", "old"),
    "What a full stream does: `new` refuses publishes (HTTP 507), `old` drops the oldest events.",
)
JS_STREAM_MAX_BYTES = Variable(
    "JS_STREAM_MAX_BYTES", "1Gi", _size, "Stream size limit (e.g. 700Mi, 1Gi; -1: none)."
)
JS_STREAM_MAX_MSGS = Variable(
    "JS_STREAM_MAX_MSGS", "-1", _int(-1), "Stream message-count limit (-1: none)."
)
JS_STREAM_MAX_MSGS_PER_TOPIC = Variable(
    "JS_STREAM_MAX_MSGS_PER_TOPIC",
    "1000000",
    _int(-1),
    "Limit of stored events per subject (-1: none).",
)
JS_STREAM_MAX_AGE = Variable(
    "JS_STREAM_MAX_AGE", "0", _duration, "Drop events older than this (0: keep until delivered)."
)
JS_STREAM_DUPLICATE_WINDOW = Variable(
    "JS_STREAM_DUPLICATE_WINDOW",
    "2m",
    _positive_duration,
    "A publish repeating the source and id of an event stored this recently is stored once.",
)
EVENT_TYPE_PREFIX = Variable(
    "EVENT_TYPE_PREFIX",
    "sap.kyma.custom",
    _event_type_prefix,
    "Prefix of legacy event types (`<prefix>.<app>.<event>.<version>`).",
)
INGRESS_HOST = Variable(
    "INGRESS_HOST", "127.0.0.1", _host, "Address the proxy listens on (0.0.0.0 in a container)."
)
INGRESS_PORT = Variable("INGRESS_PORT", "8080", _int(1, 65535), "Port the proxy listens on.")
REQUEST_TIMEOUT = Variable(
    "REQUEST_TIMEOUT",
    "5s",
    _positive_duration,
    "How long a publish waits for JetStream's acknowledgement.",
)
MAX_REQUEST_SIZE = Variable(
    "MAX_REQUEST_SIZE",
    "65536",
    _size,
    "Largest request body the proxy reads (bytes); larger gets 413.",
)
PROXY_WORKERS = Variable(
    "PROXY_WORKERS", "2", _int(1, 64), "Proxy worker processes (granian workers)."
)
PROXY_THREADS = Variable(
    "PROXY_THREADS", "32", _int(1, 1024), "Request threads per proxy worker process."
)
PROXY_MAX_IN_FLIGHT = Variable(
    "PROXY_MAX_IN_FLIGHT",
    "1000",
    _int(1),
    "Events one proxy process may have waiting for JetStream; more get 503 with Retry-After.",
)
PROXY_BODY_TIMEOUT = Variable(
    "PROXY_BODY_TIMEOUT",
    "10s",
    _positive_duration,
    "Longest a request body may take to arrive after its headers; later gets 408.",
)
PROXY_BODY_MIN_RATE = Variable(
    "PROXY_BODY_MIN_RATE",
    "1024",
    _int(1),
    "Bytes/s a request body must arrive at on average after its first 2 s; slower gets 408.",
)
PROXY_METRICS_MAX_EVENT_TYPES = Variable(
    "PROXY_METRICS_MAX_EVENT_TYPES",
    "1000",
    _int(1),
    "Distinct event type and source pairs a proxy process labels its metrics with; later ones"
    " are counted as `other`.",
)
PROXY_RETRY_AFTER = Variable(
    "PROXY_RETRY_AFTER", "1", _int(1, 3600), "Seconds in the Retry-After header of a 503."
)
JS_DLQ_STREAM_NAME = Variable(
    "JS_DLQ_STREAM_NAME",
    "sap-dlq",
    _stream_name,
    "Stream of dead letters: events out of attempts or refused for good, with the reason.",
)
JS_DLQ_MAX_AGE = Variable(
    "JS_DLQ_MAX_AGE", "168h", _positive_duration, "How long dead letters are kept."
)
SUBSCRIPTIONS_DIR = Variable(
    "SUBSCRIPTIONS_DIR",
    "./subscriptions",
    _path,
    "Folder of Subscription manifests (YAML, several documents per file).",
)
SUBSCRIPTIONS_SOURCE = Variable(
    "SUBSCRIPTIONS_SOURCE",
    "directory",
    _choice("directory", "kubernetes"),
    "Where Subscriptions come from: manifests in SUBSCRIPTIONS_DIR, or Kubernetes custom"
    " resources.",
)
KUBECONFIG = Variable(
    "KUBECONFIG",
    "",
    str,
    "Kubeconfig file of the kubernetes source (empty: the pod's service account, else"
    " ~/.kube/config).",
)
KUBE_NAMESPACES = Variable(
    "KUBE_NAMESPACES",
    "",
    _names,
    "Namespaces whose Subscriptions are served, comma-separated (empty: all).",
)
KUBE_SINK_RULE = Variable(
    "KUBE_SINK_RULE",
    "on",
    _choice("on", "off"),
    "Kyma's sink rule in the kubernetes source: a sink must be <service>.<subscription's"
    " namespace>.svc.cluster.local and the Service must exist.",
)
LEADER_ELECTION = Variable(
    "LEADER_ELECTION",
    "off",
    _choice("on", "off"),
    "With several manager replicas on Kubernetes, only the holder of a Lease works (on).",
)
LEADER_ELECTION_NAMESPACE = Variable(
    "LEADER_ELECTION_NAMESPACE",
    "eventing",
    str,
    "Namespace of the manager's Lease (eventing-manager).",
)
MANAGER_HOST = Variable(
    "MANAGER_HOST", "127.0.0.1", _host, "Address of the manager's status and metrics endpoint."
)
MANAGER_PORT = Variable(
    "MANAGER_PORT", "8081", _int(1, 65535), "Port of the manager's status and metrics endpoint."
)
DEFAULT_MAX_IN_FLIGHT_MESSAGES = Variable(
    "DEFAULT_MAX_IN_FLIGHT_MESSAGES",
    "10",
    _int(1, 10_000),
    "maxInFlightMessages of a subscription that sets none: concurrent deliveries to its sink.",
)
MAX_BACKLOG = Variable(
    "MAX_BACKLOG",
    "100000",
    _int(1),
    "Events one subscription may have waiting; beyond it the oldest go to the dead-letter stream,"
    " so a dead sink never fills the shared stream.",
)
BROKER_URL = Variable(
    "BROKER_URL",
    "redis://127.0.0.1:6379/0",
    _broker_url,
    "dramatiq broker: Redis, or RabbitMQ (amqp://).",
)
DELIVERY_RETRY = Variable(
    "DELIVERY_RETRY", "5", _int(0, 100), "Retries after the first attempt (spec.delivery.retry)."
)
DELIVERY_BACKOFF_POLICY = Variable(
    "DELIVERY_BACKOFF_POLICY",
    "exponential",
    _choice("exponential", "linear"),
    "Growth of the delay between retries (spec.delivery.backoffPolicy).",
)
DELIVERY_BACKOFF_DELAY = Variable(
    "DELIVERY_BACKOFF_DELAY",
    "1s",
    _duration,
    "Base delay between retries (spec.delivery.backoffDelay).",
)
DELIVERY_BACKOFF_MAX = Variable(
    "DELIVERY_BACKOFF_MAX", "5m", _positive_duration, "Cap of any single delay between retries."
)
DELIVERY_TIMEOUT = Variable(
    "DELIVERY_TIMEOUT",
    "10s",
    _positive_duration,
    "Timeout of one request to a sink (spec.delivery.timeout).",
)
DELIVERY_RETRY_AFTER_MAX = Variable(
    "DELIVERY_RETRY_AFTER_MAX",
    "5m",
    _duration,
    "Longest Retry-After of a sink that is honoured (spec.delivery.retryAfterMax).",
)
DELIVERY_IN_JOB_WAIT_MAX = Variable(
    "DELIVERY_IN_JOB_WAIT_MAX",
    "15s",
    _duration,
    "Delays up to this are waited inside a delivery job; longer ones free the worker and come back"
    " as a delayed JetStream redelivery.",
)
DELIVERY_ACK_WAIT = Variable(
    "DELIVERY_ACK_WAIT",
    "30s",
    _positive_duration,
    "Least JetStream ack wait of a consumer; raised per subscription to cover its timeout.",
)
DELIVERY_EXTRA_DELIVERIES = Variable(
    "DELIVERY_EXTRA_DELIVERIES",
    "5",
    _int(0, 1000),
    "Redeliveries tolerated beyond the retry plan (worker crashes, expired ack waits) before an"
    " event is dead-lettered.",
)
WORKER_PROCESSES = Variable(
    "WORKER_PROCESSES", "2", _int(1, 256), "Worker processes of one eventing-worker."
)
WORKER_THREADS = Variable(
    "WORKER_THREADS",
    "16",
    _int(1, 1024),
    "Delivery threads per worker process (concurrent requests).",
)
WORKER_QUEUE_POLL_MAX = Variable(
    "WORKER_QUEUE_POLL_MAX",
    "20ms",
    _positive_duration,
    "Longest pause between polls of an empty RabbitMQ queue, and how soon a stopping worker's"
    " loops see the end. An idle Redis worker does not poll: each enqueue wakes it, and it"
    " fetches once a second in case a wake-up is lost.",
)
WORKER_METRICS_PORT = Variable(
    "WORKER_METRICS_PORT",
    "9191",
    _int(0, 65535),
    "Port of the workers' Prometheus metrics (0: off); one that another eventing-worker on the"
    " host serves on already takes the next free of the 9 above (each logs its port).",
)
LOG_LEVEL = Variable("LOG_LEVEL", "info", _log_level, "debug, info, warning or error.")

#: Every variable, in the order the README lists them.
VARIABLES: tuple[Variable[Any], ...] = (
    NATS_URL,
    NATS_CONNECT_TIMEOUT,
    RECONNECT_WAIT,
    JS_STREAM_NAME,
    JS_STREAM_STORAGE_TYPE,
    JS_STREAM_REPLICAS,
    JS_STREAM_RETENTION_POLICY,
    JS_STREAM_DISCARD_POLICY,
    JS_STREAM_MAX_BYTES,
    JS_STREAM_MAX_MSGS,
    JS_STREAM_MAX_MSGS_PER_TOPIC,
    JS_STREAM_MAX_AGE,
    JS_STREAM_DUPLICATE_WINDOW,
    EVENT_TYPE_PREFIX,
    INGRESS_HOST,
    INGRESS_PORT,
    REQUEST_TIMEOUT,
    MAX_REQUEST_SIZE,
    PROXY_WORKERS,
    PROXY_THREADS,
    PROXY_MAX_IN_FLIGHT,
    PROXY_BODY_TIMEOUT,
    PROXY_BODY_MIN_RATE,
    PROXY_METRICS_MAX_EVENT_TYPES,
    PROXY_RETRY_AFTER,
    JS_DLQ_STREAM_NAME,
    JS_DLQ_MAX_AGE,
    SUBSCRIPTIONS_DIR,
    SUBSCRIPTIONS_SOURCE,
    KUBECONFIG,
    KUBE_NAMESPACES,
    KUBE_SINK_RULE,
    LEADER_ELECTION,
    LEADER_ELECTION_NAMESPACE,
    MANAGER_HOST,
    MANAGER_PORT,
    DEFAULT_MAX_IN_FLIGHT_MESSAGES,
    MAX_BACKLOG,
    BROKER_URL,
    DELIVERY_RETRY,
    DELIVERY_BACKOFF_POLICY,
    DELIVERY_BACKOFF_DELAY,
    DELIVERY_BACKOFF_MAX,
    DELIVERY_TIMEOUT,
    DELIVERY_RETRY_AFTER_MAX,
    DELIVERY_IN_JOB_WAIT_MAX,
    DELIVERY_ACK_WAIT,
    DELIVERY_EXTRA_DELIVERIES,
    WORKER_PROCESSES,
    WORKER_THREADS,
    WORKER_QUEUE_POLL_MAX,
    WORKER_METRICS_PORT,
    LOG_LEVEL,
)


#: Read by the Procfile or other tools, not by the services: with one of our prefixes, but known.
OTHER_VARIABLES = frozenset(
    {
        "EVENTING_DATA_DIR",  # the Procfile: where nats-server and Redis keep their data
        "NATS_PORT",  # the Procfile: the local nats-server's ports
        "NATS_MONITOR_PORT",
        "EVENT_DISPLAY_PORT",  # eventing-display
        "WORKER_METRICS_HOST",  # workers/metrics.py: where the metrics listen (a container)
        "EVENTING_KUBEBINS",  # tests/kubernetes: where kube-apiserver and etcd are
    }
)
#: Prefixes that mark a variable as ours: a misspelled one would otherwise be ignored silently.
OUR_PREFIXES = (
    "NATS_",
    "JS_",
    "PROXY_",
    "MANAGER_",
    "WORKER_",
    "DELIVERY_",
    "EVENTING_",
    "EVENT_",
    "INGRESS_",
    "SUBSCRIPTIONS_",
    "KUBE_",
    "LEADER_ELECTION",
)
# Kubernetes adds <SERVICE>_SERVICE_HOST, <SERVICE>_PORT=tcp://… and so on for every Service of
# the namespace (e.g. EVENTING_NATS_PORT for the Service eventing-nats): not ours to warn about.
_SERVICE_LINK = re.compile(r"_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT_\d+_(TCP|UDP|SCTP)(_\w+)?)$")
_SERVICE_LINK_PORT = re.compile(r"^(tcp|udp|sctp)://")


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each variable that carries one of :data:`OUR_PREFIXES` but is no setting.

    Such a variable is most likely a misspelling (``DELIVERY_RETRIES``), which would otherwise be
    ignored without a word; the closest declared name is suggested.
    """
    declared = [variable.name for variable in VARIABLES]
    warnings = []
    for name in sorted(environ):
        if (
            not name.startswith(OUR_PREFIXES)
            or name in declared
            or name in OTHER_VARIABLES
            or _SERVICE_LINK.search(name)
            or (name.endswith("_PORT") and _SERVICE_LINK_PORT.match(environ[name]))
        ):
            continue
        closest = difflib.get_close_matches(name, [*declared, *OTHER_VARIABLES], n=1, cutoff=0.75)
        hint = f"did you mean {closest[0]}?" if closest else "see the README's table of settings"
        warnings.append(f"{name} is not a setting and is ignored ({hint})")
    return warnings


@dataclass(frozen=True, slots=True)
class NatsSettings:
    """How to reach NATS."""

    urls: tuple[str, ...]
    connect_timeout: float  #: seconds per connection attempt
    reconnect_wait: float  #: seconds between reconnection attempts


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """The one JetStream stream that holds every event (created or updated by whoever starts
    first)."""

    name: str
    storage: str  #: "file" or "memory"
    replicas: int
    retention: str  #: "interest" or "limits"
    discard: str  #: "new" or "old"
    max_bytes: int  #: -1: unlimited
    max_msgs: int  #: -1: unlimited
    max_msgs_per_subject: int  #: -1: unlimited
    max_age: float  #: seconds; 0: unlimited
    duplicate_window: float  #: seconds
    dead_letter_name: str
    dead_letter_max_age: float  #: seconds
    subject_prefix: str = SUBJECT_PREFIX


@dataclass(frozen=True, slots=True)
class EventSettings:
    """How event types become subjects."""

    type_prefix: str


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """The HTTP ingress."""

    host: str
    port: int
    request_timeout: float  #: seconds to wait for a PubAck
    max_request_size: int  #: bytes
    workers: int
    threads: int
    max_in_flight: int  #: events per process awaiting a PubAck
    retry_after: int  #: seconds
    body_timeout: float  #: seconds from a request's headers to its body's last byte
    body_min_rate: int  #: bytes per second
    metrics_max_event_types: int  #: distinct (type, source) label pairs per process


@dataclass(frozen=True, slots=True)
class SourceSettings:
    """Where Subscriptions come from (the manager reconciles them, the proxy answers from them)."""

    kind: str  #: "directory" or "kubernetes"
    directory: str
    kubeconfig: str  #: "" : in-cluster service account, else ~/.kube/config
    namespaces: tuple[str, ...]  #: () : every namespace
    sink_rule: bool  #: Kyma's cluster-local sink rule (kubernetes only)


@dataclass(frozen=True, slots=True)
class ManagerSettings:
    """Where the manager serves status, and how it treats consumers."""

    leader_election: bool
    lease_namespace: str
    host: str
    port: int
    default_max_in_flight: int
    max_backlog: int  #: events a consumer may have pending before the oldest are dead-lettered


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    """How events reach sinks: the broker, and the default retry policy."""

    broker_url: str
    policy: DeliveryPolicy  #: defaults that spec.delivery overrides
    ack_wait: float  #: seconds; least ack wait of a consumer
    extra_deliveries: int
    processes: int  #: worker processes per eventing-worker
    threads: int  #: delivery threads per worker process
    queue_poll_max: float  #: seconds
    metrics_port: int  #: 0: no metrics endpoint


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of every service, grouped by concern."""

    nats: NatsSettings
    stream: StreamSettings
    events: EventSettings
    proxy: ProxySettings
    source: SourceSettings
    manager: ManagerSettings
    delivery: DeliverySettings
    log_level: str

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        """Read and validate every variable.

        Parameters:
            environ: usually ``os.environ``; unset variables take their documented default.

        Raises:
            ConfigError: naming every variable whose value is invalid, and why.
        """
        reader = _Reader(environ)
        read = reader.read
        settings = cls(
            nats=NatsSettings(
                urls=read(NATS_URL),
                connect_timeout=read(NATS_CONNECT_TIMEOUT),
                reconnect_wait=read(RECONNECT_WAIT),
            ),
            stream=StreamSettings(
                name=read(JS_STREAM_NAME),
                storage=read(JS_STREAM_STORAGE_TYPE),
                replicas=read(JS_STREAM_REPLICAS),
                retention=read(JS_STREAM_RETENTION_POLICY),
                discard=read(JS_STREAM_DISCARD_POLICY),
                max_bytes=read(JS_STREAM_MAX_BYTES),
                max_msgs=read(JS_STREAM_MAX_MSGS),
                max_msgs_per_subject=read(JS_STREAM_MAX_MSGS_PER_TOPIC),
                max_age=read(JS_STREAM_MAX_AGE),
                duplicate_window=read(JS_STREAM_DUPLICATE_WINDOW),
                dead_letter_name=read(JS_DLQ_STREAM_NAME),
                dead_letter_max_age=read(JS_DLQ_MAX_AGE),
            ),
            events=EventSettings(type_prefix=read(EVENT_TYPE_PREFIX)),
            proxy=ProxySettings(
                host=read(INGRESS_HOST),
                port=read(INGRESS_PORT),
                request_timeout=read(REQUEST_TIMEOUT),
                max_request_size=read(MAX_REQUEST_SIZE),
                workers=read(PROXY_WORKERS),
                threads=read(PROXY_THREADS),
                max_in_flight=read(PROXY_MAX_IN_FLIGHT),
                retry_after=read(PROXY_RETRY_AFTER),
                body_timeout=read(PROXY_BODY_TIMEOUT),
                body_min_rate=read(PROXY_BODY_MIN_RATE),
                metrics_max_event_types=read(PROXY_METRICS_MAX_EVENT_TYPES),
            ),
            source=SourceSettings(
                kind=read(SUBSCRIPTIONS_SOURCE),
                directory=read(SUBSCRIPTIONS_DIR),
                kubeconfig=read(KUBECONFIG),
                namespaces=read(KUBE_NAMESPACES),
                sink_rule=read(KUBE_SINK_RULE) == "on",
            ),
            manager=ManagerSettings(
                leader_election=read(LEADER_ELECTION) == "on",
                lease_namespace=read(LEADER_ELECTION_NAMESPACE),
                host=read(MANAGER_HOST),
                port=read(MANAGER_PORT),
                default_max_in_flight=read(DEFAULT_MAX_IN_FLIGHT_MESSAGES),
                max_backlog=read(MAX_BACKLOG),
            ),
            delivery=DeliverySettings(
                broker_url=read(BROKER_URL),
                policy=DeliveryPolicy(
                    retry=read(DELIVERY_RETRY),
                    backoff_policy=read(DELIVERY_BACKOFF_POLICY),
                    backoff_delay=read(DELIVERY_BACKOFF_DELAY),
                    backoff_max=read(DELIVERY_BACKOFF_MAX),
                    timeout=read(DELIVERY_TIMEOUT),
                    retry_after_max=read(DELIVERY_RETRY_AFTER_MAX),
                    in_job_wait_max=read(DELIVERY_IN_JOB_WAIT_MAX),
                ),
                ack_wait=read(DELIVERY_ACK_WAIT),
                extra_deliveries=read(DELIVERY_EXTRA_DELIVERIES),
                processes=read(WORKER_PROCESSES),
                threads=read(WORKER_THREADS),
                queue_poll_max=read(WORKER_QUEUE_POLL_MAX),
                metrics_port=read(WORKER_METRICS_PORT),
            ),
            log_level=read(LOG_LEVEL),
        )
        max_age = settings.stream.max_age
        if max_age and settings.stream.duplicate_window > max_age:
            reader.problems[JS_STREAM_DUPLICATE_WINDOW.name] = (
                f"must not exceed JS_STREAM_MAX_AGE ({max_age:g}s), as JetStream requires"
            )
        if settings.proxy.max_request_size < 1:
            reader.problems[MAX_REQUEST_SIZE.name] = "must be a positive size"
        if settings.stream.dead_letter_name == settings.stream.name:
            reader.problems[JS_DLQ_STREAM_NAME.name] = "must differ from JS_STREAM_NAME"
        if reader.problems:
            raise ConfigError(reader.problems)
        return settings


class _Reader:
    """Parses variables one by one and collects every problem instead of stopping at the first."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self.problems: dict[str, str] = {}

    def read(self, variable: Variable[T]) -> T:
        raw = self._environ.get(variable.name, variable.default)
        try:
            return variable.parse(raw)
        except ValueError as exc:
            self.problems[variable.name] = f"{exc}, got {without_credentials(repr(raw))}"
            # A placeholder keeps construction going so later variables are checked too; the
            # caller raises before anyone can see it.
            return variable.parse(variable.default)


def settings_or_exit(program: str, *, warn: bool = True) -> Settings:
    """The settings from ``os.environ`` for an entry point, or exit 2 naming every bad variable.

    With ``warn``, each variable that looks like a setting but is none is named on stderr (see
    :func:`unknown_variables`); a process started by another that warned already passes False.

    Raises:
        SystemExit: the environment is invalid (the message went to stderr, no traceback).
    """
    try:
        settings = Settings.from_environ(os.environ)
    except ConfigError as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    for warning in unknown_variables(os.environ) if warn else ():
        print(f"{program}: warning: {warning}", file=sys.stderr, flush=True)
    return settings


def markdown_table() -> str:
    """The README's configuration table, generated from :data:`VARIABLES`."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    rows += [f"| `{v.name}` | `{v.default}` | {v.help} |" for v in VARIABLES]
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())

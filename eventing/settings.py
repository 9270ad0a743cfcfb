"""Settings: every environment variable declared once, read once, validated as a whole, frozen.

A variable is one declaration, a field of the group that needs it::

    request_timeout: float = setting("REQUEST_TIMEOUT", "5s", _positive_duration, "How long …")

That one line is the dataclass field (its type, and its default, parsed), the reading
(:meth:`Settings.from_environ` walks the groups' fields), the error (a bad value is reported
under its variable's name, with what the parser expected) and the README's row
(:func:`markdown_table`, ``python -m eventing.settings``). Adding a setting is adding that line
and using the field.

The groups follow who reads them, so a service is handed the group it needs and nothing leaks
across: ``nats`` (every service), ``stream`` (the event and dead-letter streams: every service),
``events`` (proxy and manager), ``proxy``, ``source`` (manager and proxy), ``manager``,
``delivery`` (manager and workers: the broker, the retry policy), ``workers`` (the worker
launcher and its processes), ``cli`` (the command-line tool alone: :func:`group_or_exit`).

Only entry points call :func:`settings_or_exit` (or :meth:`Settings.from_environ`); everything
else receives settings. This module is the one place that reads the environment: the metrics
folder a launcher hands to its own processes (:func:`hand_over_metrics_dir`) goes through here
too.

Why one module over 400 lines: it is the list of declarations, one per variable (76 of them, a
few lines each with its help text: over half the module), grouped as the README lists them,
between the value parsers and the reading, checks and table. Spread over modules,
a new setting would again cost edits in several places.

Names follow Kyma's where Kyma has one (``NATS_URL``, ``EVENT_TYPE_PREFIX``, ``JS_STREAM_*``,
``INGRESS_PORT``, ``REQUEST_TIMEOUT``, ``MAX_REQUEST_SIZE``), so existing deployments map over.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from eventing import units
from eventing.errors import ConfigError
from eventing.redaction import has_userinfo, without_credentials

T = TypeVar("T")
G = TypeVar("G")

#: Subjects of every event start with this token; fixed, as in Kyma's publisher proxy.
SUBJECT_PREFIX = "kyma"

_STREAM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_PREFIX = re.compile(r"^[A-Za-z0-9]+(\.[A-Za-z0-9]+)*$")
_VARIABLE = "eventing.variable"  #: field metadata key: the field is read from this Variable


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
    value = units.duration(raw)
    if value <= 0:
        raise ValueError("expected a duration above zero")
    return value


def _switch(raw: str) -> bool:
    value = raw.strip().lower()
    if value not in ("on", "off"):
        raise ValueError("expected one of on, off")
    return value == "on"


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


def _inbox_prefix(raw: str) -> str:
    if not re.fullmatch(r"[^.*>\s]+(\.[^.*>\s]+)*", raw):
        raise ValueError(
            "expected a NATS subject without wildcards: dot-separated tokens, none empty,"
            " without '*', '>' or spaces, e.g. _INBOX_proxy"
        )
    return raw


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


_HOST_NAME = re.compile(
    r"^(\*\.)?[a-z0-9_]([-a-z0-9_]*[a-z0-9_])?(\.[a-z0-9_]([-a-z0-9_]*[a-z0-9_])?)*$"
)


def _sink_rules(raw: str) -> tuple[str, ...]:
    entries = tuple(part.strip().lower() for part in raw.split(",") if part.strip())
    for entry in entries:
        try:
            ipaddress.ip_network(entry.strip("[]"), strict=False)
        except ValueError:
            if not _HOST_NAME.match(entry.rstrip(".")):
                raise ValueError(
                    f"expected CIDRs (10.0.0.0/8, fd00::/8), addresses or host names"
                    f" (*.example.com for every name below it), separated by commas; {entry!r}"
                    " is none of them"
                ) from None
    return entries


def _broker_url(raw: str) -> str:
    if not re.match(r"^(redis|rediss|amqp|amqps)://\S+$", raw.strip()):
        raise ValueError("expected redis://host:port/db or amqp://user:password@host:port/vhost")
    return raw.strip()


def _file(raw: str) -> str:
    """A file path, or empty for none (whether it can be read is checked with the others)."""
    return raw.strip()


def _http_url(raw: str) -> str:
    value = raw.strip().rstrip("/")
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
        raise ValueError("expected an http:// or https:// URL, e.g. http://127.0.0.1:8081")
    return value


def _path(raw: str) -> str:
    if not raw.strip():
        raise ValueError("expected a folder path")
    return raw.strip()


def _optional_path(raw: str) -> str:
    return raw.strip()


def _log_level(raw: str) -> str:
    value = raw.strip().upper()
    if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("expected one of debug, info, warning, error")
    return value


def _jwks(raw: str) -> str:
    value = raw.strip()
    if value.startswith("http://") or ("://" in value and not value.startswith("https://")):
        raise ValueError("expected a file path or an https:// URL (keys must not travel in clear)")
    return value


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an IP address, as in a URL) is this machine: traffic to it
    never leaves the host, so it needs no credentials to be safe from the network."""
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def secret_from_file(path: str) -> str:
    """The secret ``path`` holds, without the line break an editor or ``kubectl`` adds.

    Read whenever a connection is opened, not once, so a rotated Secret's new value is used from
    the next connection on.
    """
    with open(path, encoding="utf-8") as file:
        return file.read().strip()


@dataclass(frozen=True, slots=True)
class Variable(Generic[T]):
    """One environment variable: its name, default, parser and meaning (for the README)."""

    name: str
    default: str
    parse: Callable[[str], T]
    help: str


def setting(name: str, default: str, parse: Callable[[str], T], help: str) -> T:
    """Declare a group's field as the environment variable ``name``.

    The field's default is ``default`` parsed, so ``ProxySettings()`` holds the documented
    defaults; :meth:`Settings.from_environ` reads the variable into the field.
    """
    declared = Variable(name, default, parse, help)
    # A Field, typed as the value it stands for, as dataclasses.field itself is typed.
    return dataclasses.field(default=parse(default), metadata={_VARIABLE: declared})


@dataclass(frozen=True, slots=True)
class NatsSettings:
    """How to reach NATS (every service)."""

    urls: tuple[str, ...] = setting(
        "NATS_URL", "nats://127.0.0.1:4222", _urls, "NATS server URL(s), comma-separated."
    )
    connect_timeout: float = setting(
        "NATS_CONNECT_TIMEOUT",
        "2s",
        _positive_duration,
        "Timeout of one connection attempt to NATS.",
    )
    reconnect_wait: float = setting(
        "RECONNECT_WAIT",
        "1s",
        _positive_duration,
        "Pause between reconnection attempts; processes retry forever instead of exiting.",
    )
    creds_file: str = setting(
        "NATS_CREDS_FILE",
        "",
        _file,
        "NATS credentials (.creds: user JWT and NKEY seed) to connect with; re-read at every"
        " reconnect.",
    )
    nkey_seed_file: str = setting(
        "NATS_NKEY_SEED_FILE",
        "",
        _file,
        "NKEY seed (`SU…`) of the NATS user to connect as; re-read at every reconnect.",
    )
    token_file: str = setting(
        "NATS_TOKEN_FILE",
        "",
        _file,
        "File holding the NATS authentication token; re-read at every reconnect.",
    )
    user: str = setting(
        "NATS_USER", "", str, "NATS user name (with NATS_PASSWORD_FILE); or in NATS_URL."
    )
    password_file: str = setting(
        "NATS_PASSWORD_FILE",
        "",
        _file,
        "File holding NATS_USER's password; re-read at every reconnect.",
    )
    tls_ca_file: str = setting(
        "NATS_TLS_CA_FILE",
        "",
        _file,
        "CA bundle (PEM) that NATS servers' certificates must chain to (empty: the system's);"
        " setting any NATS_TLS_* file turns TLS on.",
    )
    tls_cert_file: str = setting(
        "NATS_TLS_CERT_FILE",
        "",
        _file,
        "Client certificate (PEM) presented to NATS, with NATS_TLS_KEY_FILE; read at each new"
        " connection.",
    )
    tls_key_file: str = setting(
        "NATS_TLS_KEY_FILE", "", _file, "Private key (PEM) of NATS_TLS_CERT_FILE."
    )
    inbox_prefix: str = setting(
        "NATS_INBOX_PREFIX",
        "_INBOX",
        _inbox_prefix,
        "Subject prefix of this process's reply inboxes (PubAcks, JetStream API answers, pulled"
        " events); one per component lets NATS permissions keep each user off the others'.",
    )

    @property
    def uses_tls(self) -> bool:
        return bool(self.tls_ca_file or self.tls_cert_file)

    @property
    def authentication(self) -> tuple[str, ...]:
        """The variables naming how this process authenticates to NATS (none, one, or several:
        a conflict :meth:`Settings.from_environ` refuses)."""
        ways = {
            "NATS_CREDS_FILE": self.creds_file,
            "NATS_NKEY_SEED_FILE": self.nkey_seed_file,
            "NATS_TOKEN_FILE": self.token_file,
            "NATS_USER": self.user or self.password_file,
            "NATS_URL": any(has_userinfo(url) for url in self.urls),
        }
        return tuple(name for name, chosen in ways.items() if chosen)


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """The JetStream stream that holds every event and the one of dead letters (created or
    updated by whoever starts first)."""

    name: str = setting(
        "JS_STREAM_NAME",
        "sap",
        _stream_name,
        "JetStream stream holding every event (Kyma's default install uses `sap`).",
    )
    storage: str = setting(
        "JS_STREAM_STORAGE_TYPE",
        "file",
        _choice("file", "memory"),
        "Stream storage: `file` survives restarts.",
    )
    replicas: int = setting(
        "JS_STREAM_REPLICAS", "1", _int(1, 5), "Stream replicas; use 3 on a 3-node NATS cluster."
    )
    retention: str = setting(
        "JS_STREAM_RETENTION_POLICY",
        "interest",
        _choice("interest", "limits"),
        "`interest` keeps an event until every consumer that wants it has acknowledged it.",
    )
    discard: str = setting(
        "JS_STREAM_DISCARD_POLICY",
        "new",
        _choice("new", "old"),
        "What a full stream does: `new` refuses publishes (HTTP 507), `old` drops the oldest"
        " events.",
    )
    max_bytes: int = setting(
        "JS_STREAM_MAX_BYTES", "1Gi", units.size, "Stream size limit (e.g. 700Mi, 1Gi; -1: none)."
    )
    max_msgs: int = setting(
        "JS_STREAM_MAX_MSGS", "-1", _int(-1), "Stream message-count limit (-1: none)."
    )
    max_msgs_per_subject: int = setting(
        "JS_STREAM_MAX_MSGS_PER_TOPIC",
        "1000000",
        _int(-1),
        "Limit of stored events per subject (-1: none).",
    )
    max_age: float = setting(
        "JS_STREAM_MAX_AGE",
        "0",
        units.duration,
        "Drop events older than this (0: keep until delivered).",
    )
    duplicate_window: float = setting(
        "JS_STREAM_DUPLICATE_WINDOW",
        "2m",
        _positive_duration,
        "A publish repeating the source and id of an event stored this recently is stored once.",
    )
    dead_letter_name: str = setting(
        "JS_DLQ_STREAM_NAME",
        "sap-dlq",
        _stream_name,
        "Stream of dead letters: events out of attempts or refused for good, with the reason.",
    )
    dead_letter_max_age: float = setting(
        "JS_DLQ_MAX_AGE", "168h", _positive_duration, "How long dead letters are kept."
    )
    dead_letter_publish_timeout: float = setting(
        "JS_DLQ_PUBLISH_TIMEOUT",
        "5s",
        _positive_duration,
        "How long storing a dead letter (a worker's, or the manager's shed backlog) waits for"
        " JetStream's acknowledgement.",
    )
    ledger_name: str = setting(
        "JS_LEDGER_STREAM_NAME",
        "sap-ledger",
        _stream_name,
        "Stream of the delivery ledger: every attempt at every (event, subscription) and its"
        " outcome.",
    )
    ledger_max_age: float = setting(
        "LEDGER_MAX_AGE",
        "72h",
        units.duration,
        "How long the delivery ledger keeps an attempt (0: no ledger).",
    )
    ledger_max_bytes: int = setting(
        "LEDGER_MAX_BYTES",
        "1Gi",
        units.size,
        "Size cap of the delivery ledger; beyond it the oldest attempts go first.",
    )
    archive_name: str = setting(
        "JS_ARCHIVE_STREAM_NAME",
        "sap-archive",
        _stream_name,
        "Stream that keeps a copy of every event for replay, delivered or not.",
    )
    archive_max_age: float = setting(
        "EVENT_ARCHIVE_MAX_AGE",
        "24h",
        units.duration,
        "How long events are kept for replay (0: no archive, no replay).",
    )
    archive_max_bytes: int = setting(
        "EVENT_ARCHIVE_MAX_BYTES",
        "1Gi",
        units.size,
        "Size cap of the replay archive; beyond it the oldest events go first (counted).",
    )
    subject_prefix: str = SUBJECT_PREFIX


@dataclass(frozen=True, slots=True)
class EventSettings:
    """How event types become subjects (proxy and manager)."""

    type_prefix: str = setting(
        "EVENT_TYPE_PREFIX",
        "sap.kyma.custom",
        _event_type_prefix,
        "Prefix of legacy event types (`<prefix>.<app>.<event>.<version>`).",
    )


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """The HTTP ingress."""

    host: str = setting(
        "INGRESS_HOST",
        "127.0.0.1",
        _host,
        "Address the proxy listens on (0.0.0.0 in a container).",
    )
    port: int = setting("INGRESS_PORT", "8080", _int(1, 65535), "Port the proxy listens on.")
    request_timeout: float = setting(
        "REQUEST_TIMEOUT",
        "5s",
        _positive_duration,
        "How long a publish waits for JetStream's acknowledgement.",
    )
    max_request_size: int = setting(
        "MAX_REQUEST_SIZE",
        "65536",
        units.size,
        "Largest request body the proxy reads (bytes); larger gets 413.",
    )
    workers: int = setting(
        "PROXY_WORKERS", "2", _int(1, 64), "Proxy worker processes (granian workers)."
    )
    threads: int = setting(
        "PROXY_THREADS", "32", _int(1, 1024), "Request threads per proxy worker process."
    )
    max_in_flight: int = setting(
        "PROXY_MAX_IN_FLIGHT",
        "1000",
        _int(1),
        "Events one proxy process may have waiting for JetStream; more get 503 with Retry-After.",
    )
    body_timeout: float = setting(
        "PROXY_BODY_TIMEOUT",
        "10s",
        _positive_duration,
        "Longest a request body may take to arrive after its headers; later gets 408.",
    )
    body_min_rate: int = setting(
        "PROXY_BODY_MIN_RATE",
        "1024",
        _int(1),
        "Bytes/s a request body must arrive at on average after its first 2 s; slower gets 408.",
    )
    publish_on_loop: bool = setting(
        "PROXY_PUBLISH_ON_LOOP",
        "on",
        _switch,
        "Binary-mode `POST /publish` (up to 64 KiB) handled on granian's event loop, below Flask:"
        " about half the proxy's CPU a request. Off: through Flask like every other request,"
        " with the same answers; to rule the route out when an answer looks wrong. Always off"
        " while PROXY_JWKS is set (fetching it must not stall the loop).",
    )
    metrics_max_event_types: int = setting(
        "PROXY_METRICS_MAX_EVENT_TYPES",
        "1000",
        _int(1),
        "Distinct event type and source pairs a proxy process labels its metrics with; later"
        " ones are counted as `other`.",
    )
    retry_after: int = setting(
        "PROXY_RETRY_AFTER", "1", _int(1, 3600), "Seconds in the Retry-After header of a 503."
    )
    api_keys_file: str = setting(
        "PROXY_API_KEYS_FILE",
        "",
        str.strip,
        "YAML list of publishers' API keys (name, key or sha256, sources, types), reloaded on"
        " change; requests send `Authorization: Bearer <key>`. Empty, and no PROXY_JWKS:"
        " anyone may publish.",
    )
    jwks: str = setting(
        "PROXY_JWKS",
        "",
        _jwks,
        "JWKS (a file, or an https URL) that verifies publishers' JWT bearer tokens, e.g. the"
        " API server's /openid/v1/jwks; fetched again for an unknown key id.",
    )
    jwks_ca_file: str = setting(
        "PROXY_JWKS_CA_FILE",
        "",
        str.strip,
        "CA bundle that verifies an https PROXY_JWKS (empty: the system's CAs).",
    )
    jwks_token_file: str = setting(
        "PROXY_JWKS_TOKEN_FILE",
        "",
        str.strip,
        "Bearer token sent to fetch an https PROXY_JWKS, read at each fetch (e.g. the pod's"
        " service-account token, which the API server asks for).",
    )
    jwt_issuer: str = setting(
        "PROXY_JWT_ISSUER", "", str.strip, "The `iss` every JWT must carry (with PROXY_JWKS)."
    )
    jwt_audience: str = setting(
        "PROXY_JWT_AUDIENCE",
        "",
        str.strip,
        "The `aud` every JWT must carry (with PROXY_JWKS), e.g. `eventing-proxy`.",
    )
    jwt_rules_file: str = setting(
        "PROXY_JWT_RULES_FILE",
        "",
        str.strip,
        "YAML list of rules (name, claims as globs, sources, types) giving a verified JWT its"
        " publisher name and what it may publish; reloaded on change.",
    )


@dataclass(frozen=True, slots=True)
class SourceSettings:
    """Where Subscriptions come from (the manager reconciles them, the proxy answers from them)."""

    directory: str = setting(
        "SUBSCRIPTIONS_DIR",
        "./subscriptions",
        _path,
        "Folder of Subscription manifests (YAML, several documents per file).",
    )
    kind: str = setting(
        "SUBSCRIPTIONS_SOURCE",
        "directory",
        _choice("directory", "kubernetes"),
        "Where Subscriptions come from: manifests in SUBSCRIPTIONS_DIR, or Kubernetes custom"
        " resources.",
    )
    kubeconfig: str = setting(
        "KUBECONFIG",
        "",
        str,
        "Kubeconfig file of the kubernetes source (empty: the pod's service account, else"
        " ~/.kube/config).",
    )
    namespaces: tuple[str, ...] = setting(
        "KUBE_NAMESPACES",
        "",
        _names,
        "Namespaces whose Subscriptions are served, comma-separated (empty: all).",
    )
    sink_rule: bool = setting(
        "KUBE_SINK_RULE",
        "on",
        _switch,
        "Kyma's sink rule in the kubernetes source: a sink must be <service>.<subscription's"
        " namespace>.svc.cluster.local and the Service must exist.",
    )


@dataclass(frozen=True, slots=True)
class ManagerSettings:
    """Where the manager serves status, and how it treats consumers."""

    leader_election: bool = setting(
        "LEADER_ELECTION",
        "off",
        _switch,
        "With several manager replicas on Kubernetes, only the holder of a Lease works (on).",
    )
    lease_namespace: str = setting(
        "LEADER_ELECTION_NAMESPACE",
        "eventing",
        str,
        "Namespace of the manager's Lease (eventing-manager).",
    )
    host: str = setting(
        "MANAGER_HOST",
        "127.0.0.1",
        _host,
        "Address of the manager's status and metrics endpoint.",
    )
    port: int = setting(
        "MANAGER_PORT",
        "8081",
        _int(1, 65535),
        "Port of the manager's status and metrics endpoint.",
    )
    api_token_file: str = setting(
        "MANAGER_API_TOKEN_FILE",
        "",
        str.strip,
        "File holding the bearer token that status and metrics require (not /healthz, /readyz);"
        " required when MANAGER_HOST is not loopback. Read at each request: rotates in place.",
    )
    default_max_in_flight: int = setting(
        "DEFAULT_MAX_IN_FLIGHT_MESSAGES",
        "10",
        _int(1, 10_000),
        "maxInFlightMessages of a subscription that sets none: concurrent deliveries to its sink.",
    )
    max_backlog: int = setting(
        "MAX_BACKLOG",
        "100000",
        _int(1),
        "Events one subscription may have waiting; beyond it the oldest go to the dead-letter"
        " stream, so a dead sink never fills the shared stream.",
    )


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    """How events reach sinks (manager and workers): the broker, and the default retry policy
    that a subscription's spec.delivery overrides."""

    broker_url: str = setting(
        "BROKER_URL",
        "redis://127.0.0.1:6379/0",
        _broker_url,
        "dramatiq broker: Redis (redis://, rediss:// for TLS), or RabbitMQ (amqp://, amqps://);"
        " a user and password may stand in the URL.",
    )
    broker_password_file: str = setting(
        "BROKER_PASSWORD_FILE",
        "",
        _file,
        "File holding the broker's password (the user, if any, stays in BROKER_URL); read at"
        " every new connection.",
    )
    broker_tls_ca_file: str = setting(
        "BROKER_TLS_CA_FILE",
        "",
        _file,
        "CA bundle (PEM) that the broker's certificate must chain to (rediss://, amqps://;"
        " empty: the system's).",
    )
    retry: int = setting(
        "DELIVERY_RETRY",
        "5",
        _int(0, 100),
        "Retries after the first attempt (spec.delivery.retry).",
    )
    backoff_policy: str = setting(
        "DELIVERY_BACKOFF_POLICY",
        "exponential",
        _choice("exponential", "linear"),
        "Growth of the delay between retries (spec.delivery.backoffPolicy).",
    )
    backoff_delay: float = setting(
        "DELIVERY_BACKOFF_DELAY",
        "1s",
        units.duration,
        "Base delay between retries (spec.delivery.backoffDelay).",
    )
    backoff_max: float = setting(
        "DELIVERY_BACKOFF_MAX",
        "5m",
        _positive_duration,
        "Cap of any single delay between retries.",
    )
    timeout: float = setting(
        "DELIVERY_TIMEOUT",
        "10s",
        _positive_duration,
        "Timeout of one request to a sink (spec.delivery.timeout).",
    )
    retry_after_max: float = setting(
        "DELIVERY_RETRY_AFTER_MAX",
        "5m",
        units.duration,
        "Longest Retry-After of a sink that is honoured (spec.delivery.retryAfterMax).",
    )
    in_job_wait_max: float = setting(
        "DELIVERY_IN_JOB_WAIT_MAX",
        "15s",
        units.duration,
        "Delays up to this are waited inside a delivery job; longer ones free the worker and come"
        " back as a delayed JetStream redelivery.",
    )
    ack_wait: float = setting(
        "DELIVERY_ACK_WAIT",
        "30s",
        _positive_duration,
        "Least JetStream ack wait of a consumer; raised per subscription to cover its timeout.",
    )
    sink_allow: tuple[str, ...] = setting(
        "SINK_ALLOW",
        "",
        _sink_rules,
        "Sink CIDRs and host names let through that the egress policy refuses by default"
        " (link-local, cloud metadata; loopback when SUBSCRIPTIONS_SOURCE=kubernetes).",
    )
    sink_deny: tuple[str, ...] = setting(
        "SINK_DENY",
        "",
        _sink_rules,
        "Sink CIDRs and host names refused besides the defaults; wins over SINK_ALLOW.",
    )
    extra_deliveries: int = setting(
        "DELIVERY_EXTRA_DELIVERIES",
        "5",
        _int(0, 1000),
        "Redeliveries tolerated beyond the retry plan (worker crashes, expired ack waits) before"
        " an event is dead-lettered.",
    )
    batch_max: int = setting(
        "DELIVERY_BATCH_MAX",
        "20",
        _int(1, 1000),
        "Most events of one subscription that one delivery job carries when its consumer has a"
        " backlog (1: a job per event); a lone event is always a job of its own.",
    )
    batch_spread: int = setting(
        "DELIVERY_BATCH_SPREAD",
        "32",
        _int(1, 100_000),
        "Deliveries at once that batching leaves a slow sink: a job carries at most"
        " maxInFlightMessages ÷ this many events (the workers' threads in all: 2 x 16).",
    )
    job_signing_key_file: str = setting(
        "JOB_SIGNING_KEY_FILE",
        "",
        _optional_path,
        "File of the key (32 bytes or more) the manager signs delivery jobs with and workers"
        " check them with; unset: a key made on first start in"
        " `$XDG_STATE_HOME/eventing/job-signing.key` (`~/.local/state/...`), shared by the"
        " processes of one machine only.",
    )


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """How one eventing-worker runs: its processes, threads and metrics endpoint."""

    processes: int = setting(
        "WORKER_PROCESSES", "2", _int(1, 256), "Worker processes of one eventing-worker."
    )
    threads: int = setting(
        "WORKER_THREADS",
        "16",
        _int(1, 1024),
        "Delivery threads per worker process (concurrent requests).",
    )
    queue_poll_max: float = setting(
        "WORKER_QUEUE_POLL_MAX",
        "20ms",
        _positive_duration,
        "Longest pause between polls of an empty RabbitMQ queue, and how soon a stopping worker's"
        " loops see the end. An idle Redis worker does not poll: each enqueue wakes it, and it"
        " fetches once a second in case a wake-up is lost.",
    )
    metrics_host: str = setting(
        "WORKER_METRICS_HOST",
        "127.0.0.1",
        _host,
        "Address of the workers' Prometheus metrics (0.0.0.0 in a container).",
    )
    metrics_port: int = setting(
        "WORKER_METRICS_PORT",
        "9191",
        _int(0, 65535),
        "Port of the workers' Prometheus metrics (0: off); one that another eventing-worker on"
        " the host serves on already takes the next free of the 9 above (each logs its port).",
    )


@dataclass(frozen=True, slots=True)
class CliSettings:
    """Where the command-line tool ``eventing`` finds the manager's API and the proxy, and the
    credentials it sends them (read from files, so they stay out of the shell's history)."""

    manager_url: str = setting(
        "EVENTING_MANAGER_URL",
        "http://127.0.0.1:8081",
        _http_url,
        "The manager's API, as the `eventing` command-line tool reaches it.",
    )
    proxy_url: str = setting(
        "EVENTING_PROXY_URL",
        "http://127.0.0.1:8080",
        _http_url,
        "The proxy, as `eventing publish` reaches it.",
    )
    manager_token_file: str = setting(
        "EVENTING_MANAGER_TOKEN_FILE",
        "",
        _file,
        "File holding the manager's API token (what its MANAGER_API_TOKEN_FILE holds), sent by"
        " `eventing` as `Authorization: Bearer`.",
    )
    api_key_file: str = setting(
        "EVENTING_API_KEY_FILE",
        "",
        _file,
        "File holding the publisher's bearer credential (an API key, or a JWT) that"
        " `eventing publish` sends the proxy.",
    )


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of every service, in groups by who reads them."""

    nats: NatsSettings = dataclasses.field(default_factory=NatsSettings)
    stream: StreamSettings = dataclasses.field(default_factory=StreamSettings)
    events: EventSettings = dataclasses.field(default_factory=EventSettings)
    proxy: ProxySettings = dataclasses.field(default_factory=ProxySettings)
    source: SourceSettings = dataclasses.field(default_factory=SourceSettings)
    manager: ManagerSettings = dataclasses.field(default_factory=ManagerSettings)
    delivery: DeliverySettings = dataclasses.field(default_factory=DeliverySettings)
    workers: WorkerSettings = dataclasses.field(default_factory=WorkerSettings)
    cli: CliSettings = dataclasses.field(default_factory=CliSettings)
    log_level: str = setting("LOG_LEVEL", "info", _log_level, "debug, info, warning or error.")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        """Read and validate every variable.

        Parameters:
            environ: usually ``os.environ``; unset variables take their documented default.

        Raises:
            ConfigError: naming every variable whose value is invalid, and why.
        """
        problems: dict[str, str] = {}
        settings = _read(cls, environ, problems)
        stream = settings.stream
        if stream.max_age and stream.duplicate_window > stream.max_age:
            problems[_name(StreamSettings, "duplicate_window")] = (
                f"must not exceed {_name(StreamSettings, 'max_age')} ({stream.max_age:g}s),"
                " as JetStream requires"
            )
        if settings.proxy.max_request_size < 1:
            problems[_name(ProxySettings, "max_request_size")] = "must be a positive size"
        if settings.proxy.jwks:
            for field in ("jwt_issuer", "jwt_audience", "jwt_rules_file"):
                if not getattr(settings.proxy, field):
                    problems[_name(ProxySettings, field)] = (
                        f"must be set with {_name(ProxySettings, 'jwks')}"
                    )
        if stream.dead_letter_name == stream.name:
            problems[_name(StreamSettings, "dead_letter_name")] = (
                f"must differ from {_name(StreamSettings, 'name')}"
            )
        problems.update(_backend_problems(settings))
        if problems:
            raise ConfigError(problems)
        return settings


def _backend_problems(settings: Settings) -> dict[str, str]:
    """What is contradictory or unreadable in how NATS and the broker are reached: found at
    start, not at the first connection, where a process would only retry forever."""
    problems: dict[str, str] = {}
    nats, delivery = settings.nats, settings.delivery
    ways = nats.authentication
    if len(ways) > 1:
        problems[ways[0]] = (
            f"conflicts with {', '.join(ways[1:])}: set one way of authenticating to NATS"
        )
    if bool(nats.user) != bool(nats.password_file):
        problems["NATS_USER"] = "NATS_USER and NATS_PASSWORD_FILE go together: set both or neither"
    if bool(nats.tls_cert_file) != bool(nats.tls_key_file):
        problems["NATS_TLS_CERT_FILE"] = (
            "NATS_TLS_CERT_FILE and NATS_TLS_KEY_FILE go together: set both or neither"
        )
    url = delivery.broker_url
    if delivery.broker_password_file and re.match(r"^\w+://[^@/]*:[^@/]*@", url):
        problems["BROKER_PASSWORD_FILE"] = (
            "conflicts with the password in BROKER_URL: keep only the user in the URL"
        )
    if delivery.broker_tls_ca_file and not url.startswith(("rediss://", "amqps://")):
        problems["BROKER_TLS_CA_FILE"] = "needs a TLS BROKER_URL (rediss:// or amqps://)"
    files = {
        "NATS_CREDS_FILE": nats.creds_file,
        "NATS_NKEY_SEED_FILE": nats.nkey_seed_file,
        "NATS_TOKEN_FILE": nats.token_file,
        "NATS_PASSWORD_FILE": nats.password_file,
        "NATS_TLS_CA_FILE": nats.tls_ca_file,
        "NATS_TLS_CERT_FILE": nats.tls_cert_file,
        "NATS_TLS_KEY_FILE": nats.tls_key_file,
        "BROKER_PASSWORD_FILE": delivery.broker_password_file,
        "BROKER_TLS_CA_FILE": delivery.broker_tls_ca_file,
    }
    for name, path in files.items():
        if path and not os.access(path, os.R_OK):
            problems.setdefault(name, f"cannot read the file {path!r}")
    return problems


def _read(cls: Callable[..., G], environ: Mapping[str, str], problems: dict[str, str]) -> G:
    """``cls`` with each field read from its variable (or its group), every problem collected
    in ``problems`` instead of stopping at the first."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cast(Any, cls)):
        if _is_group(field):
            values[field.name] = _read(cast(Any, field.default_factory), environ, problems)
        elif _VARIABLE in field.metadata:
            variable: Variable[Any] = field.metadata[_VARIABLE]
            raw = environ.get(variable.name, variable.default)
            try:
                values[field.name] = variable.parse(raw)
            except ValueError as exc:
                # The field keeps its default, so later variables are checked too; the caller
                # raises before anyone can see it.
                problems[variable.name] = f"{exc}, got {without_credentials(repr(raw))}"
    return cls(**values)


def _variables(cls: Any) -> Iterator[Variable[Any]]:
    for field in dataclasses.fields(cls):
        if _is_group(field):
            yield from _variables(field.default_factory)
        elif _VARIABLE in field.metadata:
            yield field.metadata[_VARIABLE]


def _is_group(field: dataclasses.Field[Any]) -> bool:
    """Whether a field of :class:`Settings` is a group (a dataclass of variables)."""
    return dataclasses.is_dataclass(field.default_factory)


def _name(group: Any, field: str) -> str:
    """The variable a group's field is read from, for messages that name it."""
    variable: Variable[Any] = next(
        f.metadata[_VARIABLE] for f in dataclasses.fields(group) if f.name == field
    )
    return variable.name


#: Every variable, in the order the README lists them: the groups' fields, in order.
VARIABLES: tuple[Variable[Any], ...] = tuple(_variables(Settings))


#: Read by the Procfile or other tools, not by the services: with one of our prefixes, but known.
OTHER_VARIABLES = frozenset(
    {
        "EVENTING_DATA_DIR",  # the Procfile: where nats-server and Redis keep their data
        "NATS_PORT",  # the Procfile: the local nats-server's ports
        "NATS_MONITOR_PORT",
        "EVENT_DISPLAY_PORT",  # eventing-display
        "EVENTING_KUBEBINS",  # tests/kubernetes: where kube-apiserver and etcd are
        "EVENTING_METRICS_SNAPSHOTS_DIR",  # eventing-proxy: its launcher sets it for its workers
    }
)
#: Prefixes that mark a variable as ours: a misspelled one would otherwise be ignored silently.
OUR_PREFIXES = (
    "NATS_",
    "BROKER_",
    "JS_",
    "JOB_",
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
    "SINK_",
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


def group_or_exit(group: Callable[..., G], program: str) -> G:
    """One group's settings from ``os.environ``, for a program that reads no other: the
    command-line tool runs in an operator's shell, where the services' variables, if any, are
    none of its business (a stale ``NATS_CREDS_FILE`` must not stop ``eventing dlq list``).
    Misspelled variables of ours are warned about as :func:`settings_or_exit` does.

    Raises:
        SystemExit: 2, a variable of the group is invalid (named on stderr, no traceback).
    """
    problems: dict[str, str] = {}
    value = _read(group, os.environ, problems)
    if problems:
        print(f"{program}: {ConfigError(problems)}", file=sys.stderr)
        raise SystemExit(2)
    for warning in unknown_variables(os.environ):
        print(f"{program}: warning: {warning}", file=sys.stderr, flush=True)
    return value


#: How a launcher (eventing-proxy, eventing-worker) tells the processes it starts where they keep
#: their metrics: not a setting, a folder the launcher makes for its own processes. It travels in
#: the environment because prometheus_client reads this variable itself, at import, to switch to
#: its multiprocess mode.
METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"


#: The proxy's metrics folder: each process writes a snapshot of its own values there, instead
#: of prometheus_client's file writes per value and request (:mod:`proxy.metrics`).
METRICS_SNAPSHOTS_DIR = "EVENTING_METRICS_SNAPSHOTS_DIR"


def hand_over_metrics_dir(path: str, *, snapshots: bool = False) -> None:
    """Make ``path`` the metrics folder of every process started from now on (and of this one,
    before it imports prometheus_client); ``snapshots``: a folder of snapshots, not
    prometheus_client's multiprocess files."""
    os.environ[METRICS_SNAPSHOTS_DIR if snapshots else METRICS_DIR] = path


def metrics_dir() -> str | None:
    """The metrics folder a launcher handed over, or None outside one (tests, a plain app)."""
    return os.environ.get(METRICS_DIR) or None


def metrics_snapshots_dir() -> str | None:
    """The snapshots folder a launcher handed over, or None outside one (tests, a plain app)."""
    return os.environ.get(METRICS_SNAPSHOTS_DIR) or None


def local_state_dir() -> Path:
    """Where the services keep what one machine's processes share (the job signing key made
    when ``JOB_SIGNING_KEY_FILE`` is unset): ``$XDG_STATE_HOME/eventing``, by default
    ``~/.local/state/eventing``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "eventing"


def markdown_table() -> str:
    """The README's configuration table, generated from :data:`VARIABLES`."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    rows += [f"| `{v.name}` | `{v.default}` | {v.help} |" for v in VARIABLES]
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())

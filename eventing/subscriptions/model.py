"""Kyma v1alpha2 Subscriptions: validation and consumer binding (pure).

A manifest (from a YAML file, or a Kubernetes object) becomes either a valid
:class:`Subscription` or an :class:`~eventing.errors.InvalidSubscription` whose message follows
Kyma's (``Subscription validation failed: spec.types: must not be empty``). Validation follows
Kyma's controller (kyma-eventing.md §3.2) with three differences: any http(s) sink is allowed
(the Kubernetes source adds Kyma's cluster-local rule), ``maxInFlightMessages`` must be a
positive integer (Kyma accepts 0 and negatives and passes them on to NATS), and ``spec.delivery``
(Knative's DeliverySpec field names) tunes the retry policy per subscription.

Each type of a subscription is bound to one durable JetStream consumer named as Kyma names it,
so existing NATS state maps over. What a subscription's status says is
:mod:`eventing.subscriptions.status`'s; this module only reads specs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import reprlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from eventing import units
from eventing.delivery.credentials import (
    BASIC,
    BEARER,
    CA,
    CERT,
    KEY,
    PASSWORD,
    USERNAME,
    SecretRef,
    SinkCredentials,
)
from eventing.delivery.retries import DeliveryPolicy
from eventing.errors import InvalidEvent, InvalidSubscription
from eventing.events import eventtypes
from eventing.redaction import mask_url
from eventing.settings import SUBJECT_PREFIX

API_VERSION = "eventing.kyma-project.io/v1alpha2"
KIND = "Subscription"
STANDARD, EXACT = "standard", "exact"
DEFAULT_NAMESPACE = "default"

#: The fields of ``spec`` (Kyma's, ``id`` read-only and unused, plus ``delivery``); the CRD in
#: deploy/base declares exactly these (tests/kubernetes/test_crd.py).
SPEC_FIELDS = frozenset({"id", "sink", "source", "types", "typeMatching", "config", "delivery"})
DELIVERY_FIELDS = frozenset(
    {
        "retry",
        "backoffPolicy",
        "backoffDelay",
        "timeout",
        "retryAfterMax",
        "signing",
        "auth",
        "tls",
        "deadLetterSink",
        "startFrom",
    }
)
#: The fields of spec.delivery.signing, .auth and .tls (the CRD declares exactly these).
SIGNING_FIELDS = frozenset({"secretFile", "secretRef"})
AUTH_FIELDS = frozenset({"type", "secretFile", "secretRef"})
TLS_FIELDS = frozenset({"caFile", "caRef", "certFile", "keyFile", "certRef"})
MAX_TYPES = 100  #: types (so consumers) of one subscription; the CRD's maxItems
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_EXACT_SUBJECT_UNSAFE = re.compile(r"[\s*>]")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")  #: what Kubernetes allows as a Secret's key
# A wrong value is quoted in a problem message, shortened: a manifest's value may be huge (an
# alias bomb's repr runs into gigabytes), and the message goes into status and logs.
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxdict = 2, 4, 4
_SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlong = 80, 80, 40


@dataclass(frozen=True, slots=True)
class TypeBinding:
    """One type of a subscription and the JetStream consumer that serves it."""

    original_type: str  #: as written in the subscription
    clean_type: str  #: as Kyma reports it in status.types
    subjects: tuple[str, ...]  #: filter subjects (the first one names the consumer)
    consumer_name: str


@dataclass(frozen=True, slots=True)
class Subscription:
    """A valid subscription: what to deliver where, and how."""

    namespace: str
    name: str
    sink: str
    source: str
    types: tuple[str, ...]
    type_matching: str
    max_in_flight: int
    delivery: DeliveryPolicy
    bindings: tuple[TypeBinding, ...]
    written: str  #: the spec as written, as JSON (the status echoes it)
    origin: str = ""  #: the manifest file it came from; empty for a Kubernetes object
    #: where the signing secret, sink credentials and TLS files are (relative files as written)
    credentials: SinkCredentials = dataclasses.field(default_factory=SinkCredentials)
    #: spec.delivery.deadLetterSink: where each dead letter is also sent (empty: nowhere)
    dead_letter_sink: str = ""
    #: ``spec.delivery.startFrom`` as written (an RFC 3339 time or a duration ago; empty: none):
    #: the manager replays the archive from then when it first creates the consumers
    start_from: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def spec_as_written(self) -> dict[str, Any]:
        """The spec as the manifest wrote it: no defaults added, durations as written."""
        return dict(json.loads(self.written))


def consumer_name(namespace: str, name: str, subject: str) -> str:
    """Kyma's consumer name: the first 32 hex digits of SHA-256 over ``ns/name/subject``."""
    return hashlib.sha256(f"{namespace}/{name}/{subject}".encode()).hexdigest()[:32]


def key_of(document: Mapping[str, Any]) -> str:
    """``namespace/name`` of a manifest, as far as it can be read (for status of broken ones)."""
    metadata = document.get("metadata") if isinstance(document, Mapping) else None
    metadata = metadata if isinstance(metadata, Mapping) else {}
    namespace, name = metadata.get("namespace") or DEFAULT_NAMESPACE, metadata.get("name")
    return f"{namespace if isinstance(namespace, str) else '?'}/{_text_or(name, '?')}"


def _text_or(value: Any, fallback: str) -> str:
    return value if isinstance(value, str) and value else fallback


def _shown(value: Any) -> str:
    return _SHOWN.repr(value)


def _names(keys: Any) -> str:
    """Field names for a message, sorted (a YAML key need not be a string)."""
    return ", ".join(sorted(_shown(k) if not isinstance(k, str) else k for k in keys))


def from_manifest(
    document: Mapping[str, Any],
    *,
    prefix: str,
    defaults: DeliveryPolicy,
    default_max_in_flight: int,
) -> Subscription:
    """Validate a manifest and make the subscription.

    Parameters:
        document: one parsed YAML document or Kubernetes object.
        prefix: ``EVENT_TYPE_PREFIX``; standard types must not start with it.
        defaults: the delivery policy ``spec.delivery`` overrides field by field.
        default_max_in_flight: when ``spec.config.maxInFlightMessages`` is absent.

    Raises:
        InvalidSubscription: every problem found, each naming its field.
    """
    problems: list[str] = []
    if document.get("apiVersion") != API_VERSION or document.get("kind") != KIND:
        raise InvalidSubscription(
            key_of(document), [f"apiVersion/kind: expected {API_VERSION} {KIND}"]
        )
    metadata = _mapping(document.get("metadata"), "metadata", problems)
    name = metadata.get("name")
    namespace = metadata.get("namespace") or DEFAULT_NAMESPACE
    for field, value in (("metadata.name", name), ("metadata.namespace", namespace)):
        if not isinstance(value, str) or not _NAME.match(value) or len(value) > 253:
            problems.append(
                f"{field}: must be a DNS-1123 name (lower-case letters, digits, '-', '.')"
            )
    spec = _mapping(document.get("spec"), "spec", problems)
    unknown = set(spec) - SPEC_FIELDS
    if unknown:  # a typo such as "delivry" would otherwise silently keep the defaults
        problems.append(f"spec: unknown field(s) {_names(unknown)}; expected {_names(SPEC_FIELDS)}")

    type_matching = spec.get("typeMatching", STANDARD)
    if type_matching not in (STANDARD, EXACT):
        problems.append(
            f"spec.typeMatching: must be {STANDARD!r} or {EXACT!r}, got {_shown(type_matching)}"
        )
    source = spec.get("source", "")
    if not isinstance(source, str):
        problems.append("spec.source: must be a string")
        source = ""
    if not source and type_matching != EXACT:
        problems.append("spec.source: must not be empty")
    elif source and not _is_uri_reference(source):
        problems.append("spec.source: must be valid as per RFC 3986")
    types = _types(spec.get("types"), type_matching, prefix, problems)
    max_in_flight = _max_in_flight(spec.get("config"), default_max_in_flight, problems)
    sink = _sink(spec.get("sink"), problems)
    delivery = _delivery(spec.get("delivery"), defaults, problems)
    credentials = _credentials(spec.get("delivery"), str(namespace), sink, problems)
    dead_letter_sink = _dead_letter_sink(spec.get("delivery"), problems)
    start_from = _start_from(spec.get("delivery"), problems)

    bindings: list[TypeBinding] = []
    if not problems:
        for event_type in types:
            try:
                bindings.append(
                    _bind(str(namespace), str(name), source, event_type, type_matching, prefix)
                )
            except InvalidEvent as exc:
                problems.append(f"spec.types: {exc}")
    if problems:
        raise InvalidSubscription(key_of(document), problems)
    return Subscription(
        namespace=str(namespace),
        name=str(name),
        sink=sink,
        source=source,
        types=tuple(types),
        type_matching=type_matching,
        max_in_flight=max_in_flight,
        delivery=delivery,
        bindings=tuple(bindings),
        credentials=credentials,
        dead_letter_sink=dead_letter_sink,
        start_from=start_from,
        # default=str: YAML reads an unquoted 2026-01-01 in spec.id or config as a date
        written=json.dumps(dict(spec), default=str),
    )


def _bind(
    namespace: str, name: str, source: str, event_type: str, matching: str, prefix: str
) -> TypeBinding:
    if matching == EXACT:
        if eventtypes.is_prefixed(event_type, prefix):
            subject = eventtypes.prefixed_subject(event_type, prefix)
        else:
            subject = f"{SUBJECT_PREFIX}.{event_type}"
        return TypeBinding(
            event_type, event_type, (subject,), consumer_name(namespace, name, subject)
        )
    subject = eventtypes.standard_subject(source, event_type)
    subjects = [subject]
    legacy = eventtypes.legacy_subject_of_type(source, event_type, prefix)
    if legacy is not None and legacy != subject:
        subjects.append(legacy)
    return TypeBinding(
        event_type,
        eventtypes.clean_type(event_type),
        tuple(subjects),
        consumer_name(namespace, name, subject),
    )


def _mapping(value: Any, field: str, problems: list[str]) -> Mapping[str, Any]:
    if isinstance(value, Mapping):
        return value
    problems.append(f"{field}: must be a mapping")
    return {}


def _types(value: Any, matching: str, prefix: str, problems: list[str]) -> list[str]:
    if not isinstance(value, list) or not value:
        problems.append("spec.types: must not be empty")
        return []
    if len(value) > MAX_TYPES:
        problems.append(f"spec.types: at most {MAX_TYPES} types, got {len(value)}")
        return []
    types: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item:
            problems.append("spec.types: must not be of length zero")
            continue
        if len(item.split(".")) < 2:
            problems.append(f"spec.types: must have minimum 2 segments, got {_shown(item)}")
        elif matching == STANDARD and eventtypes.is_prefixed(item, prefix):
            problems.append(
                f"spec.types: must not have {prefix} as type prefix, got {_shown(item)}"
            )
        elif matching == EXACT and _EXACT_SUBJECT_UNSAFE.search(item):
            problems.append(
                "spec.types: exact types must not contain whitespace, '*' or '>',"
                f" got {_shown(item)}"
            )
        types.append(item)
    duplicates = sorted(t for t, count in Counter(types).items() if count > 1)
    if duplicates:
        problems.append(f"spec.types: must not have duplicate types: {','.join(duplicates)}")
    return types


def _max_in_flight(config: Any, default: int, problems: list[str]) -> int:
    if config is None:
        return default
    if not isinstance(config, Mapping):
        problems.append("spec.config: must be a mapping of strings")
        return default
    raw = config.get("maxInFlightMessages")
    if raw is None:
        return default
    try:
        if isinstance(raw, bool) or not isinstance(raw, str | int):
            raise ValueError(raw)
        value = int(str(raw).strip())
    except ValueError:
        problems.append("spec.config: maxInFlightMessages must be a stringified int value")
        return default
    if not 1 <= value <= 10_000:
        problems.append(
            f"spec.config.maxInFlightMessages: must be between 1 and 10000, got {value}"
        )
    return value


def _sink(value: Any, problems: list[str], field: str = "spec.sink") -> str:
    if not isinstance(value, str) or not value:
        problems.append(f"{field}: must not be empty")
        return ""
    try:
        parts = urlsplit(value)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        valid = False
    if not valid:
        problems.append(f"{field}: must be an http(s) URL, got {_shown(mask_url(value))}")
    elif "@" in parts.netloc:
        # requests sends no URL userinfo, and a URL is shown in status, metrics and logs.
        problems.append(
            f"{field}: credentials in the URL are not sent; remove them and name a secret in"
            " spec.delivery.auth (type bearer or basic, secretFile or secretRef)"
        )
    return value


def _dead_letter_sink(delivery: Any, problems: list[str]) -> str:
    """spec.delivery.deadLetterSink, validated as the sink is; empty when absent."""
    if not isinstance(delivery, Mapping) or "deadLetterSink" not in delivery:
        return ""
    return _sink(delivery["deadLetterSink"], problems, "spec.delivery.deadLetterSink")


def _delivery(value: Any, defaults: DeliveryPolicy, problems: list[str]) -> DeliveryPolicy:
    if value is None:
        return defaults
    if not isinstance(value, Mapping):
        problems.append("spec.delivery: must be a mapping")
        return defaults
    unknown = set(value) - DELIVERY_FIELDS
    if unknown:
        problems.append(
            f"spec.delivery: unknown field(s) {_names(unknown)}; expected {_names(DELIVERY_FIELDS)}"
        )
    changes: dict[str, Any] = {}
    if "retry" in value:
        retry = value["retry"]
        if isinstance(retry, bool) or not isinstance(retry, int) or not 0 <= retry <= 100:
            problems.append(
                f"spec.delivery.retry: must be an integer from 0 to 100, got {_shown(retry)}"
            )
        else:
            changes["retry"] = retry
    if "backoffPolicy" in value:
        policy = value["backoffPolicy"]
        if policy not in ("exponential", "linear"):
            problems.append(
                f"spec.delivery.backoffPolicy: must be exponential or linear, got {_shown(policy)}"
            )
        else:
            changes["backoff_policy"] = policy
    for field, attribute, minimum in (
        ("backoffDelay", "backoff_delay", 0.0),
        ("timeout", "timeout", 0.001),
        ("retryAfterMax", "retry_after_max", 0.0),
    ):
        if field in value:
            raw = value[field]
            try:
                seconds = units.iso_duration(raw if isinstance(raw, str) else "")
            except ValueError:
                problems.append(
                    f"spec.delivery.{field}: expected an ISO-8601 duration such as PT0.5S or"
                    f" PT2M, got {_shown(raw)}"
                )
                continue
            if seconds < minimum:
                problems.append(f"spec.delivery.{field}: must be longer than zero")
                continue
            changes[attribute] = seconds
    return replace(defaults, **changes)


def _start_from(delivery: Any, problems: list[str]) -> str:
    """``spec.delivery.startFrom`` as written, once it reads as a moment. A duration is counted
    back from when the manager creates the consumers, so only its form is checked here."""
    if not isinstance(delivery, Mapping) or "startFrom" not in delivery:
        return ""
    value = delivery["startFrom"]
    if isinstance(value, datetime) and value.tzinfo is not None:
        value = value.isoformat()  # YAML reads an unquoted RFC 3339 time as a datetime
    try:
        units.moment(value if isinstance(value, str) else "", 0.0)
    except ValueError:
        problems.append(
            "spec.delivery.startFrom: expected an RFC 3339 time such as 2026-12-01T10:00:00Z or"
            f" a duration ago such as 15m or 2h, got {_shown(value)}"
        )
        return ""
    return str(value)


def _credentials(delivery: Any, namespace: str, sink: str, problems: list[str]) -> SinkCredentials:
    """Where spec.delivery's signing secret, sink credentials and TLS files are.

    Each names a file (``…File``: a path, relative to the manifest's folder or absolute) or a
    Secret of the subscription's namespace (``…Ref``); which of them a source allows is the
    source's rule (the Kubernetes one reads no file of the worker's).
    """
    if not isinstance(delivery, Mapping):
        return SinkCredentials()
    found = SinkCredentials()
    signing = _section(delivery, "signing", SIGNING_FIELDS, problems)
    if signing is not None:
        secret = _secret(signing, "spec.delivery.signing", namespace, problems, key_required=True)
        found = replace(found, signing=secret)
    auth = _section(delivery, "auth", AUTH_FIELDS, problems)
    if auth is not None:
        kind = auth.get("type")
        if kind not in (BEARER, BASIC):
            problems.append(
                f"spec.delivery.auth.type: must be {BEARER} or {BASIC}, got {_shown(kind)}"
            )
        elif kind == BASIC and isinstance(auth.get("secretRef"), Mapping):
            # a kubernetes.io/basic-auth Secret: its two keys, user name and password
            ref = _secret(
                auth,
                "spec.delivery.auth",
                namespace,
                problems,
                key_required=False,
                keys=(USERNAME, PASSWORD),
            )
            if ref is not None:
                found = replace(found, auth_type=kind, auth=_basic_keys(ref))
        else:
            ref = _secret(auth, "spec.delivery.auth", namespace, problems, key_required=True)
            if ref is not None:
                found = replace(found, auth_type=kind, auth=(ref,))
    tls = _section(delivery, "tls", TLS_FIELDS, problems)
    if tls is not None:
        found = replace(found, **_tls(tls, namespace, problems))
        if urlsplit(sink).scheme != "https":
            problems.append("spec.delivery.tls: applies to an https sink only")
    return found


def _section(
    delivery: Mapping[str, Any], name: str, fields: frozenset[str], problems: list[str]
) -> Mapping[str, Any] | None:
    if name not in delivery:
        return None
    value = delivery[name]
    if not isinstance(value, Mapping):
        problems.append(f"spec.delivery.{name}: must be a mapping")
        return None
    unknown = set(value) - fields
    if unknown:
        problems.append(
            f"spec.delivery.{name}: unknown field(s) {_names(unknown)}; expected {_names(fields)}"
        )
        return None
    return value


def _secret(
    section: Mapping[str, Any],
    field: str,
    namespace: str,
    problems: list[str],
    *,
    key_required: bool,
    file: str = "secretFile",
    ref: str = "secretRef",
    default_key: str = "",
    keys: tuple[str, ...] | None = None,
) -> SecretRef | None:
    """The one secret ``section`` names, as ``file`` or as ``ref`` (``{name, key}``; only
    ``{name}`` when the Secret's ``keys`` are fixed)."""
    if (file in section) == (ref in section):
        problems.append(f"{field}: needs exactly one of {file} and {ref}")
        return None
    if file in section:
        path = section[file]
        if not isinstance(path, str) or not path.strip():
            problems.append(f"{field}.{file}: must be a file path, got {_shown(path)}")
            return None
        return SecretRef(file=path)
    value = section[ref]
    if not isinstance(value, Mapping) or set(value) - {"name", "key"}:
        problems.append(f"{field}.{ref}: must be a mapping of name and key")
        return None
    name, key = value.get("name"), value.get("key", default_key)
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > 253:
        problems.append(f"{field}.{ref}.name: must be the name of a Secret, got {_shown(name)}")
        return None
    if keys is not None and key:
        problems.append(f"{field}.{ref}.key: the Secret's keys are {' and '.join(keys)}; name none")
        return None
    if key_required and not key:
        problems.append(f"{field}.{ref}.key: must name the key of the Secret that holds it")
        return None
    if key and (not isinstance(key, str) or not _SECRET_KEY.match(key)):
        problems.append(f"{field}.{ref}.key: must be a key of a Secret, got {_shown(key)}")
        return None
    return SecretRef(namespace=namespace, name=name, key=str(key or ""))


def _basic_keys(ref: SecretRef) -> tuple[SecretRef, ...]:
    return (replace(ref, key=USERNAME), replace(ref, key=PASSWORD))


def _tls(tls: Mapping[str, Any], namespace: str, problems: list[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if "caFile" in tls or "caRef" in tls:
        found["ca"] = _secret(
            tls,
            "spec.delivery.tls",
            namespace,
            problems,
            key_required=False,
            file="caFile",
            ref="caRef",
            default_key=CA,
        )
    if "certRef" in tls and ("certFile" in tls or "keyFile" in tls):
        problems.append("spec.delivery.tls: needs certRef, or certFile and keyFile, not both")
    elif "certRef" in tls:
        pair = _secret(
            tls,
            "spec.delivery.tls",
            namespace,
            problems,
            key_required=False,
            file="certFile",
            ref="certRef",
            keys=(CERT, KEY),
        )
        if pair is not None:
            found["cert"], found["key"] = replace(pair, key=CERT), replace(pair, key=KEY)
    elif ("certFile" in tls) != ("keyFile" in tls):
        problems.append("spec.delivery.tls: certFile and keyFile go together")
    elif "certFile" in tls:
        for field, attribute in (("certFile", "cert"), ("keyFile", "key")):
            path = tls[field]
            if not isinstance(path, str) or not path.strip():
                problems.append(
                    f"spec.delivery.tls.{field}: must be a file path, got {_shown(path)}"
                )
            else:
                found[attribute] = SecretRef(file=path)
    if not found and not problems:
        problems.append("spec.delivery.tls: names no CA and no client certificate")
    return found


def _is_uri_reference(value: str) -> bool:
    if any(c.isspace() or ord(c) < 0x20 for c in value):
        return False
    try:
        urlsplit(value)
    except ValueError:
        return False
    return True


def subscribed(
    application: str, subscriptions: tuple[Subscription, ...], prefix: str
) -> list[dict[str, str]]:
    """Kyma's ``/<application>/v1/events/subscribed`` answer: ``{name, version}`` pairs.

    Standard subscriptions count when their source is the application; exact ones when their
    type starts with ``<prefix>.<application>.``. Each type is split at its last dot.
    """
    pairs: set[tuple[str, str]] = set()
    app_prefix = f"{prefix}.{application}."
    for sub in subscriptions:
        for event_type in sub.types:
            if sub.type_matching == STANDARD and sub.source == application:
                name, _, version = event_type.rpartition(".")
            elif sub.type_matching == EXACT and event_type.startswith(app_prefix):
                name, _, version = event_type[len(app_prefix) :].rpartition(".")
            else:
                continue
            if name:
                pairs.add((name, version))
    return [{"name": name, "version": version} for name, version in sorted(pairs)]

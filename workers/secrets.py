"""The secrets a delivery needs, read by the worker itself: files, or Kubernetes Secrets.

Jobs name where a subscription's signing secret, sink credentials and TLS files are
(:mod:`eventing.delivery.credentials`), never what they hold, because anyone who reaches the
broker can read a job. The worker reads each value when a job needs it and keeps it
:data:`TTL` seconds, so a rotated file or Secret takes effect within that time without a
restart, and a busy subscription costs one read per TTL, not one per event. In the Kubernetes
mode a worker reads Secrets through the API (RBAC: ``get`` on ``secrets`` in the namespaces it
serves), and uses only those labelled :data:`DELIVERY_LABEL`; the client is made at the first
Secret needed, so the folder mode never loads it.

A value that cannot be read or is malformed fails the attempt as temporary (it names the
reference and why, never the value): the policy's retries give an operator time to fix it, and
the dead letter says what was wrong. PEM values of a Secret (CA, client certificate and key)
are written to files of a folder only this process can read, because ``ssl`` loads them from
files only.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eventing.delivery import signing
from eventing.delivery.credentials import BASIC, SecretRef, SinkCredentials
from eventing.delivery.jobs import DeliveryJob
from eventing.errors import TemporaryDeliveryError
from eventing.settings import SourceSettings

TTL = 10.0  #: seconds a value read is used before it is read again
_MAX_VALUE_BYTES = 64 * 1024  #: a CA bundle may be long; nothing we read is longer
#: The label a Secret must carry for a delivery to use it: a subscription may name only Secrets
#: made for deliveries, not any Secret of its namespace that the worker could read (whoever may
#: write a Subscription could otherwise send a database password to a sink of their choice).
DELIVERY_LABEL = "eventing.kyma-project.io/delivery-secret"


@dataclass(frozen=True, slots=True)
class Outbound:
    """What one attempt adds to its request: headers, and how it checks and proves TLS."""

    headers: dict[str, str]
    verify: bool | str = True  #: True: the system's CAs; else a CA bundle file
    cert: tuple[str, str] | None = None  #: client certificate and key files


NOTHING = Outbound({})


class Secrets:
    """Reads and caches the values :class:`SinkCredentials` name (thread-safe)."""

    def __init__(
        self,
        source: SourceSettings,
        *,
        ttl: float = TTL,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._source = source
        self._ttl, self._clock, self._wall_clock = ttl, clock, wall_clock
        self._lock = threading.Lock()
        self._values: dict[SecretRef, tuple[float, bytes]] = {}
        self._secrets_api: Any = None
        self._folder: str | None = None

    def outbound(self, job: DeliveryJob, body: bytes) -> Outbound:
        """What an attempt of ``job`` made now adds to its request.

        Raises:
            TemporaryDeliveryError: a secret cannot be read or is malformed.
        """
        credentials = job.credentials
        if not credentials:
            return NOTHING
        headers: dict[str, str] = {}
        if credentials.signing is not None:
            keys = self._parsed(credentials.signing, "signing secret", signing.parse_secrets)
            message_id = signing.message_id(job.consumer, job.stream_sequence)
            headers |= signing.headers(keys, message_id, int(self._wall_clock()), body)
        if credentials.auth_type:
            headers["Authorization"] = self._authorization(credentials)
        verify: bool | str = True
        if credentials.ca is not None:
            verify = self._file(credentials.ca, "CA bundle")
        cert = None
        if credentials.cert is not None and credentials.key is not None:
            cert = (
                self._file(credentials.cert, "client certificate"),
                self._file(credentials.key, "client key"),
            )
        return Outbound(headers, verify, cert)

    def _authorization(self, credentials: SinkCredentials) -> str:
        texts = [
            self._text(ref, f"{credentials.auth_type} credentials") for ref in credentials.auth
        ]
        if credentials.auth_type != BASIC:
            return f"Bearer {_one_line(texts[0], credentials.auth[0], 'bearer token')}"
        if len(texts) == 2:  # a Secret's username and password
            pair = f"{texts[0].strip()}:{texts[1].strip()}"
        else:
            pair = _one_line(texts[0], credentials.auth[0], "basic credentials")
            if ":" not in pair:
                raise TemporaryDeliveryError(
                    f"basic credentials ({credentials.auth[0]}): expected user:password"
                )
        return "Basic " + base64.b64encode(pair.encode()).decode()

    def _parsed(
        self, ref: SecretRef, what: str, parse: Callable[[str], tuple[bytes, ...]]
    ) -> tuple[bytes, ...]:
        try:
            return parse(self._text(ref, what))
        except ValueError as exc:
            raise TemporaryDeliveryError(f"{what} ({ref}): {exc}") from None

    def _text(self, ref: SecretRef, what: str) -> str:
        try:
            return self._value(ref, what).decode()
        except UnicodeDecodeError:
            raise TemporaryDeliveryError(f"{what} ({ref}): is not UTF-8 text") from None

    def _file(self, ref: SecretRef, what: str) -> str:
        """A file holding ``ref``'s value: its own, or one written for a Secret's PEM."""
        if ref.file:
            self._value(ref, what)  # readable now, else the attempt fails naming it
            return ref.file
        value = self._value(ref, what)
        with self._lock:
            if self._folder is None:
                self._folder = tempfile.mkdtemp(prefix="eventing-worker-tls-")  # mode 0700
            path = os.path.join(self._folder, hashlib.sha256(value).hexdigest())
        if not os.path.exists(path):
            descriptor, temporary = tempfile.mkstemp(dir=os.path.dirname(path))  # mode 0600
            with os.fdopen(descriptor, "wb") as file:
                file.write(value)
            os.replace(temporary, path)
        return path

    def _value(self, ref: SecretRef, what: str) -> bytes:
        now = self._clock()
        with self._lock:
            cached = self._values.get(ref)
        if cached is not None and cached[0] > now:
            return cached[1]
        value = self._read_file(ref, what) if ref.file else self._read_secret(ref, what)
        with self._lock:
            self._values[ref] = (now + self._ttl, value)
        return value

    def _read_file(self, ref: SecretRef, what: str) -> bytes:
        try:
            with open(ref.file, "rb") as file:
                value = file.read(_MAX_VALUE_BYTES + 1)
        except OSError as exc:
            raise TemporaryDeliveryError(
                f"{what} ({ref}): cannot be read: {exc.strerror}"
            ) from None
        if len(value) > _MAX_VALUE_BYTES:
            raise TemporaryDeliveryError(f"{what} ({ref}): larger than {_MAX_VALUE_BYTES} bytes")
        return value

    def _read_secret(self, ref: SecretRef, what: str) -> bytes:
        from kubernetes import client  # the folder mode never loads the Kubernetes client

        from eventing.sources import cluster

        with self._lock:
            if self._secrets_api is None:
                try:
                    self._secrets_api = client.CoreV1Api(cluster.api_client(self._source))
                except Exception as exc:  # no kubeconfig, no service-account token mounted
                    raise TemporaryDeliveryError(
                        f"{what} ({ref}): no Kubernetes API to read it from: {exc}"
                    ) from None
            api = self._secrets_api
        try:
            secret = api.read_namespaced_secret(ref.name, ref.namespace)
        except client.ApiException as exc:
            raise TemporaryDeliveryError(
                f"{what} ({ref}): the API server answered {exc.status} {exc.reason}"
            ) from None
        except Exception as exc:  # the API server is unreachable: connection errors of urllib3
            raise TemporaryDeliveryError(
                f"{what} ({ref}): cannot reach the API server: {type(exc).__name__}"
            ) from None
        labels = (secret.metadata.labels if secret.metadata else None) or {}
        if labels.get(DELIVERY_LABEL) != "true":
            raise TemporaryDeliveryError(
                f'{what} ({ref}): the Secret lacks the label {DELIVERY_LABEL}: "true" that'
                " lets deliveries use it"
            )
        data = secret.data or {}
        if ref.key not in data:
            raise TemporaryDeliveryError(f"{what} ({ref}): the Secret has no such key")
        return base64.b64decode(data[ref.key])


def _one_line(text: str, ref: SecretRef, what: str) -> str:
    value = text.strip()
    if not value or any(c in value for c in "\r\n") or not value.isprintable():
        raise TemporaryDeliveryError(f"{what} ({ref}): expected one line of visible text")
    return value

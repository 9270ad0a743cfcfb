"""Signed delivery jobs: a worker acts only on what the manager enqueued.

Whoever can write to the broker (Redis, RabbitMQ) could otherwise make workers POST anywhere
and publish an "ack" to any subject (an event subject stores it as an event). So the manager
signs every job with a key shared by the manager and the workers (``JOB_SIGNING_KEY_FILE``):
HMAC-SHA256 over the job's canonical JSON (:func:`canonical`), carried beside the job in the
dramatiq message. A worker admits a job (:func:`eventing.delivery.jobs.admit`) only when its
signature matches and its ack subject is a reply subject of the configured stream's consumer the
job names (:func:`ack_subject_problem`): a job signed with a stolen key still cannot ack onto an
event subject or another stream.

Without ``JOB_SIGNING_KEY_FILE``, :func:`load_key` uses a key of the machine's own: the first
process to start creates it (random, 0600, created whole or not at all), the others read it. So
``honcho start`` and any number of workers on one machine agree with nothing to configure;
processes on other machines need the setting (their jobs are refused, and say so, otherwise).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from eventing.errors import ConfigError

logger = logging.getLogger(__name__)

SCHEME = "hmac-sha256"
KEY_FILE_NAME = "job-signing.key"
MIN_KEY_BYTES = 32
_KEY_SETTING = "JOB_SIGNING_KEY_FILE"

# $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>, or the
# newer form with a domain and an account hash before the stream and a random token at the end.
_NUMBERS = r"\d+\.\d+\.\d+\.\d+\.\d+"
_TOKEN = r"[^.*>\s]+"
_ACK_V1 = re.compile(rf"^\$JS\.ACK\.(?P<stream>{_TOKEN})\.(?P<consumer>{_TOKEN})\.{_NUMBERS}$")
_ACK_V2 = re.compile(
    rf"^\$JS\.ACK\.{_TOKEN}\.{_TOKEN}\.(?P<stream>{_TOKEN})\.(?P<consumer>{_TOKEN})\.{_NUMBERS}"
    rf"(\.{_TOKEN})?$"
)


def canonical(job: Mapping[str, Any]) -> bytes:
    """The bytes a job's signature covers: its JSON with sorted keys, no spaces, ASCII only.

    The worker computes them from the job as decoded from the broker, so any JSON encoder on
    the way (dramatiq's) may reorder or re-space the job without breaking the signature.
    """
    return json.dumps(job, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign(job: Mapping[str, Any], key: bytes) -> str:
    """The signature of ``job`` (``hmac-sha256=<hex>``)."""
    return f"{SCHEME}={hmac.new(key, canonical(job), hashlib.sha256).hexdigest()}"


def signed_by(job: Mapping[str, Any], signature: Any, key: bytes) -> bool:
    """Whether ``signature`` is ``job``'s with ``key`` (compared in constant time)."""
    return isinstance(signature, str) and hmac.compare_digest(
        signature.encode(), sign(job, key).encode()
    )


def ack_subject_problem(
    subject: str, *, streams: Collection[str], consumer: str | None = None
) -> str | None:
    """Why ``subject`` is no reply subject of ``consumer`` (None: of any consumer) on one of
    ``streams``, or None if it is.

    Acks, NAKs, keepalives and terms go only to such subjects: anything else would publish into
    the event stream or another stream's consumers.
    """
    match = _ACK_V1.match(subject) or _ACK_V2.match(subject)
    if match is None:
        return "the ack subject is no JetStream reply subject ($JS.ACK.<stream>.<consumer>...)"
    if match["stream"] not in streams:
        return f"the ack subject is not of the streams {', '.join(sorted(streams))}"
    if consumer is not None and match["consumer"] != consumer:
        return "the ack subject is not of the job's consumer"
    return None


def load_key(path: str, state_dir: Path) -> bytes:
    """The job signing key: the file ``path`` names, or (``path`` empty) this machine's own in
    ``state_dir``, created by whichever process comes first.

    Raises:
        ConfigError: the file cannot be read (or this machine's own cannot be made), or holds a
            key shorter than :data:`MIN_KEY_BYTES`.
    """
    if path:
        return _read_key(Path(path))
    own = state_dir / KEY_FILE_NAME
    try:
        created = _create_key(own)
    except OSError as exc:  # a read-only home in a container, say
        raise ConfigError(
            {_KEY_SETTING: f"unset, and this machine's own key cannot be made in {own}: {exc}"}
        ) from None
    if created:
        logger.info(
            "created this machine's job signing key %s (%s unset); processes on other machines"
            " need %s pointing at a copy of it",
            own,
            _KEY_SETTING,
            _KEY_SETTING,
        )
    return _read_key(own)


def _create_key(path: Path) -> bool:
    """Create ``path`` holding a new random key, unless it exists; whether this call made it.

    The key is written to a private temporary file first and linked to ``path`` in one step
    (``link`` fails if ``path`` exists), so a process that reads ``path`` reads a whole key, and
    of two processes starting together exactly one key wins.
    """
    if path.exists():
        return False
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_hex(MIN_KEY_BYTES) + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.link(temporary, path)
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    return True


def _read_key(path: Path) -> bytes:
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError({_KEY_SETTING: f"cannot read the key file {path}: {exc}"}) from None
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            {_KEY_SETTING: f"the key in {path} is shorter than {MIN_KEY_BYTES} bytes"}
        )
    return key

"""Who is publishing: the bearer credential of a request, checked against API keys or a JWKS.

The views call :func:`publisher_of` once per request, before anything is parsed; what the
publisher may publish is :mod:`eventing.publishers`' (pure) decision. This module does the IO
around it: it reads the keys and rules files again when they change (a ``stat`` at most once a
second, so a request pays nothing for it) and tells an API key from a JWT, which
:mod:`proxy.tokens` verifies.

A file that breaks while the proxy runs keeps the last good version in force, with an error in
the log: a half-written file must not lock every publisher out, nor let everyone in. At start,
a missing or broken file is a configuration error.

With neither ``PROXY_API_KEYS_FILE`` nor ``PROXY_JWKS`` set, publishing is open: every request is
the publisher ``anonymous``, and :func:`warn_if_open` says so once at start.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from flask import current_app, request

from eventing import publishers
from eventing.errors import ConfigError, Forbidden, Unauthenticated
from eventing.publishers import Grant
from eventing.settings import ProxySettings

if TYPE_CHECKING:
    from proxy import tokens  # imported where JWTs are configured: PyJWT costs 9 MiB a process
    from proxy.metrics import ProxyMetrics

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Longest Authorization header read; a Kubernetes token is about 1 KiB.
MAX_CREDENTIAL = 8192
_STAT_EVERY = 1.0  #: seconds between two looks at a watched file


def warn_if_open(settings: ProxySettings) -> None:
    """Log one WARNING when publishing is open to anyone who reaches the port."""
    if not settings.api_keys_file and not settings.jwks:
        logger.warning(
            "publishing is open: anyone who reaches %s:%s may publish any event; set"
            " PROXY_API_KEYS_FILE or PROXY_JWKS to require credentials",
            settings.host,
            settings.port,
        )


def publisher_of() -> Grant:
    """The publisher of the current request, counted in the metrics when refused.

    Raises:
        Unauthenticated: credentials are required and missing, malformed or not valid.
        PublishError: (503) the JWKS cannot be fetched, so no token can be verified now.
    """
    authenticator: Authenticator = current_app.extensions["eventing.auth"]
    try:
        return authenticator.authenticate(request.headers.get("Authorization"))
    except Unauthenticated as refusal:
        count_refusal(current_app.extensions["eventing.metrics"], refusal)
        raise


def check(grant: Grant, events: list[tuple[str, str]]) -> None:
    """:func:`eventing.publishers.check`, counting a refusal under the publisher's name."""
    try:
        publishers.check(grant, events)
    except Forbidden as refusal:
        count_refusal(current_app.extensions["eventing.metrics"], refusal)
        raise


def count_refusal(metrics: ProxyMetrics, refusal: Unauthenticated | Forbidden) -> None:
    """Count a request refused for its credentials: unauthenticated, or forbidden to its
    publisher."""
    if isinstance(refusal, Forbidden):
        metrics.refused.labels(refusal.publisher, "forbidden").inc()
    else:
        metrics.refused.labels("", "unauthenticated").inc()


class Authenticator:
    """The credentials of one proxy process: API keys, a JWKS and claim rules, each optional."""

    def __init__(self, settings: ProxySettings) -> None:
        """Read the configured files.

        Raises:
            ConfigError: a keys or rules file is missing or invalid.
        """
        self.open = not settings.api_keys_file and not settings.jwks
        self._keys = (
            WatchedFile(settings.api_keys_file, publishers.parse_api_keys)
            if settings.api_keys_file
            else None
        )
        self._tokens: tokens.TokenVerifier | None = None
        if settings.jwks:
            from proxy import tokens

            self._tokens = tokens.TokenVerifier(
                tokens.KeySet(settings),
                WatchedFile(settings.jwt_rules_file, publishers.parse_claim_rules).current,
                issuer=settings.jwt_issuer,
                audience=settings.jwt_audience,
            )

    @property
    def verifies_tokens(self) -> bool:
        """Whether a request may bring a JWT, whose verification may fetch the JWKS."""
        return self._tokens is not None

    def authenticate(self, authorization: str | None) -> Grant:
        """The grant of the request's ``Authorization`` header (None: it has none).

        Raises:
            Unauthenticated: see :func:`publisher_of`.
            PublishError: see :func:`publisher_of`.
        """
        if self.open:
            return publishers.OPEN
        credential = _bearer(authorization)
        if self._keys is not None:
            grant = publishers.key_grant(self._keys.current(), credential)
            if grant is not None:
                return grant
        if self._tokens is not None and credential.count(".") == 2:
            return self._tokens.verify(credential)
        raise Unauthenticated("the bearer credential is no known API key", error="invalid_token")


def _bearer(authorization: str | None) -> str:
    if authorization is None or not authorization.strip():
        raise Unauthenticated(
            "this endpoint needs credentials: send Authorization: Bearer <API key or JWT>"
        )
    if len(authorization) > MAX_CREDENTIAL:
        raise Unauthenticated(
            f"the Authorization header is longer than {MAX_CREDENTIAL} characters",
            error="invalid_request",
        )
    scheme, _, credential = authorization.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not publishers.BEARER_TOKEN.match(credential):
        raise Unauthenticated(
            "expected Authorization: Bearer <credential> (letters, digits and - . _ ~ + /)",
            error="invalid_request",
        )
    return credential


class WatchedFile(Generic[T]):
    """A file's parsed content, parsed again when the file changes (its inode, size or mtime).

    Looks at the file at most once every :data:`_STAT_EVERY` seconds; between looks, and while
    the file is missing or does not parse, :meth:`current` returns the last good content.
    """

    def __init__(
        self,
        path: str,
        parse: Callable[[str, str], T],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Read and parse the file.

        Raises:
            ConfigError: it cannot be read, or does not parse.
        """
        self._path = path
        self._parse = parse
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self._stamp = self._stat()
            self._content = parse(self._read(), path)
        except OSError as exc:
            raise ConfigError({path: f"cannot read: {exc.strerror or exc}"}) from None
        self._looked = clock()

    def current(self) -> T:
        """The content as of the last look, looking again if the last is a second old."""
        now = self._clock()
        if now - self._looked >= _STAT_EVERY and self._lock.acquire(blocking=False):
            try:
                self._looked = now
                self._reload()
            finally:
                self._lock.release()
        return self._content

    def _reload(self) -> None:
        try:
            stamp = self._stat()
            if stamp == self._stamp:
                return
            self._stamp = stamp
            self._content = self._parse(self._read(), self._path)
        except OSError as exc:
            logger.error("cannot read %s, keeping its last good version: %s", self._path, exc)
        except ConfigError as exc:
            logger.error("%s is invalid, keeping its last good version: %s", self._path, exc)
        else:
            logger.info("reloaded %s", self._path)

    def _stat(self) -> tuple[int, int, int, int]:
        info = os.stat(self._path)
        return info.st_ino, info.st_dev, info.st_size, info.st_mtime_ns

    def _read(self) -> str:
        with open(self._path, encoding="utf-8", errors="replace") as file:
            return file.read()

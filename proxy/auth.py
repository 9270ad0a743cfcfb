"""Who is publishing: the bearer credential of a request, checked against API keys or a JWKS.

The views call :func:`publisher_of` once per request, before anything is parsed; what the
publisher may publish is :mod:`eventing.publishers`' (pure) decision. This module does the IO
around it: it reads the keys and rules files again when they change (a ``stat`` at most once a
second, so a request pays nothing for it), fetches the JWKS (a file, or an https URL, again when
a token names a key id it does not know, at most every :data:`_REFETCH_EVERY` seconds, and every
:data:`_JWKS_MAX_AGE` seconds anyway so a removed key stops working), and verifies tokens with
PyJWT.

A file that breaks while the proxy runs keeps the last good version in force, with an error in
the log: a half-written file must not lock every publisher out, nor let everyone in. At start,
a missing or broken file is a configuration error.

With neither ``PROXY_API_KEYS_FILE`` nor ``PROXY_JWKS`` set, publishing is open: every request is
the publisher ``anonymous``, and :func:`warn_if_open` says so once at start.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import jwt
from flask import current_app, request

from eventing import publishers
from eventing.errors import ConfigError, EventingError, PublishError, Unauthenticated
from eventing.publishers import ClaimRule, Grant
from eventing.settings import ProxySettings

if TYPE_CHECKING:  # importing the metrics fixes prometheus_client's mode: only create_app may
    from proxy.metrics import ProxyMetrics

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Longest Authorization header read; a Kubernetes token is about 1 KiB.
MAX_CREDENTIAL = 8192
#: Signature algorithms a JWT may use: asymmetric only, so a JWKS's public key can never serve
#: as an HMAC secret, and never ``none``.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
_LEEWAY = 10  #: seconds of clock skew tolerated on exp, nbf and iat
_STAT_EVERY = 1.0  #: seconds between two looks at a watched file
_REFETCH_EVERY = 10.0  #: least seconds between two JWKS fetches for unknown key ids
_JWKS_MAX_AGE = 300.0  #: a JWKS older than this is fetched again
_FETCH_TIMEOUT = 5.0
_MAX_JWKS_BYTES = 1 << 20
_VERIFIED_FOR = 60.0  #: longest a verified token's claims are remembered
_MAX_VERIFIED = 4096  #: tokens remembered at most (about 2 KiB each)


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
    except Unauthenticated:
        metrics: ProxyMetrics = current_app.extensions["eventing.metrics"]
        metrics.refused.labels("", "unauthenticated").inc()
        raise


def check(grant: Grant, events: list[tuple[str, str]]) -> None:
    """:func:`eventing.publishers.check`, counting a refusal under the publisher's name."""
    try:
        publishers.check(grant, events)
    except EventingError:
        metrics: ProxyMetrics = current_app.extensions["eventing.metrics"]
        metrics.refused.labels(grant.name, "forbidden").inc()
        raise


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
        self._tokens = (
            _TokenVerifier(
                _KeySet(settings),
                WatchedFile(settings.jwt_rules_file, publishers.parse_claim_rules),
                issuer=settings.jwt_issuer,
                audience=settings.jwt_audience,
            )
            if settings.jwks
            else None
        )

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


@dataclass(frozen=True, slots=True)
class _Fetched:
    keys: dict[str | None, jwt.PyJWK]  #: by kid (None: a key without one)
    at: float


class _KeySet:
    """The JWKS, fetched lazily, again for an unknown key id (not more often than every
    :data:`_REFETCH_EVERY` s) and once it is :data:`_JWKS_MAX_AGE` s old."""

    def __init__(
        self, settings: ProxySettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._location = settings.jwks
        self._ca_file = settings.jwks_ca_file
        self._token_file = settings.jwks_token_file
        self._clock = clock
        self._lock = threading.Lock()
        self._fetched: _Fetched | None = None
        self._attempted = float("-inf")

    def key(self, kid: str | None) -> jwt.PyJWK:
        """The key ``kid`` names (None: the only key of a set without ids).

        Raises:
            Unauthenticated: no such key, even after fetching the set again.
            PublishError: (503) the set has never been fetched and cannot be now.
        """
        fetched = self._fetched
        now = self._clock()
        if fetched is None or now - fetched.at >= _JWKS_MAX_AGE or kid not in fetched.keys:
            fetched = self._refetch(now)
        found = fetched.keys.get(kid)
        if found is None and kid is None and len(fetched.keys) == 1:
            found = next(iter(fetched.keys.values()))
        if found is None:
            raise Unauthenticated(
                f"the token's key id {str(kid)[:100]!r} is not in the JWKS",
                error="invalid_token",
            )
        return found

    def _refetch(self, now: float) -> _Fetched:
        """The set fetched again, unless the last attempt was under :data:`_REFETCH_EVERY`
        seconds ago: unknown key ids cost whoever sends them, not the JWKS's server."""
        with self._lock:
            fetched = self._fetched
            if now - self._attempted >= _REFETCH_EVERY:
                self._attempted = now
                try:
                    self._fetched = fetched = _Fetched(self._load(), now)
                except (OSError, ValueError, jwt.PyJWTError) as exc:
                    logger.error("cannot fetch the JWKS from %s: %s", self._location, exc)
            if fetched is None:
                raise PublishError(
                    f"cannot verify bearer tokens right now: the JWKS ({self._location})"
                    " cannot be fetched",
                    status=503,
                )
            return fetched

    def _load(self) -> dict[str | None, jwt.PyJWK]:
        if self._location.startswith("https://"):
            text = self._download()
        else:
            with open(self._location, "rb") as file:
                text = file.read(_MAX_JWKS_BYTES + 1)
        if len(text) > _MAX_JWKS_BYTES:
            raise ValueError(f"larger than {_MAX_JWKS_BYTES} bytes")
        document = json.loads(text)
        if not isinstance(document, dict):
            raise ValueError("expected a JSON object with keys")
        keys = jwt.PyJWKSet.from_dict(document).keys
        return {
            key.key_id: key
            for key in keys
            if key.public_key_use in (None, "sig") and key.algorithm_name in ALGORITHMS
        }

    def _download(self) -> bytes:
        context = ssl.create_default_context(cafile=self._ca_file or None)
        headers = {
            "Accept": "application/jwk-set+json, application/json"
        }  # the API server: 406 else
        if self._token_file:
            with open(self._token_file, encoding="utf-8") as file:
                headers["Authorization"] = f"Bearer {file.read().strip()}"
        fetch = urllib.request.Request(self._location, headers=headers)
        opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=context), _NoRedirects()
        )
        with opener.open(fetch, timeout=_FETCH_TIMEOUT) as answer:
            body: bytes = answer.read(_MAX_JWKS_BYTES + 1)
            return body


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Refuses every redirect of a JWKS fetch: urllib would follow one to any host, plain http
    included, and send our token along."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _TokenVerifier:
    """Verifies a JWT against the key set, issuer and audience, and maps it to a grant.

    A publisher sends the same token with many requests (a Kubernetes token lives an hour), and
    an RS256 verification costs about 90 µs of CPU, a fifth of a request; so the claims of a
    verified token are remembered for up to :data:`_VERIFIED_FOR` seconds, never past its
    ``exp``. The rules are applied at every request, so a changed rules file takes effect at
    once; a key removed from the JWKS stops working within :data:`_VERIFIED_FOR` seconds.
    """

    def __init__(
        self,
        keys: _KeySet,
        rules: WatchedFile[tuple[ClaimRule, ...]],
        *,
        issuer: str,
        audience: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._rules = rules
        self._issuer = issuer
        self._audience = audience
        self._clock = clock
        self._verified: dict[str, tuple[Mapping[str, Any], float]] = {}

    def verify(self, token: str) -> Grant:
        claims = self._remembered(token)
        grant = publishers.claims_grant(self._rules.current(), claims)
        if grant is None:
            raise Unauthenticated(
                f"no rule of PROXY_JWT_RULES_FILE matches the token of subject"
                f" {str(claims.get('sub'))[:200]!r}",
                error="invalid_token",
            )
        return grant

    def _remembered(self, token: str) -> Mapping[str, Any]:
        """The claims of ``token``, verified now or less than :data:`_VERIFIED_FOR` s ago."""
        now = self._clock()
        remembered = self._verified.get(token)
        if remembered is not None and now < remembered[1]:
            return remembered[0]
        claims = self._claims(token)
        expires = claims["exp"] if isinstance(claims.get("exp"), int | float) else now
        if len(self._verified) >= _MAX_VERIFIED:  # many publishers, or one minting per request
            self._verified.clear()
        self._verified[token] = (claims, min(now + _VERIFIED_FOR, float(expires)))
        return claims

    def _claims(self, token: str) -> Mapping[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
            algorithm = header.get("alg")
            if algorithm not in ALGORITHMS:
                raise Unauthenticated(
                    f"the token's algorithm {str(algorithm)[:20]!r} is not accepted, expected"
                    f" one of {', '.join(ALGORITHMS)}",
                    error="invalid_token",
                )
            kid = header.get("kid")
            key = self._keys.key(kid if isinstance(kid, str) else None)
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(ALGORITHMS),
                audience=self._audience,
                issuer=self._issuer,
                leeway=_LEEWAY,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise Unauthenticated(
                f"the bearer token is not valid: {exc}", error="invalid_token"
            ) from None
        return claims

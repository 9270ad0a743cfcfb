"""JWT bearer tokens: the JWKS that verifies them, and their verification with PyJWT.

:class:`KeySet` holds the JWKS (a file, or an https URL), fetched at the first token, again
when a token names a key id it does not know (at most every :data:`_REFETCH_EVERY` seconds, so
random key ids cost the sender, not the JWKS's server), and once it is :data:`_JWKS_MAX_AGE`
seconds old, so a removed key stops working. A failed fetch keeps the last good set.
:class:`TokenVerifier` checks signature, ``exp``, ``iss`` and ``aud`` and maps the claims to a
grant through the rules (:mod:`eventing.publishers`). :mod:`proxy.auth` decides which
credential a request carries.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from eventing import publishers
from eventing.errors import PublishError, Unauthenticated
from eventing.publishers import ClaimRule, Grant
from eventing.settings import ProxySettings

logger = logging.getLogger(__name__)

#: Signature algorithms a JWT may use: asymmetric only, so a JWKS's public key can never serve
#: as an HMAC secret, and never ``none``.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
_LEEWAY = 10  #: seconds of clock skew tolerated on exp, nbf and iat
_REFETCH_EVERY = 10.0  #: least seconds between two JWKS fetches for unknown key ids
_JWKS_MAX_AGE = 300.0  #: a JWKS older than this is fetched again
_FETCH_TIMEOUT = 5.0
_MAX_JWKS_BYTES = 1 << 20
_VERIFIED_FOR = 60.0  #: longest a verified token's claims are remembered
_MAX_VERIFIED = 4096  #: tokens remembered at most (about 2 KiB each)


@dataclass(frozen=True, slots=True)
class _Fetched:
    keys: dict[str | None, jwt.PyJWK]  #: by kid (None: a key without one)
    at: float


class KeySet:
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


class TokenVerifier:
    """Verifies a JWT against the key set, issuer and audience, and maps it to a grant.

    A publisher sends the same token with many requests (a Kubernetes token lives an hour), and
    an RS256 verification costs about 90 µs of CPU, a fifth of a request; so the claims of a
    verified token are remembered for up to :data:`_VERIFIED_FOR` seconds, never past its
    ``exp``. The rules are applied at every request, so a changed rules file takes effect at
    once; a key removed from the JWKS stops working within :data:`_VERIFIED_FOR` seconds.
    """

    def __init__(
        self,
        keys: KeySet,
        rules: Callable[[], tuple[ClaimRule, ...]],
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
        grant = publishers.claims_grant(self._rules(), claims)
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

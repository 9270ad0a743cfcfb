"""Who may publish what: API keys and JWT claim rules, and the sources and types each may use.

Pure: the proxy reads the files and verifies tokens (:mod:`proxy.auth`); this module parses what
the files say and answers "may this publisher publish this event?". A publisher is known by a
*name* taken from configuration, never from the request, so metric labels and dedup keys stay
bounded and cannot be chosen by a caller.

Both files are YAML lists. An API key (``PROXY_API_KEYS_FILE``)::

    - name: orders-service
      key: "plain-text-key"          # or sha256: "<hex of the key>"
      sources: ["orders", "orders-*"]
      types: ["order.*"]

A JWT rule (``PROXY_JWT_RULES_FILE``) names claims whose values must match, all of them; the
first rule that matches a verified token decides::

    - name: orders-service
      claims: {sub: "system:serviceaccount:shop:orders"}
      sources: ["orders"]
      types: ["order.*"]

Patterns are shell globs (:func:`fnmatch.fnmatchcase`: ``*``, ``?``, ``[...]``; case-sensitive;
``*`` also matches ``.`` and ``/``), matched against the source and the type as published.
Keys are compared as SHA-256 digests with :func:`hmac.compare_digest`, so neither a plain key
nor its length leaks through timing.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from eventing.errors import ConfigError, Forbidden

#: The name of every publisher while neither API keys nor JWTs are configured.
ANONYMOUS = "anonymous"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,62}$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
#: What a bearer credential may be made of (RFC 6750's b64token): a key outside it could never
#: be sent in an Authorization header as it is.
BEARER_TOKEN = re.compile(r"^[A-Za-z0-9._~+/-]+=*$")


@dataclass(frozen=True, slots=True)
class Grant:
    """A publisher's name and the globs of the sources and types it may publish."""

    name: str
    sources: tuple[str, ...]
    types: tuple[str, ...]

    def refusal(self, source: str, event_type: str) -> str | None:
        """Why this publisher may not publish an event of ``source`` and ``event_type``, or None
        when it may."""
        wrong = []
        if not _matches(source, self.sources):
            wrong.append(f"source {source!r}")
        if not _matches(event_type, self.types):
            wrong.append(f"type {event_type!r}")
        if not wrong:
            return None
        return f"{self.name} may not publish {' and '.join(wrong)}"


#: What anyone may publish while publishing is open (no keys file, no JWKS).
OPEN = Grant(ANONYMOUS, ("*",), ("*",))


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One entry of the keys file: the SHA-256 digest of its key, and its grant."""

    digest: bytes
    grant: Grant


@dataclass(frozen=True, slots=True)
class ClaimRule:
    """One JWT rule: globs each named claim's value must match, and the grant it gives."""

    claims: tuple[tuple[str, str], ...]
    grant: Grant

    def matches(self, claims: Mapping[str, Any]) -> bool:
        """Whether every claim of the rule is a string in ``claims`` that matches its glob."""
        return all(
            isinstance(claims.get(claim), str) and fnmatch.fnmatchcase(claims[claim], pattern)
            for claim, pattern in self.claims
        )


def digest(key: str) -> bytes:
    """The SHA-256 digest of a presented key, the form keys are compared in."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def key_grant(keys: tuple[ApiKey, ...], presented: str) -> Grant | None:
    """The grant of the key ``presented``, or None when no entry holds it.

    Every entry is compared, each in constant time, so the time taken depends only on the
    number of keys.
    """
    wanted = digest(presented)
    found = None
    for key in keys:
        if hmac.compare_digest(key.digest, wanted):
            found = key.grant
    return found


def check(grant: Grant, events: Sequence[tuple[str, str]]) -> None:
    """Refuse the whole request unless ``grant`` allows every one of its events.

    Parameters:
        events: (source, type as published) of each event, in request order.

    Raises:
        Forbidden: naming each refused event by index, and what the publisher may publish.
    """
    refusals = {
        index: reason
        for index, (source, event_type) in enumerate(events)
        if (reason := grant.refusal(source, event_type)) is not None
    }
    if refusals:
        raise Forbidden(grant.name, refusals, sources=grant.sources, types=grant.types)


def claims_grant(rules: tuple[ClaimRule, ...], claims: Mapping[str, Any]) -> Grant | None:
    """The grant of the first rule that ``claims`` (of a verified token) match, or None."""
    return next((rule.grant for rule in rules if rule.matches(claims)), None)


def parse_api_keys(text: str, origin: str) -> tuple[ApiKey, ...]:
    """The entries of a keys file.

    Parameters:
        text: the file's YAML text.
        origin: the file's path, named in errors.

    Raises:
        ConfigError: the file is no list of entries as the module docstring shows, an entry
            has both or neither of ``key`` and ``sha256``, or a name or key repeats.
    """
    keys: list[ApiKey] = []
    for number, entry in _entries(text, origin):
        grant = _grant(entry, number, origin, extra={"key", "sha256"})
        plain, hashed = entry.get("key"), entry.get("sha256")
        if (plain is None) == (hashed is None):
            raise _invalid(origin, number, "needs exactly one of key and sha256")
        if plain is not None and not (isinstance(plain, str) and BEARER_TOKEN.match(plain)):
            raise _invalid(
                origin, number, "key: expected letters, digits and - . _ ~ + / (then = only)"
            )
        if hashed is not None and not (isinstance(hashed, str) and _SHA256.match(hashed)):
            raise _invalid(origin, number, "sha256: expected 64 hex digits (sha256sum of the key)")
        value = digest(plain) if plain is not None else bytes.fromhex(str(hashed))
        if any(hmac.compare_digest(value, key.digest) for key in keys):
            raise _invalid(origin, number, "its key is another entry's too")
        keys.append(ApiKey(value, grant))
    _unique_names([key.grant for key in keys], origin)
    return tuple(keys)


def parse_claim_rules(text: str, origin: str) -> tuple[ClaimRule, ...]:
    """The rules of a JWT rules file.

    Raises:
        ConfigError: the file is no list of rules as the module docstring shows.
    """
    rules: list[ClaimRule] = []
    for number, entry in _entries(text, origin):
        grant = _grant(entry, number, origin, extra={"claims"})
        claims = entry.get("claims")
        if not (
            isinstance(claims, dict)
            and claims
            and all(isinstance(k, str) and isinstance(v, str) and v for k, v in claims.items())
        ):
            raise _invalid(origin, number, "claims: expected a map of claim names to glob patterns")
        rules.append(ClaimRule(tuple(sorted(claims.items())), grant))
    return tuple(rules)


def _matches(value: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(value, pattern) for pattern in patterns)


def _entries(text: str, origin: str) -> list[tuple[int, dict[str, Any]]]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError({origin: f"not YAML: {exc}"}) from None
    if document is None:
        return []
    if not isinstance(document, list) or not all(isinstance(e, dict) for e in document):
        raise ConfigError({origin: "expected a YAML list of entries (maps)"})
    return list(enumerate(document, start=1))


def _grant(entry: dict[str, Any], number: int, origin: str, *, extra: set[str]) -> Grant:
    unknown = sorted(set(map(str, entry)) - {"name", "sources", "types"} - extra)
    if unknown:
        raise _invalid(origin, number, f"unknown field(s) {', '.join(unknown)}")
    name = entry.get("name")
    if not (isinstance(name, str) and _NAME.match(name)):
        raise _invalid(
            origin, number, f"name: expected 1 to 63 letters, digits and . _ : @ -, got {name!r}"
        )
    if name == ANONYMOUS:
        raise _invalid(origin, number, f"name: {ANONYMOUS!r} is the name of open publishing")
    patterns = {}
    for field in ("sources", "types"):
        value = entry.get(field)
        if not (isinstance(value, list) and value and all(isinstance(p, str) and p for p in value)):
            raise _invalid(origin, number, f"{field}: expected a list of glob patterns")
        patterns[field] = tuple(value)
    return Grant(name, patterns["sources"], patterns["types"])


def _unique_names(grants: list[Grant], origin: str) -> None:
    seen: set[str] = set()
    for grant in grants:
        if grant.name in seen:
            raise ConfigError({origin: f"the name {grant.name!r} is given to several entries"})
        seen.add(grant.name)


def _invalid(origin: str, number: int, problem: str) -> ConfigError:
    return ConfigError({origin: f"entry {number}: {problem}"})

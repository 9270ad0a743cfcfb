"""What may be shown of a URL: the one module every place that shows one masks it with (pure).

A sink URL may carry credentials (``https://user:pass@host/hook?token=...``), and so may a broker
or NATS URL. Statuses, metric labels, logs and dead-letter headers show where a delivery went,
never how it got in: :func:`mask_url` keeps the scheme, host, port and path, and masks the
userinfo and every query value (a query word without a value too). A masked URL still tells two
sinks apart by host and path, and its query names still say which parameters were sent.

The URLs of our own backends (NATS, the broker) are shown by :func:`without_credentials`, which
keeps the user name: an operator reading "nats://proxy:***@nats:4222" learns which account
failed, and those URLs carry no query. A sink's user name may itself be the secret (a token as
user), so a sink keeps none.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, urlsplit

MASK = "***"

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_QUERY_VALUE = re.compile(r"(?P<start>[?&][^=&\s'\"()]+=)[^&\s'\"()]*")


def mask_url(url: str) -> str:
    """``url`` without its secrets: ``https://user:pass@host/p?token=abc&x=1`` →
    ``https://***@host/p?token=***&x=***``.

    The fragment goes too (a sink never sees it, so it says nothing about the delivery). A value
    that does not parse as a URL is masked whole, since what in it is secret cannot be told.
    """
    try:
        parts = urlsplit(url)
        host = _host(parts)
    except ValueError:
        return MASK
    if not parts.scheme or not parts.netloc:
        return url if "@" not in url and "?" not in url else MASK
    netloc = f"{MASK}@{host}" if "@" in parts.netloc else host
    query = "&".join(_masked_pair(pair) for pair in parts.query.split("&")) if parts.query else ""
    return SplitResult(parts.scheme, netloc, parts.path, query, "").geturl()


def _host(parts: SplitResult) -> str:
    """``host[:port]`` as written (brackets of an IPv6 address kept); ValueError on a bad port."""
    parts.port  # noqa: B018 - raises ValueError on a bad port
    return parts.netloc.rpartition("@")[2]


def _masked_pair(pair: str) -> str:
    """``name=***``; a lone word (``?abc123``) may be a token itself, so it goes whole."""
    name, equals, _ = pair.partition("=")
    return f"{name}={MASK}" if equals else MASK


def mask_text(text: str) -> str:
    """``text`` (an error message, say) with every URL in it masked by :func:`mask_url`, and any
    query value it shows without a URL around it (urllib3 writes ``url: /hook?token=abc``)."""
    return _QUERY_VALUE.sub(rf"\g<start>{MASK}", _URL.sub(lambda m: mask_url(m[0]), text))


_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/\s]*)(?P<secret>:[^@/\s]*)?@"
)


def without_credentials(text: str) -> str:
    """``text`` with the password (or token) of every URL in it masked, for logs and errors:
    ``nats://app:secret@host`` → ``nats://app:***@host``, ``nats://token@host`` → ``nats://***@host``.
    """

    def mask(match: re.Match[str]) -> str:
        if match["secret"] is not None:
            return f"{match['scheme']}{match['user']}:{MASK}@"
        return f"{match['scheme']}{MASK}@"

    return _USERINFO.sub(mask, text)


def has_userinfo(url: str) -> bool:
    """Whether ``url`` carries a user name, a password or a token before its host."""
    return _USERINFO.match(url) is not None

"""Standard Webhooks signatures of deliveries (https://www.standardwebhooks.com), pure.

A sink that verifies ``webhook-signature`` knows the request came from us and was not altered:
the signature covers ``webhook-id``, ``webhook-timestamp`` and the body, so a replay outside the
receiver's tolerance (five minutes in the reference libraries) or a changed body fails. The
``ce-*`` headers are not covered (the standard signs the body only); a sink that must trust them
too is reached over https.

A secret is ``whsec_`` and the base64 of its key. A secret file or Secret value holds one per
line: while a secret rotates it holds the new and the old one, every request carries one
signature per secret (space-separated, as the standard says), and a receiver that knows either
accepts it. Nothing here reads a file or a clock: :mod:`workers.secrets` does.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

PREFIX = "whsec_"
_MIN_KEY_BYTES = 24  #: the standard's lower bound; 32 (256 bits) is what it recommends
_MAX_KEY_BYTES = 64
MAX_SECRETS_TEXT = 4096  #: the longest secret file or Secret value read: a few rotating secrets


def parse_secrets(text: str) -> tuple[bytes, ...]:
    """The keys of ``text``: one ``whsec_<base64>`` secret per line, blank lines ignored.

    Raises:
        ValueError: a line is no such secret, or there is none; the message says which line and
            what was expected, never the line itself.
    """
    keys = []
    lines = [line.strip() for line in text.splitlines()]
    for number, line in enumerate(lines, start=1):
        if not line:
            continue
        expected = f"expected {PREFIX} and the base64 of a {_MIN_KEY_BYTES} to {_MAX_KEY_BYTES}"
        if not line.startswith(PREFIX):
            raise ValueError(f"line {number}: does not start with {PREFIX}; {expected} byte key")
        try:
            encoded = line[len(PREFIX) :]
            # Unpadded base64 is common (Svix's secrets) and the reference libraries accept it.
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(
                f"line {number}: is not base64 after {PREFIX}; {expected} byte key"
            ) from None
        if not _MIN_KEY_BYTES <= len(key) <= _MAX_KEY_BYTES:
            raise ValueError(f"line {number}: its key has {len(key)} bytes; {expected} byte key")
        keys.append(key)
    if not keys:
        raise ValueError(f"holds no secret; expected one {PREFIX}<base64> secret per line")
    return tuple(keys)


def signature(keys: tuple[bytes, ...], message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256>`` per key, space-separated."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for key in keys
    )


def headers(
    keys: tuple[bytes, ...], message_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The three headers of a signed request made at ``timestamp`` (Unix seconds)."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(keys, message_id, timestamp, body),
    }


def message_id(consumer: str, stream_sequence: int) -> str:
    """``webhook-id`` of one stored event for one subscription: the same at every attempt and
    every redelivery, so a receiver can drop what it has seen. It is the stream sequence, not the
    event's ``source`` and ``id``: two publishers may send the same pair (the dedup key keeps them
    apart by publisher), and one must not make the other's event look like a duplicate."""
    return f"msg_{consumer}_{stream_sequence}"

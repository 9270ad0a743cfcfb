"""NATS identities for test servers: NKEY users, and an operator whose account holds JWT users
(what ``nsc`` makes, made here without it), each user's credentials as a ``.creds`` file.

The operator mode (decentralised JWT authentication) is how a production NATS hands each
component its own credentials: the server trusts the operator, preloaded with the account JWTs
(``resolver: MEMORY``), and a client proves itself with a user JWT signed by the account and the
user's NKEY seed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import nkeys  # type: ignore[import-untyped]

_ACCOUNT_LIMITS = {
    "subs": -1,
    "data": -1,
    "payload": -1,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
}
#: JetStream is on for an account whose storage limits are not zero.
_JETSTREAM_LIMITS = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}


@dataclass(frozen=True)
class Nkey:
    """An NKEY pair: ``seed`` (secret, ``S…``) and ``public`` (``U…`` for a user)."""

    seed: str
    public: str

    @classmethod
    def new(cls, prefix: int = nkeys.PREFIX_BYTE_USER) -> Nkey:
        seed = nkeys.encode_seed(secrets.token_bytes(32), prefix)
        return cls(seed.decode(), nkeys.from_seed(bytearray(seed)).public_key.decode())

    def sign(self, data: bytes) -> bytes:
        return bytes(nkeys.from_seed(bytearray(self.seed.encode())).sign(data))


class Operator:
    """An operator with a system account and one account (``EVENTS``, JetStream enabled)."""

    def __init__(self) -> None:
        self.key = Nkey.new(nkeys.PREFIX_BYTE_OPERATOR)
        self.system = Nkey.new(nkeys.PREFIX_BYTE_ACCOUNT)
        self.account = Nkey.new(nkeys.PREFIX_BYTE_ACCOUNT)

    def server_config(self) -> str:
        """nats-server configuration text trusting this operator and its two accounts."""
        operator = _jwt(self.key, self.key.public, "operator", {"type": "operator"})
        system = _jwt(
            self.key, self.system.public, "SYS", {"type": "account", "limits": _ACCOUNT_LIMITS}
        )
        account = _jwt(
            self.key,
            self.account.public,
            "EVENTS",
            {"type": "account", "limits": {**_ACCOUNT_LIMITS, **_JETSTREAM_LIMITS}},
        )
        return (
            f'operator: "{operator}"\nresolver: MEMORY\nsystem_account: {self.system.public}\n'
            f'resolver_preload: {{ {self.system.public}: "{system}",'
            f' {self.account.public}: "{account}" }}\n'
        )

    def user_creds(self, name: str) -> str:
        """The ``.creds`` text of a new user of the account, as ``nsc generate creds`` writes."""
        user = Nkey.new()
        claims = {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}
        token = _jwt(self.account, user.public, name, claims)
        return (
            f"-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{user.seed}\n------END USER NKEY SEED------\n"
        )


def _jwt(issuer: Nkey, subject: str, name: str, nats_claims: dict[str, Any]) -> str:
    """A NATS JWT (v2): ed25519-nkey signed by ``issuer``, ``jti`` the hash of the claims."""
    claims: dict[str, Any] = {
        "iat": int(time.time()),
        "iss": issuer.public,
        "name": name,
        "sub": subject,
        "nats": {**nats_claims, "version": 2},
    }
    digest = hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = _b64(issuer.sign(f"{header}.{body}".encode()))
    return f"{header}.{body}.{signature}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

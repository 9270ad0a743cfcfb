"""A JWT issuer of our own: an RSA key pair, its JWKS file, and tokens it signs.

Tests and bench use it where a JWKS file stands in for an identity provider's (the Kubernetes
tests use the real API server's instead, :mod:`tests.kubernetes.test_publisher_tokens`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ISSUER = "https://issuer.test"
AUDIENCE = "eventing-proxy"
SUBJECT = "system:serviceaccount:shop:orders"
KEY_ID = "k1"


class Issuer:
    """Signs RS256 tokens of :data:`ISSUER` for :data:`AUDIENCE`; its public key is in
    :attr:`jwks`, a JWKS file in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.jwks = folder / "jwks.json"
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        self.jwks.write_text(json.dumps({"keys": [{**jwk, "kid": KEY_ID, "alg": "RS256"}]}))

    def token(
        self, *, headers: dict[str, Any] | None = None, lifetime: int = 600, **claims: Any
    ) -> str:
        """A token of :data:`SUBJECT`, valid for ``lifetime`` s; a claim given as None is left
        out."""
        now = int(time.time())
        payload = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": SUBJECT,
            "iat": now,
            "exp": now + lifetime,
            **claims,
        }
        present = {name: value for name, value in payload.items() if value is not None}
        return jwt.encode(
            present, self.key, algorithm="RS256", headers={"kid": KEY_ID, **(headers or {})}
        )

    def public_pem(self) -> bytes:
        """The public key in PEM, as an attacker could use it for an HMAC "signature"."""
        return self.key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)

    def environ(self, rules: Path, sources: str = "*", types: str = "*") -> dict[str, str]:
        """The proxy's settings that trust this issuer, with a rules file (written to ``rules``)
        granting :data:`SUBJECT`, as ``orders``, ``sources`` and ``types``."""
        rules.write_text(
            json.dumps(
                [
                    {
                        "name": "orders",
                        "claims": {"sub": SUBJECT},
                        "sources": [sources],
                        "types": [types],
                    }
                ]
            )
        )
        return {
            "PROXY_JWKS": str(self.jwks),
            "PROXY_JWT_ISSUER": ISSUER,
            "PROXY_JWT_AUDIENCE": AUDIENCE,
            "PROXY_JWT_RULES_FILE": str(rules),
        }

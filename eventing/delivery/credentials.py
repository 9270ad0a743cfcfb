"""Where a subscription's delivery secrets are: references, never the secrets themselves (pure).

A job travels through Redis or RabbitMQ, where anyone who reaches the broker can read it (job
signatures stop forgery, not reading). So a job names where its signing secret, sink credentials
and TLS files are — a file path in the folder mode, a key of a Kubernetes Secret in the
subscription's namespace — and the worker reads them itself (:mod:`workers.secrets`), with a
short cache so a rotated secret takes effect within seconds and no manager restart or
resubscription is needed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

BEARER, BASIC = "bearer", "basic"
#: Keys read from a Secret when a reference names none: Kubernetes' own Secret types use them
#: (kubernetes.io/basic-auth, kubernetes.io/tls, and ca.crt beside them).
USERNAME, PASSWORD = "username", "password"
CA, CERT, KEY = "ca.crt", "tls.crt", "tls.key"


@dataclass(frozen=True, slots=True)
class SecretRef:
    """One secret value: a file (``file``) or the key ``key`` of Secret ``namespace/name``."""

    file: str = ""
    namespace: str = ""
    name: str = ""
    key: str = ""

    def __str__(self) -> str:
        if self.file:
            return f"file {self.file}"
        return f"key {self.key} of Secret {self.namespace}/{self.name}"

    def anchored(self, folder: str) -> SecretRef:
        """This reference with a relative file path taken as relative to ``folder``."""
        if not self.file or os.path.isabs(self.file):
            return self
        return replace(self, file=os.path.normpath(os.path.join(folder, self.file)))

    def to_dict(self) -> dict[str, str]:
        return {
            k: v
            for k, v in (
                ("file", self.file),
                ("namespace", self.namespace),
                ("name", self.name),
                ("key", self.key),
            )
            if v
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SecretRef:
        """Rebuild from :meth:`to_dict`; ``TypeError``/``ValueError`` if malformed."""
        if not isinstance(data, dict):
            raise TypeError(f"a secret reference must be an object, got {type(data).__name__}")
        ref = cls(**{k: str(data[k]) for k in ("file", "namespace", "name", "key") if k in data})
        if not ref.file and not (ref.namespace and ref.name and ref.key):
            raise ValueError("a secret reference names a file, or a Secret's namespace, name, key")
        return ref


@dataclass(frozen=True, slots=True)
class SinkCredentials:
    """What a worker adds to each request of one subscription (nothing, by default).

    ``auth`` holds the token (bearer), ``user:password`` (basic from a file), or the user name
    and the password (basic from a Secret's two keys).
    """

    signing: SecretRef | None = None
    auth_type: str = ""
    auth: tuple[SecretRef, ...] = ()
    ca: SecretRef | None = None
    cert: SecretRef | None = None
    key: SecretRef | None = None

    def __bool__(self) -> bool:
        return self != SinkCredentials()

    def anchored(self, folder: str) -> SinkCredentials:
        """These credentials with each relative file path taken relative to ``folder`` (the
        manifest's)."""

        def anchor(ref: SecretRef | None) -> SecretRef | None:
            return ref.anchored(folder) if ref is not None else None

        return replace(
            self,
            signing=anchor(self.signing),
            auth=tuple(ref.anchored(folder) for ref in self.auth),
            ca=anchor(self.ca),
            cert=anchor(self.cert),
            key=anchor(self.key),
        )

    def references(self) -> tuple[SecretRef, ...]:
        """Every reference, in the order the fields are declared."""
        single = (self.signing, self.ca, self.cert, self.key)
        return tuple(ref for ref in (*single[:1], *self.auth, *single[1:]) if ref is not None)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for field in ("signing", "ca", "cert", "key"):
            ref = getattr(self, field)
            if ref is not None:
                data[field] = ref.to_dict()
        if self.auth_type:
            data["auth_type"] = self.auth_type
            data["auth"] = [ref.to_dict() for ref in self.auth]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SinkCredentials:
        """Rebuild from :meth:`to_dict`; ``KeyError``/``TypeError``/``ValueError`` if malformed."""

        if not isinstance(data, dict):
            raise TypeError(f"credentials must be an object, got {type(data).__name__}")

        def ref(field: str) -> SecretRef | None:
            return SecretRef.from_dict(data[field]) if field in data else None

        auth_type = str(data.get("auth_type", ""))
        if auth_type not in ("", BEARER, BASIC):
            raise ValueError(f"auth_type {auth_type!r}")
        if bool(auth_type) != bool(data.get("auth")):
            raise ValueError("auth_type and auth go together")
        return cls(
            signing=ref("signing"),
            auth_type=auth_type,
            auth=tuple(SecretRef.from_dict(item) for item in data.get("auth", ())),
            ca=ref("ca"),
            cert=ref("cert"),
            key=ref("key"),
        )

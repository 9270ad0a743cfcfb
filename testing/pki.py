"""The certificates a throw-away Kubernetes control plane needs (:mod:`testing.kube`).

A CA, the API server's serving certificate, an admin client certificate in ``system:masters``
and the service-account signing key pair, freshly generated for each control plane: elliptic
keys (fast to make) except for the service accounts, where kube-apiserver expects RSA. Valid
for a day and from five minutes ago, so a clock a little off does not fail the handshake.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_USAGES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)


def write(folder: Path) -> None:
    """A CA, the API server's serving certificate, the admin's client certificate and the
    service-account signing key pair, as PEM files in ``folder``."""
    folder.mkdir(parents=True)
    ca_name, ca_key = _ca(folder, "eventing-test-ca")

    server_key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("localhost"),
    ]
    server = (
        _builder(_name("kube-apiserver"), ca_name, server_key.public_key())
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_pair(folder, "apiserver", server, server_key)

    admin_key = ec.generate_private_key(ec.SECP256R1())
    admin = (
        _builder(_name("admin", group="system:masters"), ca_name, admin_key.public_key())
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_pair(folder, "admin", admin, admin_key)

    service_accounts = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write(folder / "sa.key", _private_pem(service_accounts))
    _write(
        folder / "sa.pub",
        service_accounts.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )


def write_sink(folder: Path) -> None:
    """An https sink's certificates as PEM files in ``folder``: ``ca.crt`` (the CA that signed
    both), ``sink.crt``/``sink.key`` (serving 127.0.0.1 and localhost) and ``client.crt``/
    ``client.key`` (the client certificate the sink requires of the worker)."""
    folder.mkdir(parents=True)
    ca_name, ca_key = _ca(folder, "eventing-test-sink-ca")
    names: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("localhost"),
    ]
    for name, usage in (
        ("sink", ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = _builder(_name(f"eventing-test-{name}"), ca_name, key.public_key())
        if name == "sink":
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False).sign(
            ca_key, hashes.SHA256()
        )
        _write_pair(folder, name, cert, key)


def _ca(folder: Path, common_name: str) -> tuple[x509.Name, ec.EllipticCurvePrivateKey]:
    """A new CA, its certificate written to ``folder/ca.crt``: its name and key, to sign with."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(common_name)
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage("digital_signature", "key_cert_sign", "crl_sign"), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    _write(folder / "ca.crt", ca.public_bytes(serialization.Encoding.PEM))
    return ca_name, ca_key


def _key_usage(*granted: str) -> x509.KeyUsage:
    """The key usage extension granting ``granted`` and nothing else (it takes all nine)."""
    return x509.KeyUsage(**{usage: usage in granted for usage in _USAGES})


def _name(common_name: str, group: str | None = None) -> x509.Name:
    # The API server reads a client certificate's CN as the user and each O as a group.
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if group:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, group))
    return x509.Name(attributes)


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def _write_pair(
    folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    _write(folder / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM))
    _write(folder / f"{name}.key", _private_pem(key))


def _private_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)

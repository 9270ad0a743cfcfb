"""How a process proves itself to NATS, and checks the server: nats-py's connect options.

One way of authenticating at most (:meth:`eventing.settings.NatsSettings.authentication`; the
settings refuse two): a creds file (user JWT and NKEY seed), an NKEY seed, a token, a user and
password, or the userinfo of ``NATS_URL``. nats-py reads a creds file and an NKEY seed file
itself at every (re)connect; a token and a password are handed over as callables that read
their file then too, so a rotated Secret is used from the next reconnect on without a restart.
The NKEY's public key is an exception: nats-py derives it once per connection, so a seed
replaced by another key's takes effect when the connection is opened anew, which the client does
when the server refuses the old key (:meth:`JetStreamClient._on_error`).

TLS is on once any ``NATS_TLS_*`` file is set; the context (CA, client certificate) is built at
each new connection (:class:`eventing.nats.client.JetStreamClient` builds one per connection
and reloads the certificate when it is disconnected).
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit

from eventing.redaction import without_credentials
from eventing.settings import NatsSettings, is_loopback, secret_from_file


def connect_options(settings: NatsSettings) -> dict[str, Any]:
    """The keyword arguments of ``nats.connect`` that authenticate and encrypt, per settings."""
    options: dict[str, Any] = {}
    if settings.creds_file:
        options["user_credentials"] = settings.creds_file
    elif settings.nkey_seed_file:
        options["nkeys_seed"] = settings.nkey_seed_file
    elif settings.token_file:
        token_file = settings.token_file
        options["token"] = lambda: secret_from_file(token_file)
    elif settings.user:
        password_file = settings.password_file
        options["user"] = settings.user
        # nats-py calls a callable password at each CONNECT (typed as str, handled as either).
        options["password"] = lambda: secret_from_file(password_file)
    if settings.uses_tls:
        options["tls"] = tls_context(settings)
    return options


def tls_context(settings: NatsSettings) -> ssl.SSLContext:
    """A client context verifying the server against ``NATS_TLS_CA_FILE`` (or the system's
    CAs), presenting ``NATS_TLS_CERT_FILE`` if set."""
    context = ssl.create_default_context(cafile=settings.tls_ca_file or None)
    reload_certificate(context, settings)
    return context


def reload_certificate(context: ssl.SSLContext, settings: NatsSettings) -> None:
    """Load the client certificate and key into ``context`` (again): the next handshake
    presents what the files hold now, a renewed certificate included."""
    if settings.tls_cert_file:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)


def unauthenticated_warning(settings: NatsSettings) -> str | None:
    """A warning when this process reaches a NATS server beyond loopback with no credentials
    (anyone on the network could then read and publish events as it does), else None."""
    if settings.authentication or settings.tls_cert_file:
        return None
    remote = [url for url in settings.urls if not is_loopback(urlsplit(url).hostname or "")]
    if not remote:
        return None
    return (
        f"NATS at {without_credentials(', '.join(remote))} is reached without authentication:"
        " set NATS_CREDS_FILE (or NATS_NKEY_SEED_FILE, NATS_TOKEN_FILE, NATS_USER with"
        " NATS_PASSWORD_FILE) and NATS_TLS_CA_FILE"
    )

"""How the manager and the workers reach the dramatiq broker: credentials and TLS.

``BROKER_URL`` may carry a user and password (``redis://user:pass@host``,
``amqp://user:pass@host``); ``BROKER_PASSWORD_FILE`` holds the password instead (the user, if
any, stays in the URL), so a Kubernetes Secret can be mounted, and is read at every new
connection: a rotated password is used from the next reconnect on. ``rediss://`` and
``amqps://`` are TLS, verified against ``BROKER_TLS_CA_FILE`` (or the system's CAs). The Redis
client built here is the broker's only connection pool, so the wake-up subscriptions of
:mod:`eventing.wakeup` authenticate and encrypt as every other command does.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

import pika  # type: ignore[import-untyped]
import redis
from redis.credentials import CredentialProvider

from eventing.redaction import without_credentials
from eventing.settings import DeliverySettings, is_loopback, secret_from_file


def redis_client(settings: DeliverySettings) -> redis.Redis:
    """A Redis client for ``BROKER_URL``, its password and CA as configured."""
    url = urlsplit(settings.broker_url)
    options: dict[str, Any] = {}
    if settings.broker_tls_ca_file:
        options["ssl_ca_certs"] = settings.broker_tls_ca_file
    if settings.broker_password_file:
        user = unquote(url.username) if url.username else None
        options["credential_provider"] = _RedisPasswordFile(user, settings.broker_password_file)
        url = _without_userinfo(url)
    return redis.Redis(connection_pool=redis.ConnectionPool.from_url(url.geturl(), **options))


def rabbitmq_url(settings: DeliverySettings) -> str:
    """``BROKER_URL`` as pika may parse it: without the user when the password is in a file
    (pika refuses a user without a password; :func:`secure_rabbitmq` sets both)."""
    url = urlsplit(settings.broker_url)
    return _without_userinfo(url).geturl() if settings.broker_password_file else url.geturl()


def secure_rabbitmq(parameters: pika.URLParameters, settings: DeliverySettings) -> None:
    """Give dramatiq's RabbitMQ ``parameters`` (from :func:`rabbitmq_url`) the password file
    and the CA."""
    if settings.broker_password_file:
        user = urlsplit(settings.broker_url).username
        parameters.credentials = _RabbitPasswordFile(
            unquote(user) if user else "guest", settings.broker_password_file
        )
    if settings.broker_tls_ca_file:
        context = ssl.create_default_context(cafile=settings.broker_tls_ca_file)
        parameters.ssl_options = pika.SSLOptions(context, server_hostname=parameters.host)


def unauthenticated_warning(settings: DeliverySettings) -> str | None:
    """A warning when the broker beyond loopback is reached without a password (anyone on the
    network could then read jobs, or push forged ones), else None."""
    url = urlsplit(settings.broker_url)
    if url.password or settings.broker_password_file or is_loopback(url.hostname or ""):
        return None
    return (
        f"the broker at {without_credentials(settings.broker_url)} is reached without a"
        " password: set BROKER_PASSWORD_FILE (and use rediss:// or amqps:// with"
        " BROKER_TLS_CA_FILE)"
    )


def _without_userinfo(url: SplitResult) -> SplitResult:
    return url._replace(netloc=url.netloc.rpartition("@")[2])


class _RedisPasswordFile(CredentialProvider):
    """redis-py asks for credentials at each new connection: the file is read then."""

    def __init__(self, user: str | None, path: str) -> None:
        self._user = user
        self._path = path

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        password = secret_from_file(self._path)
        return (self._user, password) if self._user else (password,)


class _RabbitPasswordFile(pika.PlainCredentials):  # type: ignore[misc]
    """pika reads ``password`` at each new connection: the file is read then."""

    def __init__(self, user: str, path: str) -> None:
        super().__init__(user, "")
        self._path = path

    @property
    def password(self) -> str:
        return secret_from_file(self._path)

    @password.setter
    def password(self, _: str | None) -> None:
        """pika's constructor assigns the password: the file holds it instead."""

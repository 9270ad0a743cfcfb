"""The egress policy where connections are made: a sink's host is resolved, each address is
checked (:class:`~eventing.delivery.egress.EgressPolicy`), and the socket goes to an address
that was checked, never to a name resolved again (no DNS rebinding between check and connect).

urllib3's connections resolve and connect in ``_new_conn``; the connections of
:func:`workers.deadline.session` do it here instead. A host one of whose addresses the policy
refuses is refused as a whole, before any packet leaves: the delivery fails for good
(:class:`~eventing.errors.SinkRefused`), and its reason names the policy, the same whether a
port there would have answered or not.

The policy is the process's (:func:`install`, at worker boot); until then, the defaults of the
folder mode (link-local and cloud metadata refused, loopback allowed).
"""

from __future__ import annotations

import socket
import sys

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection

from eventing.delivery.egress import EgressPolicy
from eventing.errors import SinkRefused

_policy = EgressPolicy()


def install(policy: EgressPolicy) -> None:
    """Make ``policy`` the one every connection of this process is checked against."""
    global _policy  # one policy per process, set once at boot
    _policy = policy


def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to for TCP, in the resolver's order, no duplicates.

    Raises:
        socket.gaierror: it resolves to nothing.
    """
    found = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in found))


class GuardedHTTPConnection(HTTPConnection):
    """An HTTP connection that connects only to addresses the egress policy allows."""

    def _new_conn(self) -> socket.socket:
        return _connect(self)


class GuardedHTTPSConnection(HTTPSConnection):
    """An HTTPS connection that connects only to addresses the egress policy allows; TLS still
    verifies the host name, not the address."""

    def _new_conn(self) -> socket.socket:
        return _connect(self)


def _connect(conn: HTTPConnection) -> socket.socket:
    """urllib3's ``_new_conn``, with each resolved address checked before it is connected to.

    Raises:
        SinkRefused: the policy refuses the host's name or one of its addresses.
        NameResolutionError, ConnectTimeoutError, NewConnectionError: as urllib3 raises them.
    """
    refused = _policy.refusal(conn.host)
    if refused is not None:
        raise SinkRefused(refused)
    try:
        addresses = resolve(conn._dns_host, conn.port)  # with a trailing dot, for DNS
    except socket.gaierror as exc:
        raise NameResolutionError(conn.host, conn, exc) from exc
    for address in addresses:
        refused = _policy.refusal(conn.host, address)
        if refused is not None:
            raise SinkRefused(refused)
    failure: OSError | None = None
    for address in addresses:  # each in turn, as urllib3's create_connection tries them
        try:
            sock = connection.create_connection(
                (address, conn.port),
                conn.timeout,
                source_address=conn.source_address,
                socket_options=conn.socket_options,
            )
        except OSError as exc:
            failure = exc
            continue
        sys.audit("http.client.connect", conn, conn.host, conn.port)
        return sock
    if isinstance(failure, TimeoutError):
        raise ConnectTimeoutError(
            conn, f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})"
        ) from failure
    raise NewConnectionError(conn, f"Failed to establish a new connection: {failure}") from failure

"""A TCP relay in front of the proxy that keeps a copy of every byte the publishers send.

The SDK talks to the real proxy through it, byte for byte (its own framing, chunked or not, its
own header bytes), and gets the proxy's real answers; the test then reads each request exactly as
the SDK made it. Publishing twice (once to a recorder, once to the proxy) would not do: the Node
and Python SDKs stamp a fresh ``time`` on every event that has none.
"""

from __future__ import annotations

import socket
import threading


class RecordingRelay:
    """Listens on a free loopback port and relays each connection to ``upstream_port``."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._streams: list[bytearray] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[tuple[dict[str, str], bytes]]:
        """Every request the clients sent so far: header names lowercased, values as sent."""
        with self._lock:
            streams = [bytes(stream) for stream in self._streams]
        return [request for stream in streams for request in parse_requests(stream)]

    def stop(self) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # stopped
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            record = bytearray()
            with self._lock:
                self._streams.append(record)
                self._sockets += [client, upstream]
            threading.Thread(
                target=self._pump, args=(client, upstream, record), daemon=True
            ).start()
            threading.Thread(target=self._pump, args=(upstream, client, None), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, record: bytearray | None) -> None:
        try:
            while chunk := source.recv(65536):
                if record is not None:
                    with self._lock:
                        record += chunk
                target.sendall(chunk)
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the other side closed: the relay of this connection is over


def parse_requests(stream: bytes) -> list[tuple[dict[str, str], bytes]]:
    """The HTTP/1.1 requests in one connection's client bytes (Content-Length or chunked).

    Header text is decoded as ISO-8859-1, as WSGI does, so a reader sees the bytes that were
    sent; a name sent twice keeps its first value."""
    found: list[tuple[dict[str, str], bytes]] = []
    rest = stream
    while True:
        head, separator, rest = rest.partition(b"\r\n\r\n")
        if not separator:
            return found
        headers: dict[str, str] = {}
        for line in head.decode("latin-1").split("\r\n")[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), value.strip(" \t"))
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                body += rest[:size]
                rest = rest[size + 2 :]  # the chunk and its CRLF (for the last: the final CRLF)
                if size == 0:
                    break
        else:
            length = int(headers.get("content-length", "0"))
            body, rest = bytearray(rest[:length]), rest[length:]
        found.append((headers, bytes(body)))

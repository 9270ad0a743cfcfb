"""``eventing-dependency``: the Procfile's servers outlive their clients, and no longer."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import pytest

from testing.servers import free_port, redis_server_binary, require_binary, wait_until
from testing.system import script

pytestmark = pytest.mark.integration


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def test_redis_serves_until_its_last_client_leaves(tmp_path: Path) -> None:
    redis = require_binary(redis_server_binary(), "redis-server", "apt-get install redis-server")
    port = free_port()
    server = [str(redis), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    wrapper = subprocess.Popen(
        [
            script("eventing-dependency"),
            "--redis",
            f"127.0.0.1:{port}",
            "--grace",
            "30",
            "--",
            *server,
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        wait_until(lambda: _answers_ping(port), 10, "redis-server")
        client = socket.create_connection(("127.0.0.1", port))
        wrapper.send_signal(signal.SIGTERM)
        # SIGTERM given, yet the server keeps answering while a client is connected: it is in a
        # process group of its own, and the wrapper waits for the client.
        assert _answers_ping(port) and wrapper.poll() is None
        client.close()
        assert wrapper.wait(10) == 0
        output = (wrapper.stdout or "").read()
        assert "stopping redis-server (no client left)" in output, output
        assert not _answers_ping(port)
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
            wrapper.wait(10)


def test_a_server_that_stops_on_its_own_ends_the_wrapper_with_its_status() -> None:
    result = subprocess.run(
        [script("eventing-dependency"), "--redis", "127.0.0.1:1", "--", "sh", "-c", "exit 3"],
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 3  # honcho sees it stop and stops the rest

"""Every command refuses a bad environment the same way: exit 2, every bad variable named."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from testing.servers import free_port, wait_until
from testing.system import script


@pytest.mark.parametrize("command", ["eventing-proxy", "eventing-manager", "eventing-worker"])
def test_invalid_configuration_names_every_bad_variable(command: str) -> None:
    env = {
        **os.environ,
        "INGRESS_PORT": "eighty",
        "DELIVERY_RETRY": "many",
        "BROKER_URL": "mysql://x",
    }
    result = subprocess.run([script(command)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    for variable in ("INGRESS_PORT", "DELIVERY_RETRY", "BROKER_URL"):
        assert variable in result.stderr
    assert result.stderr.startswith(f"{command}: invalid configuration")
    assert "Traceback" not in result.stderr


def test_the_command_line_tool_reads_its_own_settings_alone() -> None:
    """``eventing`` refuses its own bad variables like the services do, and ignores theirs: an
    operator's shell may hold a stale service setting that is none of its business."""
    env = {**os.environ, "INGRESS_PORT": "eighty", "EVENTING_MANAGER_URL": "127.0.0.1:8081"}
    result = subprocess.run(
        [script("eventing"), "subscriptions"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.startswith("eventing: invalid configuration (1 problem(s))")
    assert "EVENTING_MANAGER_URL: expected an http:// or https:// URL" in result.stderr
    assert "INGRESS_PORT" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["eventing-manager", "eventing-worker"])
def test_a_job_signing_key_too_short_stops_the_start(command: str, tmp_path: Path) -> None:
    key = tmp_path / "job-signing.key"
    key.write_text("short\n")
    env = {**os.environ, "JOB_SIGNING_KEY_FILE": str(key)}
    result = subprocess.run([script(command)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith(f"{command}: invalid configuration")
    assert "JOB_SIGNING_KEY_FILE" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["eventing-manager", "eventing-worker"])
def test_a_misspelled_setting_and_an_unreachable_nats_are_logged(command: str) -> None:
    """Both used to be silent at the default level: the typo ignored, the wrong URL retried
    forever at debug. The warning about NATS comes once, not at every retry."""
    nats_port = free_port()
    env = {
        **os.environ,
        "EVENTING_TYPO": "1",
        "DELIVERY_RETRIES": "3",
        "NATS_URL": f"nats://app:s3cret@127.0.0.1:{nats_port}",
        "BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",
        "MANAGER_PORT": str(free_port()),
        "WORKER_METRICS_PORT": "0",
        "WORKER_PROCESSES": "1",
        "RECONNECT_WAIT": "100ms",
        "LOG_LEVEL": "debug",  # to see the retries that must not each log a warning
        "PYTHONUNBUFFERED": "1",
    }
    process = subprocess.Popen(
        [script(command)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout or ()), daemon=True)
    reader.start()
    try:
        wait_until(
            lambda: sum("NATS connection error" in line for line in lines) >= 3,
            20,
            f"three failed connection attempts\n{''.join(lines)}",
        )
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        reader.join(5)
    output = "".join(lines)
    assert "warning: EVENTING_TYPO is not a setting and is ignored" in output
    assert (
        "DELIVERY_RETRIES is not a setting and is ignored (did you mean DELIVERY_RETRY?)" in output
    )
    failures = [line for line in lines if "cannot connect to NATS" in line]
    assert len(failures) == 1, output
    assert f"at nats://app:***@127.0.0.1:{nats_port}:" in failures[0]
    assert "s3cret" not in output

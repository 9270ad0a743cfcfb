"""Every command refuses a bad environment the same way: exit 2, every bad variable named."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support.system import script


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

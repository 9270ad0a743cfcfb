"""Static checks that keep the code base honest: one-way imports, strict typing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import proxy

ROOT = Path(__file__).parents[1]


def test_import_contracts_hold() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "importlinter.cli", "--config", str(ROOT / "setup.cfg")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_proxy_exports_only_the_app_factory() -> None:
    assert proxy.__all__ == ["create_app"]


def test_code_is_strictly_typed() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "eventing",
            "proxy",
            "manager",
            "workers",
            "eventdisplay.py",
            "eventdependency.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr

"""Static checks that keep the code base honest: one-way imports, strict typing, one reader of
the environment."""

from __future__ import annotations

import ast
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


def _environment_reads(path: Path) -> list[str]:
    """Where ``path`` reads ``os.environ`` or ``os.getenv`` (setting a variable for a library
    that reads it, as ``dramatiq_worker_timeout``, is no read)."""
    tree = ast.parse(path.read_text(), str(path))
    written = {
        id(target.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Subscript)
    }
    return [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
        and node.attr in {"environ", "environb", "getenv", "getenvb"}
        and id(node) not in written
    ]


def test_only_the_settings_module_reads_the_environment() -> None:
    reads = [
        where
        for package in ("eventing", "proxy", "manager", "workers")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != ROOT / "eventing" / "settings.py"
        for where in _environment_reads(path)
    ]
    assert reads == [], "read settings through eventing.settings, not os.environ"

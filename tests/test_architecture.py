"""Static checks that keep the code base honest: one-way imports, strict typing, one reader of
the environment."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import grimp

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


#: Every package of ours, installed or run from the checkout.
OUR_PACKAGES = ("eventing", "proxy", "manager", "workers", "devtools", "cli", "testing", "bench")


def _cycles(imports: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative): each is a
    set of modules that import each other, directly or not."""
    index: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(imports):
        if root in index:
            continue
        work = [(root, iter(sorted(imports[root])))]
        index[root] = lowest[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, targets = work[-1]
            target = next(targets, None)
            if target is None:
                work.pop()
                if work:
                    lowest[work[-1][0]] = min(lowest[work[-1][0]], lowest[module])
                if lowest[module] == index[module]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == module:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
            elif target not in index:
                index[target] = lowest[target] = len(index)
                stack.append(target)
                on_stack.add(target)
                work.append((target, iter(sorted(imports[target]))))
            elif target in on_stack:
                lowest[module] = min(lowest[module], index[target])
    return components


def test_the_cycle_finder_finds_cycles() -> None:
    imports = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "d"}, "e": set()}
    assert _cycles(imports) == [["a", "b", "c"]]


def test_no_import_cycle() -> None:
    """Any cycle among our modules, direct or through others, at any depth, and imports made
    inside functions included: a cycle makes the import order decide what works, and the
    layered contracts in setup.cfg see packages, not the modules inside one."""
    graph = grimp.build_graph(*OUR_PACKAGES, cache_dir=None)
    imports = {module: graph.find_modules_directly_imported_by(module) for module in graph.modules}
    cycles = []
    for first, *others in _cycles(imports):
        # A path back to the first member stays inside the component: it shows one cycle.
        back = graph.find_shortest_chain(min(imports[first] & {*others}), first) or ()
        cycles.append(" -> ".join([first, *back]))
    assert cycles == [], "import cycles: " + "; ".join(cycles)


def test_no_module_is_installed_at_the_top_level() -> None:
    """Every program lives in a package (devtools/ for the Procfile's helpers): a top-level
    module lands loose in site-packages, where any other distribution's module of that name
    overwrites it."""
    assert sorted(path.name for path in ROOT.glob("*.py")) == ["setup.py"]
    assert "py_modules" not in (ROOT / "setup.cfg").read_text()


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
            "devtools",
            "cli",
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
        for package in ("eventing", "proxy", "manager", "workers", "cli")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != ROOT / "eventing" / "settings.py"
        for where in _environment_reads(path)
    ]
    assert reads == [], "read settings through eventing.settings, not os.environ"

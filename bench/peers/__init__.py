"""``python -m bench --suite peers --kyma-epp PATH [--kyma-manager PATH]``: Kyma's services beside
ours on this machine, under the same load, in alternating rounds.

The user builds Kyma's binaries (docs/performance.md, "Issue 16: peers", says how); the suite
runs them unmodified. Scenarios (:mod:`bench.peers.suite`):

- ``publish``: each proxy alone under wrk: binary mode at 1, 16 and 64 connections, legacy at
  64, our batch mode against Kyma's single events (Kyma has no batch mode).
- ``e2e``: wrk into each proxy, one subscription, each dispatcher delivering to one Go sink
  (needs ``--kyma-manager``).
- ``latency``: paced single events at 300 and 500 events/s, publish→sink (needs
  ``--kyma-manager``).

It needs root (a network and mount namespace of its own, :mod:`bench.peers.namespace`), Go (the
sink, and the CRDs' module versions from the binaries' build info), wrk, nats-server,
redis-server and the kube binaries of our tests (etcd, kube-apiserver).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.peers import kyma, namespace

SCENARIOS = ("publish", "e2e", "latency")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The suite's options, shared by ``python -m bench`` and ``python -m bench.peers``."""
    group = parser.add_argument_group("peer suite: Kyma's services beside ours")
    group.add_argument("--kyma-epp", type=Path, help="built eventing-publisher-proxy binary")
    group.add_argument(
        "--kyma-manager", type=Path, help="built eventing-manager binary (e2e and latency)"
    )
    group.add_argument(
        "--kyma-crds",
        type=Path,
        action="append",
        default=[],
        help="folder of Kyma's CRD files (repeatable; default: config/crd/bases of the"
        " eventing-manager and nats-manager versions the binaries were built with)",
    )
    group.add_argument("--rounds", type=int, default=3, help="rounds per side (default 3)")
    group.add_argument("--seconds", type=int, default=10, help="seconds per round (default 10)")
    group.add_argument(
        "--peer-scenario",
        action="append",
        choices=SCENARIOS,
        help="run only this peer scenario (repeatable; default: all)",
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers", description=__doc__.split("\n")[0]
    )
    add_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s: a smoke run")
    args = parser.parse_args(argv)
    if args.kyma_epp is None:
        parser.error("--kyma-epp is required")
    if min(args.rounds, args.seconds) < 1:
        parser.error("--rounds and --seconds must be positive")
    return args


def forwarded(args: argparse.Namespace) -> list[str]:
    """The command line that gives ``python -m bench.peers`` the same options."""
    argv = ["--kyma-epp", str(args.kyma_epp)]
    if args.kyma_manager is not None:
        argv += ["--kyma-manager", str(args.kyma_manager)]
    for folder in args.kyma_crds:
        argv += ["--kyma-crds", str(folder)]
    argv += ["--rounds", str(args.rounds), "--seconds", str(args.seconds)]
    for scenario in args.peer_scenario or []:
        argv += ["--peer-scenario", scenario]
    return argv + (["--quick"] if args.quick else [])


def run(args: argparse.Namespace) -> int:
    """Check the binaries and find the CRDs, then run the suite in its namespaces; its exit
    status."""
    binaries = [binary for binary in (args.kyma_epp, args.kyma_manager) if binary is not None]
    for binary in binaries:
        if not binary.is_file():
            print(f"no such binary: {binary}")
            return 2
    crds = args.kyma_crds or kyma.crd_folders(binaries)
    return namespace.run_inside(forwarded(argparse.Namespace(**{**vars(args), "kyma_crds": crds})))

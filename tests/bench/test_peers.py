"""The peer suite's pure parts: its options, the arithmetic of its figures and its tables.
Nothing here runs Kyma or a server (the suite itself is run by hand, docs/performance.md)."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest

from bench import __main__ as bench_main
from bench import peers
from bench.peers import kyma, namespace, report
from bench.peers.report import DeliveryRound, Memory, PublishRound


def test_the_suite_gets_every_option_it_was_given_inside_its_namespace() -> None:
    given = peers.parse_args(
        [
            *("--kyma-epp", "/bin/epp", "--kyma-manager", "/bin/em"),
            *("--kyma-crds", "/a", "--kyma-crds", "/b", "--rounds", "2", "--seconds", "7"),
            *("--peer-scenario", "e2e", "--peer-scenario", "latency", "--quick"),
        ]
    )
    assert peers.parse_args(peers.forwarded(given)) == given
    assert given.kyma_crds == [Path("/a"), Path("/b")]

    plain = peers.parse_args(["--kyma-epp", "/bin/epp"])
    assert peers.forwarded(plain) == ["--kyma-epp", "/bin/epp", "--rounds", "3", "--seconds", "10"]
    assert plain.kyma_manager is None and plain.peer_scenario is None


@pytest.mark.parametrize(
    "argv", [[], ["--kyma-epp", "/bin/epp", "--rounds", "0"], ["--kyma-epp", "x", "--seconds", "0"]]
)
def test_the_suite_refuses_what_it_cannot_run(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        peers.parse_args(argv)


def test_asking_for_the_peer_suite_without_kymas_binary_is_an_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as refused:
        bench_main.main(["--suite", "peers"])
    assert refused.value.code == 2
    assert "--kyma-epp" in capsys.readouterr().err


def test_the_namespace_setup_refuses_the_machines_own_namespaces(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Else it would bind-mount over the machine's /etc/hosts (pytest runs there)."""
    commands: list[list[str]] = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: commands.append(command))
    with pytest.raises(SystemExit, match="own namespaces"):
        namespace.prepare(tmp_path)
    assert commands == []


def test_crds_come_from_the_folders_given(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text("kind: CustomResourceDefinition\n")
    (tmp_path / "a.yaml").write_text("kind: CustomResourceDefinition\n")
    (tmp_path / "notes.txt").write_text("")
    assert kyma.crd_files([tmp_path]) == [
        tmp_path / "a.yaml",
        tmp_path / "b.yaml",
    ]
    with pytest.raises(SystemExit, match="no CRD files"):
        kyma.crd_files([tmp_path / "notes.txt"])


def publish_round(side: str, load: str, number: int, accepted: int, cpu: float) -> PublishRound:
    return PublishRound(side, load, number, accepted, 10.0, 1.0, 5.0, 0, accepted + 1, cpu, cpu / 4)


def test_cpu_per_event_and_rate_of_a_publish_round() -> None:
    row = publish_round("ours", "binary, 16 conns", 1, 20_000, 19.0)
    assert row.rate == 2_000
    assert row.proxy_ms == pytest.approx(0.95)
    assert row.nats_ms == pytest.approx(0.2375)
    assert math.isnan(publish_round("ours", "x", 1, 0, 1.0).proxy_ms)


def test_the_publish_table_sets_ours_against_kyma_round_by_round() -> None:
    rounds = [
        publish_round("ours", "binary, 16 conns", 1, 10_000, 10.0),
        publish_round("kyma", "binary, 16 conns", 1, 40_000, 8.0),
        publish_round("ours", "binary, 16 conns", 2, 20_000, 16.0),
        publish_round("kyma", "binary, 16 conns", 2, 50_000, 10.0),
        publish_round("ours", "batch of 50, 16 conns", 1, 150_000, 15.0),
        publish_round("ours", "batch of 50, 16 conns", 2, 160_000, 16.0),
    ]
    rows = report.publish_rows(
        ["binary, 16 conns", "batch of 50, 16 conns"], "batch of 50, 16 conns", "binary, 16 conns"
    )
    assert rows == [
        ("binary, 16 conns", "binary, 16 conns", "binary, 16 conns"),
        (
            "ours batch of 50, 16 conns vs Kyma binary, 16 conns",
            "batch of 50, 16 conns",
            "binary, 16 conns",
        ),
    ]
    lines = report.publish_table(rounds, rows).splitlines()
    single = [cell.strip() for cell in lines[2].strip("|").split("|")]
    # medians 1,500 and 4,500 events/s; per round 0.25 and 0.40; CPU 0.9 and 0.2 ms (medians)
    assert single[1:5] == [
        "1,500 [1,000-2,000]",
        "4,500 [4,000-5,000]",
        "0.33x [0.25-0.40]",
        "0.900 / 0.200",
    ]
    assert single[-1] == "+1 +1 / +1 +1"
    batch = [cell.strip() for cell in lines[3].strip("|").split("|")]
    assert batch[1:4] == ["15,500 [15,000-16,000]", "4,500 [4,000-5,000]", "3.44x [3.20-3.75]"]


def delivery_round(side: str, number: int, delivered: int, cpu: dict[str, float]) -> DeliveryRound:
    return DeliveryRound(side, number, 1_000, 0, delivered, delivered + 2, 100.0, 110.0, 112.0, cpu)


def test_cpu_per_delivered_event_losses_and_duplicates_of_a_delivery_round() -> None:
    row = delivery_round("ours", 1, 990, {"proxy": 0.99, "workers": 1.98})
    assert row.rate == pytest.approx(990 / 12)
    assert row.lost == 10 and row.duplicates == 2 and row.drain_seconds == 2
    assert row.cpu_ms() == pytest.approx({"proxy": 1.0, "workers": 2.0, "sum": 3.0})
    assert delivery_round("kyma", 1, 1_005, {}).lost == 0  # in flight when wrk stopped


def test_the_delivery_table_sums_each_sides_cpu_and_divides_ours_by_kymas() -> None:
    rounds = [
        delivery_round("ours", 1, 1_000, {"proxy": 1.0, "workers": 2.0}),
        delivery_round("kyma", 1, 1_000, {"manager": 0.3, "epp": 0.2}),
    ]
    lines = report.delivery_table(rounds).splitlines()
    assert "proxy 1.00, workers 2.00, sum 3.00" in lines[2]
    assert "manager 0.30, epp 0.20, sum 0.50" in lines[3]
    assert "1.00x" in lines[4] and "sum 6.0x" in lines[4]


def test_the_memory_table_adds_a_sides_components() -> None:
    mib = 2**20
    text = report.memory_table(
        {
            "publish": {
                "ours": {
                    "proxy": Memory(150 * mib, 90 * mib, 3),
                    "nats": Memory(30 * mib, 30 * mib, 1),
                }
            }
        }
    )
    assert [cell.strip() for cell in text.splitlines()[-1].strip("|").split("|")] == [
        "publish",
        "ours",
        "all",
        "180 MiB",
        "120 MiB",
        "4",
    ]


def test_the_rest_of_the_machine_is_what_its_busy_time_leaves_after_the_measured_processes() -> (
    None
):
    started = report.Busy(at=100.0, machine=50.0, measured=20.0)
    assert report.elsewhere_percent(started, report.Busy(110.0, 65.0, 32.0)) == pytest.approx(30)
    assert report.elsewhere_percent(started, report.Busy(110.0, 60.0, 31.0)) == 0  # tick jitter

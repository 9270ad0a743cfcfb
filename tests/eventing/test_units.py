"""Durations and sizes: each notation parsed by one function, settings' and manifests' alike."""

from __future__ import annotations

import pytest

from eventing import units


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("PT0.5S", 0.5), ("PT2M", 120.0), ("PT1H30M", 5400.0), ("P1D", 86400.0), ("P1DT2S", 86402.0)],
)
def test_iso_durations(text: str, seconds: float) -> None:
    assert units.iso_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "P", "PT", "1s", "PT-1S", "P1DT", "PT1.5M"])
def test_bad_iso_durations(text: str) -> None:
    with pytest.raises(ValueError, match="ISO-8601"):
        units.iso_duration(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5s", 5.0), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0), (" 1.5 ", 1.5)],
)
def test_setting_durations(text: str, seconds: float) -> None:
    assert units.duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5 sec", "-1s", "PT5S", "1d"])
def test_bad_setting_durations(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration such as 500ms"):
        units.duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [("65536", 65536), ("64Ki", 65536), ("700Mi", 700 * 2**20), ("1G", 10**9), ("-1", -1)],
)
def test_sizes(text: str, size: int) -> None:
    assert units.size(text) == size


@pytest.mark.parametrize("text", ["", "1.5Gi", "64KiB", "-2", "lots"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="expected a byte size"):
        units.size(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("15m", 1_000_000.0 - 900),
        ("2h", 1_000_000.0 - 7200),
        ("1970-01-12T13:46:40Z", 1_000_000.0),
        ("1970-01-12T14:46:40+01:00", 1_000_000.0),
        ("1970-01-12T13:46:40.5z", 1_000_000.5),
    ],
)
def test_a_moment_is_a_time_or_a_duration_ago(text: str, seconds: float) -> None:
    assert units.moment(text, now=1_000_000.0) == seconds


@pytest.mark.parametrize("text", ["", "yesterday", "2026-12-01T10:00:00", "-5m", "2026-13-01Z"])
def test_a_moment_without_an_offset_or_unit_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        units.moment(text, now=1_000_000.0)


def test_times_are_shown_in_utc_with_milliseconds() -> None:
    assert units.rfc3339(1_000_000.25) == "1970-01-12T13:46:40.250Z"

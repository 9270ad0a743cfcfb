"""The arithmetic behind the bench's figures: CPU per event, PSS from /proc, stored bytes per
message, lost and duplicate deliveries. Pure functions on given inputs; no timing."""

from __future__ import annotations

import math
import os

from bench.e2e import lost_and_duplicates, paced_rates
from bench.publish import bytes_per_message
from bench.publishers import StreamState
from bench.tables import ms, ms_per
from testing.procstats import parse_pss, pss

SMAPS_ROLLUP = """\
561d5e1c4000-7fffd70fa000 ---p 00000000 00:00 0                          [rollup]
Rss:               38612 kB
Pss:               21345 kB
Pss_Dirty:         12000 kB
Pss_Anon:          11000 kB
Shared_Clean:      17000 kB
"""


def test_cpu_ms_per_event_divides_cpu_seconds_by_the_count() -> None:
    assert ms_per(1.5, 1_000) == 1.5
    assert ms_per(0.25, 500) == 0.5
    assert ms(ms_per(0.123, 100)) == "1.23"


def test_cpu_ms_per_event_of_no_events_prints_no_figure() -> None:
    assert math.isnan(ms_per(2.0, 0))
    assert ms(ms_per(2.0, 0)) == "-"


def test_pss_comes_from_the_pss_line_not_its_prefixed_neighbours() -> None:
    assert parse_pss(SMAPS_ROLLUP) == 21345 * 1024


def test_pss_of_a_text_without_the_line_is_zero() -> None:
    assert parse_pss("Rss:  100 kB\n") == 0


def test_pss_of_this_process_is_read_and_at_most_its_rss() -> None:
    ours = pss(os.getpid())
    with open("/proc/self/statm") as statm:
        rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    assert 0 < ours <= rss * 1.1  # pages may be mapped between the two reads


def test_stored_bytes_per_message_counts_only_what_the_scenario_added() -> None:
    before, after = StreamState(1_000, 1_900_000), StreamState(3_000, 5_700_000)
    assert bytes_per_message(before, after) == 1_900


def test_stored_bytes_per_message_without_new_messages_or_a_reading_is_none() -> None:
    state = StreamState(10, 19_000)
    assert bytes_per_message(state, state) is None
    assert bytes_per_message(None, state) is None


def test_a_duplicate_does_not_make_up_for_a_lost_delivery() -> None:
    assert lost_and_duplicates(["a", "a", "b"], events=3, copies=1) == (1, 1)


def test_fan_out_copies_are_neither_lost_nor_duplicates() -> None:
    ids = ["a", "b"] * 10
    assert lost_and_duplicates(ids, events=2, copies=10) == (0, 0)
    assert lost_and_duplicates([*ids, "a"], events=2, copies=10) == (0, 1)
    assert lost_and_duplicates(ids[:-1], events=2, copies=10) == (1, 0)


def test_paced_rows_cover_the_target_rates_below_the_chosen_one() -> None:
    assert paced_rates(500) == [300, 500]
    assert paced_rates(1_000) == [300, 500, 1_000]
    assert paced_rates(200) == [200]

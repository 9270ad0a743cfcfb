"""The manager commands of ``eventing`` against a fake of the manager's API (tests/cli/conftest):
tables, --json, pages, operations followed to their end, problems, credentials, usage errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from click.testing import CliRunner, Result

from cli.main import eventing
from eventing import units
from testing.servers import free_port, wait_until
from testing.system import script
from tests.cli.conftest import TOKEN, FakeManager, operation, record


def run(fake: FakeManager, *args: str, input: str | None = None, **env: str) -> Result:
    environ = {
        "EVENTING_MANAGER_URL": fake.url,
        "EVENTING_MANAGER_TOKEN_FILE": str(fake.token_file),
        "COLUMNS": "200",  # rich's width off a terminal; the tables' cells stay whole
        **env,
    }
    return CliRunner().invoke(eventing, list(args), env=environ, input=input)


def test_subscriptions_shows_each_ones_delivery_figures_with_the_token_sent(
    fake_manager: FakeManager,
) -> None:
    result = run(fake_manager, "subscriptions")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "SUBSCRIPTION",
        "READY",
        "PENDING",
        "RETRYING",
        "DEAD-LETTERED",
        "LAST",
        "ERROR",
    ]
    orders = next(line for line in lines if line.startswith("default/orders"))
    assert orders.split()[:5] == ["default/orders", "yes", "4", "2", "3"]
    assert "2026-12-01T10:00:00.000Z 503 sink answered 503" in orders
    assert "failing since 2026-12-01T09:58:00.000Z" in orders
    audit = next(line for line in lines if line.startswith("shop/audit"))
    assert audit.split() == ["shop/audit", "no", "0", "0", "0", "-"]
    assert "unreadable: broken.yaml: not YAML" in result.stderr
    assert "\x1b[" not in result.output, "no colours off a terminal"
    assert [seen.authorization for seen in fake_manager.seen] == [f"Bearer {TOKEN}"]


def test_json_prints_the_apis_document_as_it_came(fake_manager: FakeManager) -> None:
    from tests.cli.conftest import EVENT, SUBSCRIPTIONS

    listed = run(fake_manager, "subscriptions", "--json")
    shown = run(fake_manager, "events", "show", "--source", "/shop", "order-1", "--json")
    assert listed.exit_code == shown.exit_code == 0, listed.output + shown.output
    assert json.loads(listed.stdout) == SUBSCRIPTIONS
    assert json.loads(shown.stdout) == EVENT
    assert fake_manager.requests_to("/events")[0].query == {"source": "/shop", "id": "order-1"}


def test_events_show_lists_every_attempt_per_subscription(fake_manager: FakeManager) -> None:
    result = run(fake_manager, "events", "show", "--source", "/shop", "order-1")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "event order-1 from /shop, type order.created.v1" in out
    assert "default/orders: delivered (sequence 7)" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert rows[0][:5] == ["1", "2026-12-01T10:00:01.000Z", "0.250", "500", "database"]
    assert rows[1][:4] == ["2", "2026-12-01T10:00:02.000Z", "0.500", "timeout:"]
    assert "no answer within 10s" in out
    assert rows[2][:4] == ["3", "2026-12-01T10:00:03.000Z", "0.750", "204"]
    assert "shop/audit: pending (sequence 7)" in out and "no attempt yet" in out


def test_an_api_problem_prints_its_detail_and_exits_1(fake_manager: FakeManager) -> None:
    result = run(fake_manager, "events", "show", "--source", "/shop", "nope")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "eventing: the manager answered 404 Not Found: nothing is known of event 'nope' from"
        " '/shop'"
    )
    assert result.stdout == ""


def test_dlq_list_follows_the_pages_up_to_the_limit(fake_manager: FakeManager) -> None:
    every = run(fake_manager, "dlq", "list", "--subscription", "default/orders", "--json")
    assert every.exit_code == 0, every.output
    assert [item["sequence"] for item in json.loads(every.stdout)["items"]] == [1, 2, 3, 4, 5]
    assert json.loads(every.stdout)["next"] is None
    pages = fake_manager.requests_to("/deadletters")
    assert [seen.query.get("after") for seen in pages] == [None, "2", "4"]
    assert all(seen.query["subscription"] == "default/orders" for seen in pages)

    fake_manager.seen.clear()
    some = run(fake_manager, "dlq", "list", "--limit", "3", "--reason", "503")
    assert some.exit_code == 0, some.output
    sequences = [line.split()[0] for line in some.stdout.splitlines()[1:]]
    assert sequences == ["1", "2", "3"]
    assert [seen.query["limit"] for seen in fake_manager.requests_to("/deadletters")] == ["3", "1"]
    assert "more after sequence 3: raise --limit to see them" in some.stderr
    row = some.stdout.splitlines()[1].split()
    assert row[:8] == [
        "1",
        "2026-12-01T09:00:01.000Z",
        "default/orders",
        "/shop",
        "order-1",
        "order.created.v1",
        "503",
        "6",
    ]


def test_since_is_sent_as_the_rfc3339_time_it_stands_for(fake_manager: FakeManager) -> None:
    before = time.time()
    result = run(fake_manager, "dlq", "list", "--since", "2h")
    assert result.exit_code == 0, result.output
    sent = units.moment(fake_manager.requests_to("/deadletters")[0].query["since"], 0)
    assert before - 7200 - 1 <= sent <= time.time() - 7200 + 1


def test_a_bad_time_is_a_usage_error_before_anything_is_sent(fake_manager: FakeManager) -> None:
    result = run(fake_manager, "dlq", "list", "--since", "yesterday")
    assert result.exit_code == 2
    assert "Invalid value for '--since'" in result.stderr
    assert "expected an RFC 3339 time with its offset" in result.stderr
    both = run(
        fake_manager, "dlq", "redrive", "--subscription", "default/orders", "--sequence", "1"
    )
    assert both.exit_code == 2
    assert "expected exactly one of --subscription | --sequence" in both.stderr
    unnamed = run(fake_manager, "replay", "orders", "--since", "15m")
    assert unnamed.exit_code == 2 and "expected namespace/name" in unnamed.stderr
    assert fake_manager.seen == []


def test_dlq_show_gives_the_fields_the_event_and_the_attempts(fake_manager: FakeManager) -> None:
    result = run(fake_manager, "dlq", "show", "3")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "sink          http://orders.example/events" in out
    assert "reason        503 Service Unavailable after 6 attempts" in out
    assert '"source": "/shop"' in out and '"n": 1' in out
    assert "attempts" in out and "2026-12-01T10:00:02.000Z" in out
    missing = run(fake_manager, "dlq", "show", "9")
    assert missing.exit_code == 1 and "no dead letter 9 in sap-dlq" in missing.stderr


def test_a_redrive_is_followed_until_its_operation_is_done(fake_manager: FakeManager) -> None:
    fake_manager.steps = [
        operation("running", 0, 0),
        operation("running", 1, 3),
        operation("running", 2, 3),
        operation("done", 3, 3),
    ]
    result = run(fake_manager, "dlq", "redrive", "--sequence", "1", "--sequence", "4")
    assert result.exit_code == 0, result.output
    assert fake_manager.requests_to("/deadletters/redrive")[0].body == {"sequences": [1, 4]}
    assert len(fake_manager.requests_to("/operations/redrive-1")) == 3
    assert result.stdout.strip() == "redrive-1 done: 3 of 3 events handed over"


def test_on_a_terminal_the_progress_is_drawn_as_a_bar_on_stderr(fake_manager: FakeManager) -> None:
    fake_manager.steps = [operation("running", 0, 4), operation("done", 4, 4)]
    # rich's way of being told stderr is a terminal (CliRunner's streams are not)
    result = run(fake_manager, "dlq", "redrive", "--sequence", "1", TTY_COMPATIBLE="1")
    assert result.exit_code == 0, result.output
    assert "redrive default/orders" in result.stderr and "4/4" in result.stderr
    assert result.stdout.strip() == "redrive-1 done: 4 of 4 events handed over"


def test_publish_checks_the_event_before_sending(fake_manager: FakeManager) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: a usage error comes first
    not_json = run(
        fake_manager,
        "publish",
        "--source",
        "/s",
        "--type",
        "t",
        "--data",
        "{x",
        EVENTING_PROXY_URL=url,
    )
    assert (
        not_json.exit_code == 2
        and "Invalid value for --data: expected a JSON value" in not_json.stderr
    )
    no_source = run(fake_manager, "publish", "--source", "", "--type", "t", EVENTING_PROXY_URL=url)
    assert no_source.exit_code == 2
    assert "not a valid CloudEvent: source: required, a non-empty string" in no_source.stderr


def test_a_redrive_without_waiting_prints_the_operation(fake_manager: FakeManager) -> None:
    fake_manager.steps = [operation("running", 0, 0), operation("done", 5, 5)]
    started = run(
        fake_manager,
        "dlq",
        "redrive",
        "--subscription",
        "default/orders",
        "--reason",
        "503",
        "--no-wait",
        "--json",
    )
    assert started.exit_code == 0, started.output
    assert json.loads(started.stdout) == {"operation": operation("running", 0, 0)}
    assert fake_manager.requests_to("/operations/redrive-1") == []
    assert fake_manager.requests_to("/deadletters/redrive")[0].body == {
        "subscription": "default/orders",
        "reason": "503",
    }


def test_a_failed_operation_exits_1_with_its_detail(fake_manager: FakeManager) -> None:
    fake_manager.steps = [
        operation("running", 0, 2),
        operation("failed", 1, 2, detail="the sink's subscription was deleted"),
    ]
    result = run(fake_manager, "dlq", "redrive", "--sequence", "2", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["state"] == "failed"
    assert "redrive-1 failed: the sink's subscription was deleted" in result.stderr


def test_a_purge_asks_first_unless_yes(fake_manager: FakeManager) -> None:
    declined = run(fake_manager, "dlq", "purge", "--subscription", "default/orders", input="n\n")
    assert declined.exit_code == 1
    assert "Purge every dead letter of default/orders? This cannot be undone" in declined.stderr
    assert fake_manager.requests_to("/deadletters/purge") == []
    purged = run(fake_manager, "dlq", "purge", "--before", "2026-11-30T00:00:00Z", "--yes")
    assert purged.exit_code == 0, purged.output
    assert purged.stdout.strip() == "purged 2 dead letters"
    body = fake_manager.requests_to("/deadletters/purge")[0].body
    assert body == {"before": "2026-11-30T00:00:00.000Z"}
    listed = run(fake_manager, "dlq", "purge", "--sequence", "3", "--sequence", "5", input="y\n")
    assert listed.exit_code == 0 and "Purge dead letters 3, 5?" in listed.stderr
    assert fake_manager.requests_to("/deadletters/purge")[1].body == {"sequences": [3, 5]}


def test_a_replay_prints_what_had_expired(fake_manager: FakeManager) -> None:
    fake_manager.steps = [
        operation("running", 0, 0, id="replay-4", kind="replay"),
        operation("done", 8, 8, id="replay-4", kind="replay", expired=2),
    ]
    result = run(fake_manager, "replay", "default/orders", "--since", "2026-12-01T09:00:00+01:00")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        "replay-4 done: 8 of 8 events handed over, 2 expired (retention removed them before the"
        " replay)"
    )
    sent = fake_manager.requests_to("/subscriptions/default/orders/replay")[0]
    assert sent.body == {"since": "2026-12-01T08:00:00.000Z"}
    off = run(fake_manager, "replay", "default/archive-off", "--since", "15m")
    assert off.exit_code == 1
    assert "409 Conflict: the archive is off (EVENT_ARCHIVE_MAX_AGE=0)" in off.stderr


def test_tail_prints_one_line_per_record(fake_manager: FakeManager) -> None:
    fake_manager.tail_records = [
        record("order-1", "retrying", 500),
        record("order-1", "delivered", 204),
    ]
    result = run(fake_manager, "tail", "default/orders")
    lines = result.stdout.splitlines()
    assert lines == [
        "2026-12-01T10:00:01.000Z  retrying  order-1  /shop  #1 500 sink answered 500  0.250s",
        "2026-12-01T10:00:01.000Z  delivered  order-1  /shop  #1 204  0.250s",
    ]
    assert result.exit_code == 1, "the manager ended the stream: not the user's doing"
    assert "the manager ended the tail of default/orders" in result.stderr
    raw = run(fake_manager, "tail", "default/orders", "--json")
    assert [json.loads(line) for line in raw.stdout.splitlines()] == fake_manager.tail_records


def test_ctrl_c_ends_a_tail_quietly(fake_manager: FakeManager, tmp_path: Path) -> None:
    fake_manager.tail_records = [record("order-9", "delivered", 204)]
    fake_manager.tail_stays_open = True
    env = {
        **os.environ,
        "EVENTING_MANAGER_URL": fake_manager.url,
        "EVENTING_MANAGER_TOKEN_FILE": str(fake_manager.token_file),
    }
    output = tmp_path / "tail.out"
    with output.open("wb") as stdout:
        process = subprocess.Popen(
            [script("eventing"), "tail", "default/orders"],
            env=env,
            stdout=stdout,
            stderr=subprocess.PIPE,
        )
        try:
            wait_until(lambda: b"order-9" in output.read_bytes(), 20, "the tail's first line")
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=20)
        finally:
            process.kill()
    assert process.returncode == 0
    assert stderr == b""


def test_a_refused_connection_names_the_url_and_its_setting(fake_manager: FakeManager) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run(fake_manager, "subscriptions", EVENTING_MANAGER_URL=url)
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"eventing: cannot reach the manager at {url} (connection refused): is it running"
        " there? Set EVENTING_MANAGER_URL to the URL it listens on"
    )


def test_a_wrong_or_unreadable_token_is_said_so(fake_manager: FakeManager, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-token"
    wrong.write_text("guess\n")
    refused = run(fake_manager, "subscriptions", EVENTING_MANAGER_TOKEN_FILE=str(wrong))
    assert refused.exit_code == 1
    assert "the manager answered 401 Unauthorized" in refused.stderr
    assert "EVENTING_MANAGER_TOKEN_FILE" in refused.stderr
    assert fake_manager.seen[-1].authorization == "Bearer guess"
    missing = str(tmp_path / "missing")
    unreadable = run(fake_manager, "subscriptions", EVENTING_MANAGER_TOKEN_FILE=missing)
    assert unreadable.exit_code == 2
    assert f"EVENTING_MANAGER_TOKEN_FILE: cannot read the file {missing!r}" in unreadable.stderr


def test_a_bad_setting_exits_2_naming_it(fake_manager: FakeManager) -> None:
    result = run(fake_manager, "subscriptions", EVENTING_MANAGER_URL="127.0.0.1:8081")
    assert result.exit_code == 2
    assert result.stderr.startswith("eventing: invalid configuration")
    assert "EVENTING_MANAGER_URL: expected an http:// or https:// URL" in result.stderr
    assert fake_manager.seen == []

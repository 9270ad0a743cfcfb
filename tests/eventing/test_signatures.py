"""Signed jobs: what a worker admits, and the key one machine's processes share."""

from __future__ import annotations

import multiprocessing
import stat
from pathlib import Path
from typing import Any

import pytest

from eventing.delivery import jobs, signatures
from eventing.delivery.jobs import DeliveryJob
from eventing.errors import ConfigError, UntrustedJob
from tests.workers.conftest import make_job

KEY = b"s" * 32
STREAM = "sap"
CONSUMER = "c0ffee"


def job_document(**changes: Any) -> dict[str, Any]:
    job = make_job(
        event='{"specversion":"1.0","id":"1","data":"card 4111 1111 1111 1111"}',
        sink="https://user:pass@sink.test/hook?token=abc",
        consumer=CONSUMER,
        ack_subject=f"$JS.ACK.{STREAM}.{CONSUMER}.1.7.7.1700000000000000000.0",
    )
    return {**job.to_dict(), **changes}


def admit(document: Any, signature: Any) -> DeliveryJob:
    return jobs.admit(document, signature, key=KEY, streams={STREAM})


def test_a_signed_job_is_admitted_after_any_reordering() -> None:
    document = job_document()
    signature = signatures.sign(document, KEY)
    reordered = dict(reversed(list(document.items())))
    assert admit(reordered, signature) == DeliveryJob.from_dict(document)


@pytest.mark.parametrize(
    ("document", "signature", "reason"),
    [
        (job_document(), None, "unsigned"),
        (job_document(), "", "unsigned"),
        (job_document(), signatures.sign(job_document(), b"o" * 32), "bad-signature"),
        (
            job_document(sink="http://attacker.test/"),
            signatures.sign(job_document(), KEY),
            "bad-signature",
        ),
        ("not a job", "x", "malformed"),
    ],
)
def test_unsigned_altered_and_foreign_jobs_are_refused(
    document: Any, signature: Any, reason: str
) -> None:
    with pytest.raises(UntrustedJob) as refused:
        admit(document, signature)
    assert refused.value.reason == reason
    assert "4111" not in str(refused.value) and "pass" not in str(refused.value)


@pytest.mark.parametrize(
    "subject",
    [
        "kyma.orders.order.created.v1",  # an event subject: the "ack" would be stored as an event
        f"$JS.ACK.other.{CONSUMER}.1.7.7.0.0",  # another stream
        f"$JS.ACK.{STREAM}.someone-else.1.7.7.0.0",  # another consumer
        f"$JS.ACK.{STREAM}.{CONSUMER}.>",
        f"$JS.ACK.{STREAM}.{CONSUMER}.1.7.7.0",
    ],
)
def test_a_signed_job_acking_outside_its_consumer_is_refused(subject: str) -> None:
    document = job_document(ack_subject=subject)
    with pytest.raises(UntrustedJob) as refused:
        admit(document, signatures.sign(document, KEY))
    assert refused.value.reason == "bad-ack-subject"


def test_the_reply_subjects_of_both_forms_are_admitted() -> None:
    for subject in (
        f"$JS.ACK.{STREAM}.{CONSUMER}.1.7.7.1700000000000000000.0",
        f"$JS.ACK._.ACCHASH.{STREAM}.{CONSUMER}.1.7.7.1700000000000000000.0.TOKEN",
    ):
        assert signatures.ack_subject_problem(subject, streams={STREAM}, consumer=CONSUMER) is None


def test_the_key_file_named_is_read(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"x" * 40 + b"\n")
    assert signatures.load_key(str(path), tmp_path / "unused") == b"x" * 40


@pytest.mark.parametrize("content", [None, b"short\n"])
def test_a_missing_or_short_key_file_is_a_config_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "key"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as error:
        signatures.load_key(str(path), tmp_path)
    assert "JOB_SIGNING_KEY_FILE" in error.value.problems


def test_a_machine_key_that_cannot_be_made_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("")
    with pytest.raises(ConfigError) as error:
        signatures.load_key("", tmp_path / "not-a-folder" / "eventing")
    assert "cannot be made" in error.value.problems["JOB_SIGNING_KEY_FILE"]


def _load(state: str, results: Any) -> None:
    results.put(signatures.load_key("", Path(state)))


def test_processes_starting_together_share_one_private_key(tmp_path: Path) -> None:
    state = tmp_path / "state" / "eventing"
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_load, args=(str(state), results)) for _ in range(4)]
    for process in processes:
        process.start()
    keys = {results.get(timeout=30) for _ in processes}
    for process in processes:
        process.join(30)
    assert len(keys) == 1 and len(keys.pop()) >= signatures.MIN_KEY_BYTES
    [key_file] = state.iterdir()  # no temporary file left behind
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700


def test_the_fields_of_replays_and_redrives_travel_signed() -> None:
    document = job_document(
        origin="redrive",
        published=1_700_000_000.25,
        dead_letter_sequence=9,
        ack_subject=f"$JS.ACK.{STREAM}.{CONSUMER}-redrive.1.9.9.1700000000000000000.0",
    )
    admitted = admit(document, signatures.sign(document, KEY))
    assert (admitted.origin, admitted.published, admitted.dead_letter_sequence) == (
        "redrive",
        1_700_000_000.25,
        9,
    )
    assert admitted.to_dict() == document


def test_a_live_job_carries_no_default_fields() -> None:
    assert not {"origin", "published", "dead_letter_sequence"} & set(make_job().to_dict())


def test_an_unknown_origin_is_malformed() -> None:
    document = job_document(origin="elsewhere")
    with pytest.raises(UntrustedJob) as refused:
        admit(document, signatures.sign(document, KEY))
    assert refused.value.reason == "malformed"


def test_archive_and_dead_letter_subjects_are_admitted_when_named() -> None:
    subject = f"$JS.ACK.sap-archive.{CONSUMER}.1.7.7.1700000000000000000.0"
    assert signatures.ack_subject_problem(subject, streams={STREAM}) is not None
    assert signatures.ack_subject_problem(subject, streams={STREAM, "sap-archive"}) is None


@pytest.mark.parametrize(
    ("origin", "stream", "reader"),
    [
        ("replay", "sap-archive", f"{CONSUMER}-replay"),
        ("redrive", "sap-dlq", f"{CONSUMER}-redrive"),
        ("dead-letter-sink", "sap-dlq", f"{CONSUMER}-dead-letter-sink"),
    ],
)
def test_a_job_of_another_origin_acks_only_its_readers_messages(
    origin: str, stream: str, reader: str
) -> None:
    streams = {STREAM, "sap-archive", "sap-dlq"}
    own = job_document(origin=origin, ack_subject=f"$JS.ACK.{stream}.{reader}.1.3.3.1.0")
    assert jobs.admit(own, signatures.sign(own, KEY), key=KEY, streams=streams).origin == origin
    live = job_document(origin=origin, ack_subject=f"$JS.ACK.{stream}.{CONSUMER}.1.3.3.1.0")
    with pytest.raises(UntrustedJob) as refused:
        jobs.admit(live, signatures.sign(live, KEY), key=KEY, streams=streams)
    assert refused.value.reason == "bad-ack-subject"

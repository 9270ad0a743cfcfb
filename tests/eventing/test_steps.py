"""The next step of a delivery job: every retry rule, without a sink, a store or a clock."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from eventing.delivery.steps import (
    NOTHING_MADE,
    DeadLetter,
    Failure,
    Progress,
    RetryLater,
    RunAttempt,
    Step,
    after_a_fault,
    may_be_counted,
    next_step,
)
from tests.eventing.test_retries import POLICY

# Delays 1, 2, 4, 8, 16 s; waits over 15 s go back to JetStream: attempts 1-5 | 6.
NOW = 1_000_000.0
UNAVAILABLE = Failure("sink answered 503", 503, None)


def step(progress: Progress | None, delivery_count: int = 1, now: float = NOW) -> Step:
    return next_step(
        POLICY, progress, delivery_count, now, extra_deliveries=2, rng=random.Random(1)
    )


def failed(made: int, failure: Failure | None = UNAVAILABLE, ago: float = 0.0) -> Progress:
    return Progress(made, NOW - ago, failure)


def test_a_first_delivery_runs_the_first_attempt_at_once() -> None:
    assert step(NOTHING_MADE) == RunAttempt(1, 0.0)


def test_a_failure_in_the_job_is_followed_by_the_next_attempt_after_its_jittered_delay() -> None:
    next_one = step(failed(2))
    assert isinstance(next_one, RunAttempt) and next_one.number == 3
    assert 2 * 0.9 <= next_one.pause <= 2 * 1.1


def test_a_delay_beyond_the_in_job_wait_goes_back_to_jetstream() -> None:
    back = step(failed(5))
    assert isinstance(back, RetryLater)
    assert back.attempts == 5 and back.reason == "sink answered 503"
    assert 16 * 0.9 <= back.delay <= 16 * 1.1


def test_a_long_retry_after_ends_the_job_and_sets_the_delay() -> None:
    back = step(failed(1, Failure("sink answered 429", 429, 20.0)))
    assert back == RetryLater(20.0, 1, "sink answered 429")


def test_a_short_retry_after_is_waited_in_the_job() -> None:
    assert step(failed(1, Failure("sink answered 503", 503, 6.0))) == RunAttempt(2, 6.0)


def test_retry_after_is_capped() -> None:
    back = step(failed(1, Failure("sink answered 429", 429, 3600.0)))
    assert isinstance(back, RetryLater) and back.delay == POLICY.retry_after_max


def test_the_last_failed_attempt_is_a_dead_letter_with_its_answer() -> None:
    assert step(failed(6)) == DeadLetter("out of attempts: sink answered 503", 503, 6)


def test_a_redelivery_resumes_after_what_is_left_of_the_wait() -> None:
    resumed = step(failed(2, failure=None, ago=0.5), delivery_count=2)
    assert isinstance(resumed, RunAttempt) and resumed.number == 3
    assert 2 * 0.9 - 0.5 <= resumed.pause <= 2 * 1.1 - 0.5


def test_a_redelivery_after_the_whole_wait_runs_at_once() -> None:
    assert step(failed(5, failure=None, ago=60), delivery_count=2) == RunAttempt(6, 0.0)


def test_a_wait_that_is_not_over_goes_back_with_what_is_left() -> None:
    patient = replace(POLICY, in_job_wait_max=3.0)  # attempt 4 is due 4 s after attempt 3
    progress = failed(3, failure=None, ago=0.5)
    back = next_step(patient, progress, 2, NOW, extra_deliveries=2, rng=random.Random(1))
    assert isinstance(back, RetryLater)
    assert back.reason == "attempt 4 is not due yet" and back.attempts == 3
    assert 4 * 0.9 - 0.5 <= back.delay <= 4 * 1.1 - 0.5


def test_all_attempts_made_before_an_interruption_is_a_dead_letter() -> None:
    assert step(failed(6, failure=None, ago=60), delivery_count=2) == DeadLetter(
        "out of attempts: all 6 failed before an interruption", None, 6
    )


@pytest.mark.parametrize(("delivery_count", "first"), [(2, 6), (3, 6), (1, 1)])
def test_unknown_progress_runs_the_group_the_delivery_count_points_at(
    delivery_count: int, first: int
) -> None:
    assert step(None, delivery_count) == RunAttempt(first, 0.0)


@pytest.mark.parametrize("progress", [None, failed(3, failure=None, ago=60)])
def test_more_deliveries_than_the_plan_and_its_spares_is_a_dead_letter(
    progress: Progress | None,
) -> None:
    # Two groups and two spare deliveries: the fifth delivery ends a crash loop.
    assert isinstance(step(progress, delivery_count=4), RunAttempt)
    last = step(progress, delivery_count=5)
    assert isinstance(last, DeadLetter) and "delivered 5 times" in last.reason
    assert last.attempts == (progress.made if progress else 0) and last.status is None


def test_a_count_exists_only_for_an_event_that_failed_before() -> None:
    assert not may_be_counted(1, 1)
    assert may_be_counted(2, 1) and may_be_counted(1, 2)


def test_a_fault_of_ours_backs_off_with_the_delivery_count() -> None:
    assert [after_a_fault(POLICY, count) for count in (1, 2, 3)] == [1.0, 2.0, 4.0]

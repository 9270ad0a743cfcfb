"""Reconcile planning: create, update in place, delete orphans, leave foreign consumers."""

from __future__ import annotations

from dataclasses import replace

from manager.reconcile import (
    FIRST_RETRY,
    LAST_RETRY,
    ActualConsumer,
    ConsumerSpec,
    Create,
    Delete,
    Retries,
    Update,
    desired,
    plan,
)
from tests.eventing.test_subscription import manifest, parse

SPEC = ConsumerSpec("c1", "default/s", "a.b.v1", ("kyma.app.a.b.v1",), 10, 30.0)


def actual(spec: ConsumerSpec, *, managed: bool = True) -> ActualConsumer:
    return ActualConsumer(
        spec.name,
        spec.subjects,
        spec.max_ack_pending,
        spec.ack_wait,
        managed,
        spec.subscription,
        spec.origin,
    )


def test_nothing_to_do_when_in_line() -> None:
    assert plan({"c1": SPEC}, {"c1": actual(SPEC)}) == []


def test_missing_consumers_are_created() -> None:
    assert plan({"c1": SPEC}, {}) == [Create(SPEC)]


def test_changed_limits_and_subjects_update_in_place() -> None:
    for changed in (
        replace(SPEC, max_ack_pending=1),
        replace(SPEC, subjects=("kyma.app.a.b.v1", "kyma.x.y.z.v1")),
        replace(SPEC, ack_wait=60.0),
    ):
        assert plan({"c1": changed}, {"c1": actual(SPEC)}) == [Update(changed)]


def test_orphans_of_ours_are_deleted_and_foreign_consumers_kept() -> None:
    orphan = replace(SPEC, name="orphan")
    foreign = replace(SPEC, name="foreign")
    current = {"orphan": actual(orphan), "foreign": actual(foreign, managed=False)}
    assert plan({}, current) == [Delete("orphan")]


def test_adopting_a_same_named_consumer_marks_it_ours() -> None:
    assert plan({"c1": SPEC}, {"c1": actual(SPEC, managed=False)}) == [Update(SPEC)]


def test_desired_consumers_follow_the_subscriptions() -> None:
    subscription = parse(
        manifest(
            {
                "types": ["a.b.v1", "c.d.v1"],
                "config": {"maxInFlightMessages": "3"},
                "delivery": {"timeout": "PT40S"},
            }
        )
    )
    specs = desired((subscription,), least_ack_wait=30.0)
    assert len(specs) == 2
    spec = next(iter(specs.values()))
    assert spec.max_ack_pending == 3
    assert spec.ack_wait == 85.0  # twice the request timeout plus a margin
    assert spec.subscription == "default/lastorder-sub"


def test_the_consumers_of_an_invalid_subscription_are_kept() -> None:
    kept = ActualConsumer("c9", ("kyma.x.y",), 10, 30.0, True, subscription="default/typo")
    orphan = ActualConsumer("c8", ("kyma.x.z",), 10, 30.0, True, subscription="default/gone")
    assert plan({}, {"c9": kept, "c8": orphan}, keep=frozenset({"default/typo"})) == [Delete("c8")]


def test_an_unreadable_file_keeps_only_its_own_consumers() -> None:
    """A broken file must not freeze the others: a subscription deleted from another file
    loses its consumer at once (before, one unreadable file kept every consumer)."""
    in_broken = ActualConsumer("c1", ("kyma.x",), 10, 30.0, True, "default/a", "broken.yaml")
    deleted = ActualConsumer("c2", ("kyma.y",), 10, 30.0, True, "default/b", "other.yaml")
    assert plan({}, {"c1": in_broken, "c2": deleted}, unreadable=frozenset({"broken.yaml"})) == [
        Delete("c2")
    ]


def test_a_consumer_that_recorded_no_file_stays_while_a_file_is_unreadable() -> None:
    older = ActualConsumer("c1", ("kyma.x",), 10, 30.0, True, "default/a", None)
    assert plan({}, {"c1": older}, unreadable=frozenset({"broken.yaml"})) == []
    assert plan({}, {"c1": older}) == [Delete("c1")]


def test_a_subscription_moved_to_another_file_updates_its_consumer() -> None:
    moved = replace(SPEC, origin="b.yaml")
    assert plan({"c1": moved}, {"c1": actual(replace(SPEC, origin="a.yaml"))}) == [Update(moved)]


def test_failed_actions_are_retried_with_doubling_pauses() -> None:
    retries = Retries()
    create = Create(SPEC)
    pauses = []
    now = 0.0
    for _ in range(10):
        attempt, held = retries.due([create], now)
        assert attempt == [create] and held == {}
        retries.record(attempt, {"c1": "maximum consumers limit reached"}, now)
        pauses.append(retries.failures["c1"].pause)
        assert retries.due([create], now + pauses[-1] - 0.01) == (
            [],
            {"c1": "maximum consumers limit reached"},
        )
        now += pauses[-1]
    assert pauses[:4] == [FIRST_RETRY, 2 * FIRST_RETRY, 4 * FIRST_RETRY, 8 * FIRST_RETRY]
    assert pauses[-1] == LAST_RETRY
    retries.record([create], {}, now)
    assert retries.failures == {} and retries.next_attempt is None


def test_a_changed_action_and_a_freed_slot_skip_the_pause() -> None:
    retries = Retries()
    retries.record([Create(SPEC)], {"c1": "limit"}, 0.0)
    changed = Create(replace(SPEC, max_ack_pending=3))
    assert retries.due([changed], 0.0) == ([changed], {})
    assert retries.due([Create(SPEC)], 0.0)[0] == []
    changes = retries.record([Delete("other")], {}, 0.5)
    assert changes == [] and retries.next_attempt == 0.5
    assert retries.due([Create(SPEC)], 0.5) == ([Create(SPEC)], {})


def test_only_new_or_changed_failures_are_reported() -> None:
    retries = Retries()
    assert len(retries.record([Create(SPEC)], {"c1": "limit"}, 0.0)) == 1
    assert retries.record([Create(SPEC)], {"c1": "limit"}, 1.0) == []
    assert len(retries.record([Create(SPEC)], {"c1": "timeout"}, 3.0)) == 1

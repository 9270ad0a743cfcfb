"""Reconcile planning: create, update in place, delete orphans, leave foreign consumers."""

from __future__ import annotations

from dataclasses import replace

from manager.reconcile import ActualConsumer, ConsumerSpec, Create, Delete, Update, desired, plan
from tests.eventing.test_subscription import manifest, parse

SPEC = ConsumerSpec("c1", "default/s", "a.b.v1", ("kyma.app.a.b.v1",), 10, 30.0)


def actual(spec: ConsumerSpec, *, managed: bool = True) -> ActualConsumer:
    return ActualConsumer(spec.name, spec.subjects, spec.max_ack_pending, spec.ack_wait, managed)


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

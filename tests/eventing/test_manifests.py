"""A folder of manifests: several documents per file, broken files, duplicates, changes."""

from __future__ import annotations

import functools
from pathlib import Path

from eventing.errors import InvalidSubscription
from eventing.manifests import DirectoryReader
from eventing.subscription import Subscription, from_manifest
from tests.eventing.test_subscription import DEFAULTS, PREFIX

TWO = """
apiVersion: eventing.kyma-project.io/v1alpha2
kind: Subscription
metadata: {name: one}
spec: {sink: "http://127.0.0.1:1/", source: app, types: [a.b.v1]}
---
apiVersion: eventing.kyma-project.io/v1alpha2
kind: Subscription
metadata: {name: two, namespace: team}
spec: {sink: "http://127.0.0.1:1/", source: app, types: [c.d.v1]}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
"""


def reader(path: Path) -> DirectoryReader:
    return DirectoryReader(
        str(path),
        functools.partial(
            from_manifest, prefix=PREFIX, defaults=DEFAULTS, default_max_in_flight=10
        ),
    )


def test_reads_every_subscription_document(tmp_path: Path) -> None:
    (tmp_path / "subs.yaml").write_text(TWO)
    snapshot, changed = reader(tmp_path).read()
    assert changed
    assert [s.key for s in snapshot.valid] == ["default/one", "team/two"]


def test_broken_files_and_invalid_specs_are_reported_beside_valid_ones(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(TWO)
    (tmp_path / "b.yml").write_text("kind: [unclosed")
    (tmp_path / "c.yaml").write_text(TWO.split("---")[0].replace("a.b.v1", "x"))
    (tmp_path / "notes.txt").write_text("not a manifest")
    snapshot, _ = reader(tmp_path).read()
    assert [s.key for s in snapshot.valid] == ["default/one", "team/two"]
    errors = [e for e in snapshot.entries if isinstance(e, InvalidSubscription)]
    assert len(errors) == 2
    assert "b.yml: not valid YAML" in str(errors[0])
    assert "minimum 2 segments" in str(errors[1])


def test_a_name_defined_twice_keeps_the_first(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(TWO)
    (tmp_path / "b.yaml").write_text(TWO.split("---")[0])
    snapshot, _ = reader(tmp_path).read()
    assert [s.key for s in snapshot.valid] == ["default/one", "team/two"]
    [duplicate] = [e for e in snapshot.entries if not isinstance(e, Subscription)]
    assert "default/one is defined more than once" in str(duplicate)


def test_change_detection(tmp_path: Path) -> None:
    source = reader(tmp_path)
    assert source.read()[1] is True  # the first read always counts as a change
    assert source.read()[1] is False
    (tmp_path / "a.yaml").write_text(TWO)
    snapshot, changed = source.read()
    assert changed and len(snapshot.valid) == 2
    assert source.read()[1] is False
    (tmp_path / "a.yaml").unlink()
    snapshot, changed = source.read()
    assert changed and snapshot.entries == ()


def test_missing_folder_means_no_subscriptions(tmp_path: Path) -> None:
    snapshot, _ = reader(tmp_path / "absent").read()
    assert snapshot.entries == ()

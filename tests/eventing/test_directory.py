"""A folder of manifests: several documents per file, broken files, duplicates, changes."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from eventing.errors import InvalidSubscription
from eventing.sources.directory import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES, DirectorySource
from eventing.sources.snapshot import Snapshot
from eventing.subscriptions.model import Subscription, from_manifest
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


def reader(path: Path) -> DirectorySource:
    return DirectorySource(
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
    [error] = [e for e in snapshot.entries if isinstance(e, InvalidSubscription)]
    assert "minimum 2 segments" in str(error)
    assert error.origin == "c.yaml"
    assert "not valid YAML" in bad_files(snapshot)["b.yml"]


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


VALID_ONE = TWO.split("---")[0]


def bad_files(snapshot: Snapshot) -> dict[str, str]:
    """The problem of each file that could not be read, by file name."""
    return {bad.file: bad.problem for bad in snapshot.unreadable}


def test_deep_nesting_is_refused_and_the_other_files_still_served(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(VALID_ONE)
    (tmp_path / "deep.yaml").write_text("[" * 1000)
    (tmp_path / "deep-map.yaml").write_text("".join(" " * i + "a:\n" for i in range(300)))
    snapshot, _ = reader(tmp_path).read()
    assert [s.key for s in snapshot.valid] == ["default/one"]
    problems = bad_files(snapshot)
    assert set(problems) == {"deep.yaml", "deep-map.yaml"}
    assert all(f"nested more than {MAX_DEPTH} levels deep" in p for p in problems.values())


ALIAS_BOMB = """
apiVersion: eventing.kyma-project.io/v1alpha2
kind: Subscription
metadata: {name: bomb}
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
spec: {sink: "http://127.0.0.1:1/", source: app, types: [a.b.v1], typeMatching: *h}
"""


def test_an_alias_bomb_is_refused_before_it_grows(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(VALID_ONE)
    (tmp_path / "bomb.yaml").write_text(ALIAS_BOMB)
    (tmp_path / "loop.yaml").write_text("a: &a [*a]\n")
    snapshot, _ = reader(tmp_path).read()
    assert [s.key for s in snapshot.valid] == ["default/one"]
    problems = bad_files(snapshot)
    assert f"more than {MAX_NODES} nodes, counting what its aliases" in problems["bomb.yaml"]
    assert "refers to itself" in problems["loop.yaml"]


def test_a_few_aliases_are_fine(tmp_path: Path) -> None:
    (tmp_path / "shared.yaml").write_text(
        VALID_ONE.replace("{name: one}", "{name: one, labels: &l {team: a}, annotations: *l}")
    )
    snapshot, _ = reader(tmp_path).read()
    assert [s.key for s in snapshot.valid] == ["default/one"]
    assert snapshot.unreadable == ()


def test_files_over_the_size_cap_are_refused(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(VALID_ONE)
    (tmp_path / "huge.yaml").write_text("# " + "x" * MAX_FILE_BYTES + "\n")
    snapshot, _ = reader(tmp_path).read()
    assert [s.key for s in snapshot.valid] == ["default/one"]
    assert f"larger than {MAX_FILE_BYTES} bytes" in bad_files(snapshot)["huge.yaml"]


def test_only_regular_files_are_read(tmp_path: Path) -> None:
    """A FIFO would block its reader forever, a device be read forever: neither is read."""
    (tmp_path / "good.yaml").write_text(VALID_ONE)
    os.mkfifo(tmp_path / "pipe.yaml")
    (tmp_path / "folder.yaml").mkdir()
    source = reader(tmp_path)
    outcome: list[Snapshot] = []
    thread = threading.Thread(target=lambda: outcome.append(source.read()[0]), daemon=True)
    thread.start()
    thread.join(30)
    if thread.is_alive():  # unblock the FIFO, so the reader thread ends before the test fails
        with open(tmp_path / "pipe.yaml", "w"):
            pass
        pytest.fail("reading the folder hangs on a FIFO")
    [snapshot] = outcome
    assert [s.key for s in snapshot.valid] == ["default/one"]
    problems = bad_files(snapshot)
    assert set(problems) == {"pipe.yaml", "folder.yaml"}
    assert all("not a regular file" in p for p in problems.values())


def test_symlinks_out_of_the_folder_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("password: hunter2\nbroken: [\n")
    folder = tmp_path / "subscriptions"
    folder.mkdir()
    (folder / "good.yaml").write_text(VALID_ONE)
    (folder / "leak.yaml").symlink_to(outside / "secret.txt")
    (folder / "up.yaml").symlink_to("../outside/secret.txt")
    (folder / "zero.yaml").symlink_to("/dev/zero")
    snapshot, _ = reader(folder).read()
    assert [s.key for s in snapshot.valid] == ["default/one"]
    problems = bad_files(snapshot)
    assert set(problems) == {"leak.yaml", "up.yaml", "zero.yaml"}
    assert all("points outside" in p for p in problems.values())
    assert "hunter2" not in repr(snapshot)


def test_a_configmap_mount_is_read_through_its_symlinks(tmp_path: Path) -> None:
    """Kubernetes mounts a ConfigMap as ``name -> ..data/name``, ``..data -> ..<timestamp>``."""
    (tmp_path / "..2026_01_01").mkdir()
    (tmp_path / "..2026_01_01" / "subs.yaml").write_text(TWO)
    (tmp_path / "..data").symlink_to("..2026_01_01")
    (tmp_path / "subs.yaml").symlink_to("..data/subs.yaml")
    snapshot, _ = reader(tmp_path).read()
    assert [s.key for s in snapshot.valid] == ["default/one", "team/two"]
    assert snapshot.unreadable == ()


def test_a_yaml_error_names_the_place_but_shows_no_content(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("token: s3cr3t\nkind: [unclosed\n")
    [bad] = reader(tmp_path).read()[0].unreadable
    assert bad.file == "broken.yaml"
    assert "line 3" in bad.problem or "line 2" in bad.problem
    assert "s3cr3t" not in bad.problem and "unclosed" not in bad.problem


def test_a_validation_bug_costs_one_subscription_not_the_folder(tmp_path: Path) -> None:
    def parse(document: Mapping[str, Any]) -> Subscription:
        if document["metadata"]["name"] == "two":
            raise RuntimeError("a bug")
        return reader(tmp_path)._parse(document)

    (tmp_path / "subs.yaml").write_text(TWO)
    snapshot, _ = DirectorySource(str(tmp_path), parse).read()
    assert [s.key for s in snapshot.valid] == ["default/one"]
    [broken] = [e for e in snapshot.entries if isinstance(e, InvalidSubscription)]
    assert (broken.key, broken.origin) == ("team/two", "subs.yaml")
    assert broken.problems == ["cannot be validated: RuntimeError"]


SIGNED = """
apiVersion: eventing.kyma-project.io/v1alpha2
kind: Subscription
metadata: {name: signed}
spec:
  sink: "http://127.0.0.1:1/"
  source: app
  types: [a.b.v1]
  delivery: {signing: {secretFile: secrets/signed.whsec}}
"""
SECRET = "whsec_" + "A" * 43 + "="


def test_a_signing_secret_is_found_beside_the_manifest_and_checked(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    secret = tmp_path / "secrets" / "signed.whsec"
    secret.write_text("whsec_!!\n")
    (tmp_path / "subs.yaml").write_text(SIGNED)
    source = reader(tmp_path)

    (entry,) = source.read()[0].entries
    assert isinstance(entry, InvalidSubscription)
    assert "spec.delivery.signing.secretFile: line 1: is not base64 after whsec_" in str(entry)

    secret.write_text(SECRET + "\n")  # fixing the secret alone is seen: it is read again
    snapshot, changed = source.read()
    (subscription,) = snapshot.valid
    assert changed and subscription.credentials.signing is not None
    assert subscription.credentials.signing.file == str(secret)

    secret.unlink()
    (entry,) = source.read()[0].entries
    assert isinstance(entry, InvalidSubscription)
    assert "spec.delivery.signing.secretFile: cannot be read: No such file" in str(entry)

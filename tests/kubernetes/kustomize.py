"""Render a kustomization as ``kubectl kustomize`` does, for the few features deploy/ uses.

The project installs neither kubectl nor kustomize, and building kustomize would add a second Go
build to CI for three features: ``resources`` (files and folders), strategic-merge patches of
maps in named objects, and deletion by label. Anything else in a kustomization fails here loudly
rather than rendering wrongly, and ``test_deploy.py`` compares this renderer with the real one
whenever a kubectl or kustomize binary is on the PATH.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

_FIELDS = {"apiVersion", "kind", "resources", "patches"}

Object = dict[str, Any]


def render(folder: Path) -> list[Object]:
    """The objects ``kubectl kustomize folder`` prints, in the order of their files.

    Raises:
        ValueError: the kustomization uses a feature this renderer lacks, two objects share
            an identity, or a patch matches no object.
    """
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - _FIELDS
    if unsupported:
        raise ValueError(f"{folder}: kustomization fields {sorted(unsupported)} not supported")
    objects: list[Object] = []
    for entry in kustomization.get("resources", []):
        path = folder / entry
        objects += render(path) if path.is_dir() else _load(path.read_text())
    _check_unique(objects, folder)
    for patch in kustomization.get("patches", []):
        objects = _apply(objects, patch, folder)
    return objects


def identity(obj: Object) -> tuple[str, str, str, str]:
    """(apiVersion, kind, namespace, name): what kustomize tells objects apart by."""
    metadata = obj.get("metadata", {})
    return (obj["apiVersion"], obj["kind"], metadata.get("namespace", ""), metadata["name"])


def _load(text: str) -> list[Object]:
    return [dict(doc) for doc in yaml.safe_load_all(text) if doc]


def _check_unique(objects: list[Object], folder: Path) -> None:
    seen: set[tuple[str, str, str, str]] = set()
    for obj in objects:
        if identity(obj) in seen:
            raise ValueError(f"{folder}: {identity(obj)} appears twice")
        seen.add(identity(obj))


def _apply(objects: list[Object], patch: dict[str, Any], folder: Path) -> list[Object]:
    text = (folder / patch["path"]).read_text() if "path" in patch else patch["patch"]
    documents = _load(text)
    target = patch.get("target")
    if target is not None:
        if set(target) != {"labelSelector"} or documents[0].get("$patch") != "delete":
            raise ValueError(f"{folder}: only label-selected deletions are supported: {patch}")
        labels = dict(term.split("=", 1) for term in target["labelSelector"].split(","))
        kept = [obj for obj in objects if not _has_labels(obj, labels)]
        if len(kept) == len(objects):
            raise ValueError(f"{folder}: no object has the labels {labels}")
        return kept
    for document in documents:
        matches = [obj for obj in objects if identity(obj) == identity(document)]
        if len(matches) != 1:
            raise ValueError(f"{folder}: patch target {identity(document)} not found")
        if document.get("$patch") == "delete":
            objects = [obj for obj in objects if obj is not matches[0]]
        else:
            merged = _merge(matches[0], document)
            objects = [merged if obj is matches[0] else obj for obj in objects]
    return objects


def _has_labels(obj: Object, labels: dict[str, str]) -> bool:
    present = obj.get("metadata", {}).get("labels", {})
    return all(present.get(key) == value for key, value in labels.items())


def _merge(base: Object, patch: Object) -> Object:
    """A strategic merge of maps. Lists merge by key in kustomize (containers by name, ...),
    which this renderer does not model, so a patch containing one is refused."""
    merged = dict(base)
    for key, value in patch.items():
        if isinstance(value, list):
            raise ValueError(f"patching the list {key!r} is not supported")
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged

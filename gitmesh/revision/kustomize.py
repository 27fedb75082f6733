"""Kustomize directories: what a build reads, and where each object it renders was written.

A directory with a kustomization file is rendered by ``kubectl kustomize`` (run by
``gitmesh.sync.build`` on a private copy of the files found here). Before the build,
every object of a resource file is marked with an annotation naming its file and
place; afterwards the mark leads each rendered object back to its positions, and
what kustomize changed (namespace, name, patched fields) is told beside every
diagnostic on it. Remote bases and paths leaving the repository are refused before
anything runs, so a build needs neither the network nor anything outside the revision.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gitmesh.objects import Location, Manifest
from gitmesh.revision.diagnostics import Diagnostic
from gitmesh.revision.load import RevisionFile, parse_file

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
MAX_KUSTOMIZATIONS = 100  # kustomizations one build may follow
MAX_OUTPUT_BYTES = 32 * 1024 * 1024
MARK = "gitmesh.dev/written-at"

# Fields whose values name files or directories, relative to the kustomization.
_PATH_LISTS = (
    "resources",
    "bases",
    "components",
    "crds",
    "configurations",
    "patchesStrategicMerge",
    "generators",
    "transformers",
    "validators",
)
_PATH_FIELDS = ("patches", "patchesJson6902", "replacements")
_DIRECTORY_LISTS = frozenset({"resources", "bases", "components", "generators", "transformers", "validators"})
_FLUX_GROUP = "kustomize.toolkit.fluxcd.io/"
_REMOTE_BASE = "a remote base; gitmesh reads only the revision (copy it into the repository)"
_HOST = re.compile(r"^[a-z0-9-]+(\.[a-z0-9-]+)+/")
_REMOTE = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|git@|git::|(?:github|gitlab|bitbucket)\.(?:com|org)/)|\?ref=")


class Tree(Protocol):
    """A revision's files, by path: what a kustomization may read. Paths are under ``root``
    ("" for a Git revision, whose paths are relative to the repository; the directory read)."""

    root: str

    def is_file(self, path: str) -> bool: ...

    def is_dir(self, path: str) -> bool: ...

    def read(self, path: str) -> RevisionFile: ...


@dataclass(frozen=True)
class BuildPlan:
    """One build: its kustomization file, every file it reads, and which of them are resources."""

    root: str
    files: tuple[str, ...]
    resources: frozenset[str]


@dataclass(frozen=True)
class Kustomizations:
    builds: tuple[BuildPlan, ...] = ()
    included: frozenset[str] = frozenset()  # read by some kustomization: not plain manifests
    diagnostics: tuple[Diagnostic, ...] = ()


@dataclass(frozen=True)
class Build:
    """A finished build: the resource files as written, and what kubectl printed (or why it failed)."""

    root: str
    inputs: tuple[RevisionFile, ...] = ()
    output: bytes = b""
    problems: tuple[Diagnostic, ...] = ()


@dataclass
class _Walk:
    files: set[str] = field(default_factory=set)
    resources: set[str] = field(default_factory=set)
    kustomizations: set[str] = field(default_factory=set)
    problems: list[Diagnostic] = field(default_factory=list)


def kustomization_in(tree: Tree, directory: str) -> str | None:
    for name in KUSTOMIZATION_FILES:
        path = posixpath.join(directory, name) if directory else name
        if tree.is_file(path):
            return path
    return None


def is_kustomization(path: str) -> bool:
    return posixpath.basename(path) in KUSTOMIZATION_FILES


def find(paths: Iterable[str], tree: Tree) -> Kustomizations:
    """The builds among ``paths`` (repository paths): kustomizations no other one includes."""
    found = sorted(p for p in paths if is_kustomization(p) and not _is_flux_object(tree.read(p)))
    walks = {k: _walk(k, tree) for k in found}
    nested = {k for root, w in walks.items() for k in w.kustomizations if k != root}
    builds, problems = [], []
    for root in found:
        if root in nested:
            continue
        w = walks[root]
        if w.problems:
            problems.extend(w.problems)
        else:
            builds.append(BuildPlan(root, tuple(sorted(w.files)), frozenset(w.resources)))
    included = frozenset(f for w in walks.values() for f in w.files)
    return Kustomizations(tuple(builds), included, tuple(problems))


def _is_flux_object(f: RevisionFile) -> bool:
    """A Flux Kustomization object saved as kustomization.yaml: an object to read, not a build."""
    manifests, _ = parse_file(f)
    return len(manifests) == 1 and str(manifests[0].obj.get("apiVersion", "")).startswith(_FLUX_GROUP)


def _walk(root: str, tree: Tree) -> _Walk:
    """Every file the kustomization ``root`` reads, following the directories it includes."""
    walk = _Walk()
    todo = [root]
    while todo:
        current = todo.pop()
        if current in walk.kustomizations:
            continue
        if len(walk.kustomizations) == MAX_KUSTOMIZATIONS:
            walk.problems.append(
                _problem(root, f"includes more than {MAX_KUSTOMIZATIONS} kustomizations; not built")
            )
            return walk
        walk.kustomizations.add(current)
        walk.files.add(current)
        manifests, diagnostics = parse_file(tree.read(current))
        walk.problems.extend(diagnostics)
        body = manifests[0] if len(manifests) == 1 else None
        if body is None:
            if not diagnostics:
                walk.problems.append(_problem(current, "a kustomization is one YAML mapping"))
            continue
        if "helmCharts" in body.obj:
            walk.problems.append(
                _at(body, ("helmCharts",), "helmCharts needs Helm, which gitmesh does not run")
            )
        for key, ref, where in _references(body.obj):
            target, refused = _resolve(tree, current, ref)
            here = body.locate(where)
            if refused:
                walk.problems.append(Diagnostic(here, "GM052", f"{key}: {ref!r}: {refused}"))
            elif target is None:
                walk.problems.append(
                    Diagnostic(here, "GM052", f"{key}: {ref!r} does not exist in the revision")
                )
            elif tree.is_dir(target):
                nested = kustomization_in(tree, target) if key in _DIRECTORY_LISTS else None
                if nested is None:
                    walk.problems.append(
                        Diagnostic(here, "GM052", f"{key}: {ref!r} is a directory without a kustomization")
                    )
                else:
                    todo.append(nested)
            else:
                walk.files.add(target)
                if key == "resources":
                    walk.resources.add(target)
    return walk


def _references(body: dict[str, Any]) -> Iterable[tuple[str, str, tuple[str | int, ...]]]:
    """(field, path as written, where) for every file or directory a kustomization names."""
    for key in _PATH_LISTS:
        for i, value in enumerate(_list(body.get(key))):
            # patchesStrategicMerge, generators and transformers may hold a document inline.
            if isinstance(value, str) and "\n" not in value:
                yield key, value, (key, i)
    for key in _PATH_FIELDS:
        for i, value in enumerate(_list(body.get(key))):
            if isinstance(value, dict) and isinstance(value.get("path"), str):
                yield key, value["path"], (key, i, "path")
    openapi = body.get("openapi")
    if isinstance(openapi, dict) and isinstance(openapi.get("path"), str):
        yield "openapi", openapi["path"], ("openapi", "path")
    for key in ("configMapGenerator", "secretGenerator"):
        for i, gen in enumerate(_list(body.get(key))):
            if not isinstance(gen, dict):
                continue
            for j, value in enumerate(_list(gen.get("files"))):
                if isinstance(value, str):
                    yield key, value.rpartition("=")[2], (key, i, "files", j)
            for j, value in enumerate(_list(gen.get("envs"))):
                if isinstance(value, str):
                    yield key, value, (key, i, "envs", j)
            if isinstance(gen.get("env"), str):
                yield key, gen["env"], (key, i, "env")


def _resolve(tree: Tree, kustomization: str, ref: str) -> tuple[str | None, str]:
    """The path of the revision ``ref`` names (None if nothing is there), or why it is refused."""
    if _REMOTE.search(ref):
        return None, _REMOTE_BASE
    if ref.startswith("/"):
        return None, "an absolute path; name files relative to the kustomization"
    path = posixpath.normpath(posixpath.join(posixpath.dirname(kustomization), ref))
    if not _inside(path, tree.root):
        return None, "leaves the repository"
    if tree.is_file(path) or tree.is_dir(path):
        return path, ""
    if _HOST.match(ref):  # kustomize would fetch it from there
        return None, _REMOTE_BASE
    return None, ""


def _inside(path: str, root: str) -> bool:
    if root in ("", "."):
        return not (path == ".." or path.startswith(("../", "/")))
    return path == root or path.startswith(root.rstrip("/") + "/")


def mark(f: RevisionFile) -> tuple[bytes, list[Diagnostic]]:
    """The resource file ``f`` with each object marked with where it is written, as kustomize input."""
    manifests, diagnostics = parse_file(f)
    docs = []
    for i, m in enumerate(manifests):
        obj = json.loads(json.dumps(m.obj))
        meta = obj.setdefault("metadata", {})
        if isinstance(meta, dict):
            annotations = meta.setdefault("annotations", {})
            if isinstance(annotations, dict):
                annotations[MARK] = f"{f.path}#{i}"
        docs.append(json.dumps(obj))
    return "\n---\n".join(docs).encode(), diagnostics


def load_build(build: Build) -> tuple[list[tuple[Manifest, str]], list[Diagnostic]]:
    """The rendered objects, each at the place it was written, with a note saying what kustomize did."""
    if build.problems:
        return [], list(build.problems)
    written: dict[str, Manifest] = {}
    for f in build.inputs:
        manifests, _ = parse_file(f)  # problems in inputs stopped the build before it ran
        written |= {f"{f.path}#{i}": m for i, m in enumerate(manifests)}
    rendered, diagnostics = parse_file(
        RevisionFile(build.root, len(build.output), build.output), MAX_OUTPUT_BYTES
    )
    directory = posixpath.dirname(build.root) or "."
    out: list[tuple[Manifest, str]] = []
    for r in rendered:
        origin = written.get(_unmark(r.obj))
        if origin is None:  # made by kustomize itself (a generator)
            out.append((Manifest(r.obj, Location(build.root)), f"generated by kustomize in {directory}"))
            continue
        changes = _changes(origin.obj, r.obj)
        note = f"rendered by kustomize in {directory}" + (f"; {'; '.join(changes)}" if changes else "")
        out.append((Manifest(r.obj, origin.location, origin.positions), note))
    if diagnostics:  # kubectl printed something gitmesh cannot read: say where it came from
        diagnostics = [
            Diagnostic(Location(build.root), d.code, f"kustomize output: {d.message}") for d in diagnostics
        ]
    return out, diagnostics


def _unmark(obj: dict[str, Any]) -> str:
    """Take the mark off a rendered object (and the annotations it alone made); its value."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not isinstance(annotations := meta.get("annotations"), dict):
        return ""
    value = annotations.pop(MARK, "")
    if not annotations:
        del meta["annotations"]
    return str(value)


def _changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """What kustomize changed, as a reader of the original file needs to hear it."""
    out = []
    meta_b, meta_a = before.get("metadata") or {}, after.get("metadata") or {}
    if meta_b.get("namespace") != meta_a.get("namespace"):
        out.append(f"namespace {meta_a.get('namespace')!r} set by its namespace:")
    if meta_b.get("name") != meta_a.get("name"):
        out.append(f"name {meta_b.get('name')!r} became {meta_a.get('name')!r} by namePrefix/nameSuffix")
    for key in ("labels", "annotations"):
        if meta_b.get(key) != meta_a.get(key):
            out.append(f"metadata.{key} changed")
    changed = sorted(
        f"{key}.{sub}" if sub else key
        for key in before.keys() | after.keys()
        if key not in ("apiVersion", "kind", "metadata") and before.get(key) != after.get(key)
        for sub in _changed_keys(before.get(key), after.get(key))
    )
    if changed:
        out.append(f"{', '.join(changed)} changed by a patch")
    return out


def _changed_keys(before: Any, after: Any) -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        return [k for k in sorted(before.keys() | after.keys()) if before.get(k) != after.get(k)]
    return [""]


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _problem(file: str, message: str) -> Diagnostic:
    return Diagnostic(Location(file), "GM052", message)


def _at(m: Manifest, path: tuple[str | int, ...], message: str) -> Diagnostic:
    return Diagnostic(m.locate(path), "GM052", message)

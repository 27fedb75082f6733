"""How a repository is laid out: plain manifests, Kustomize builds, Helm charts, foreign kinds.

``arrange`` decides, from a revision's paths, which files are read as plain manifests,
which are the business of a kustomization, and which belong to a Helm chart (reported
once per chart, never parsed). ``load`` turns the files and finished builds into
manifests: the source's default namespace for objects without one, and objects of kinds
gitmesh does not manage summed up to one line per kind (or silent, when acknowledged).
``explain`` adds to each diagnostic on a rendered object what kustomize did to it.
"""

from __future__ import annotations

import posixpath
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import yaml

from gitmesh.apis import kinds
from gitmesh.objects import Location, Manifest, ObjectRef
from gitmesh.revision import kustomize
from gitmesh.revision.diagnostics import Diagnostic
from gitmesh.revision.kustomize import Build, BuildPlan, Tree
from gitmesh.revision.load import RevisionFile, default_namespace, is_manifest_path, load_files

CHART_FILE = "Chart.yaml"
NAMESPACE_NAME = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"  # what a default namespace may be (a DNS label)


@dataclass(frozen=True)
class Arrangement:
    plain: tuple[str, ...]  # read as manifests
    builds: tuple[BuildPlan, ...]  # rendered by kustomize
    diagnostics: tuple[Diagnostic, ...]


@dataclass(frozen=True)
class Loaded:
    manifests: tuple[Manifest, ...]
    diagnostics: tuple[Diagnostic, ...]
    notes: dict[ObjectRef, str]  # what kustomize did to an object, to tell beside its diagnostics


def arrange(paths: Sequence[str], tree: Tree) -> Arrangement:
    """Sort a revision's file paths (repository paths, ignored ones already left out)."""
    found_charts = sorted({posixpath.dirname(p) for p in paths if posixpath.basename(p) == CHART_FILE})
    charts = [c for c in found_charts if not any(_under(c, outer) for outer in found_charts if outer != c)]
    in_chart = {p for p in paths if any(_under(p, c) for c in charts)}
    found = kustomize.find((p for p in paths if p not in in_chart), tree)
    plain = tuple(p for p in paths if is_manifest_path(p) and p not in in_chart and p not in found.included)
    notes = tuple(_chart_note(c, tree, [p for p in in_chart if _under(p, c)]) for c in charts)
    return Arrangement(plain, found.builds, (*notes, *found.diagnostics))


def _under(path: str, directory: str) -> bool:
    return not directory or path.startswith(directory + "/")


def _chart_note(directory: str, tree: Tree, files: list[str]) -> Diagnostic:
    chart = posixpath.join(directory, CHART_FILE) if directory else CHART_FILE
    try:
        meta = yaml.safe_load(tree.read(chart).data)
        name = str(meta["name"]) if isinstance(meta, dict) and "name" in meta else directory
    except yaml.YAMLError:
        name = directory
    templates = sum(_under(p, posixpath.join(directory, "templates")) for p in files)
    return Diagnostic(
        Location(chart),
        "GM051",
        f"Helm chart {name!r} ({templates} template(s)) is not read: gitmesh does not run Helm. Render it "
        "with 'helm template' and commit the output, or install it with a Flux HelmRelease",
    )


def load(
    files: Iterable[RevisionFile],
    builds: Iterable[Build],
    *,
    namespace: str = "",
    acknowledged: frozenset[tuple[str, str]] = frozenset(),
    diagnostics: Iterable[Diagnostic] = (),
) -> Loaded:
    """Every object of the revision, in the source's default namespace where it names none."""
    loaded = load_files(files)
    found = list(loaded.manifests)
    problems = [*diagnostics, *loaded.diagnostics]
    rendered: list[tuple[Manifest, str]] = []
    for b in builds:
        found_in_build, build_problems = kustomize.load_build(b)
        rendered += found_in_build
        problems += build_problems
    found += [m for m, _ in rendered]
    if namespace:
        default_namespace(found, namespace)
    managed, foreign = _foreign(found, acknowledged)
    problems += foreign
    return Loaded(tuple(managed), tuple(problems), {m.ref: note for m, note in rendered})


def _foreign(
    manifests: list[Manifest], acknowledged: frozenset[tuple[str, str]]
) -> tuple[list[Manifest], list[Diagnostic]]:
    """Objects of kinds gitmesh does not manage are set aside: one line per kind, none if acknowledged."""
    known = kinds.managed()
    names = {kind for _, kind in known}
    managed: list[Manifest] = []
    by_kind: dict[tuple[str, str], list[Manifest]] = defaultdict(list)
    for m in manifests:
        api_version, kind = m.obj.get("apiVersion"), m.obj.get("kind")
        if not isinstance(api_version, str) or not isinstance(kind, str) or not api_version or not kind:
            managed.append(m)  # validation says what is missing
            continue
        key = (api_version.rpartition("/")[0], kind)
        if key in known or key[0] in kinds.READ_GROUPS:
            managed.append(m)  # any kind of an SMI or OSM group: validation says if it is not read
        elif key in acknowledged:
            continue
        elif kind in names:
            # A kind gitmesh manages, written with another group (a typo, OSM's MeshConfig as v1):
            # validation says what is wrong, rather than leaving it out (and pruning it) quietly.
            managed.append(m)
        else:
            by_kind[key].append(m)
    out = []
    for (group, kind), found in sorted(by_kind.items()):
        first = found[0]
        line = f"kind: {group}/{kind}" if group else f"kind: {kind}"
        written = f"{kind} ({first.obj['apiVersion']})"
        message = (
            f"{len(found)} {written} objects, the first here: not a kind gitmesh manages, not applied. "
            f"A line '{line}' in .gitmeshignore acknowledges them"
            if len(found) > 1
            else f"{written}: not a kind gitmesh manages, not applied. "
            f"A line '{line}' in .gitmeshignore acknowledges it"
        )
        out.append(Diagnostic(first.location, "GM011", message, "apiVersion", first.ref))
    return managed, out


def explain(diagnostics: Sequence[Diagnostic], notes: dict[ObjectRef, str]) -> tuple[Diagnostic, ...]:
    """The diagnostics of rendered objects, each with what kustomize did to the object."""
    return tuple(
        replace(d, message=f"{d.message} ({notes[d.ref]})") if d.ref in notes else d for d in diagnostics
    )

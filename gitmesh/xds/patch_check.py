"""A revision's EnvoyPatches checked as the proxies will get them, before anything is applied.

For every proxy a patch selects (each Service, under each identity of its namespace), the mesh is
translated and the patches applied (``xds.patch``): a target that does not exist, a change that
cannot be made and a result the Envoy protos refuse are diagnostics at the patch entry. Then the
distinct patched resources go to the real Envoy (``envoy_check``), all in one run; only when it
refuses are the patches asked about one by one, to name the one at fault.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import message

from gitmesh.mesh.state import EnvoyPatch, Identity, MeshState, ResourceChange
from gitmesh.objects import Manifest
from gitmesh.revision.diagnostics import Diagnostic, field_path
from gitmesh.xds import envoy_check, resources
from gitmesh.xds.patch import TYPES, Memo, Patched, PatchProblem, apply, as_json
from gitmesh.xds.translate import AssembledRoutes, Proxy, Translator

# The ports of the proxies checked: no resource name depends on them (the local app's cluster, named
# by the app port, is in the bootstrap).
_OUTBOUND_PORT, _INBOUND_PORT = 15001, 15006


def diagnostics(manifests: Sequence[Manifest], mesh: MeshState, envoy: str | None = None) -> list[Diagnostic]:
    """Every problem of the EnvoyPatches among ``manifests`` (schema-valid), whose mesh is ``mesh``."""
    written = {(m.ref.namespace, m.ref.name): m for m in manifests if m.obj.get("kind") == "EnvoyPatch"}
    if not written:
        return []
    translator, memo = Translator(mesh), Memo()
    problems: dict[tuple[EnvoyPatch, int, str], PatchProblem] = {}
    found: dict[tuple[EnvoyPatch, int], bool] = defaultdict(bool)  # a target existed for some proxy
    together = _Shown()
    selected: list[tuple[Proxy, list[EnvoyPatch]]] = []
    for proxy in proxies(mesh):
        selecting = [p for p in mesh.patches if p.selects(proxy.service, proxy.identity)]
        if not selecting:
            continue
        selected.append((proxy, selecting))
        patched = apply(translator.resources(proxy), selecting, proxy.service, proxy.identity, memo)
        together.add(patched)
        for problem in patched.problems:
            problems.setdefault((problem.patch, problem.change.index, problem.code), problem)
        missing = {(p.patch, p.change.index) for p in patched.problems if p.code == "GM150"}
        for patch in selecting:
            for change in patch.changes:
                found[(patch, change.index)] |= (patch, change.index) not in missing
    out = []
    for p in mesh.patches:
        m = written[(p.namespace, p.name)]
        if not any(p in selecting for _, selecting in selected):
            out.append(_at(m, ("spec",), "GM154", f"{p} selects no proxy of the revision's services"))
            continue
        out += [
            _at(m, _where(m, problem), problem.code, problem.message)
            for (patch, index, code), problem in problems.items()
            if patch == p and (code != "GM150" or not found[(patch, index)])
        ]
    if out or not together.resources:  # a patch that cannot be made is not shown to Envoy
        return out
    envoy = envoy or envoy_check.envoy_binary()
    said_of_all = envoy_check.check(envoy_check.render([together.checked()]), envoy)
    if said_of_all is None:
        return out
    for p in mesh.patches:  # which one: each patch alone, then its first entries, to the one at fault
        said = _refused(p, selected, translator, memo, envoy)
        if said:
            entry = next(
                k
                for k in range(1, len(p.changes) + 1)
                if k == len(p.changes)
                or _refused(dataclasses.replace(p, changes=p.changes[:k]), selected, translator, memo, envoy)
            )
            m = written[(p.namespace, p.name)]
            where = ("spec", "patches", entry - 1)
            out.append(_at(m, where, "GM153", f"envoy --mode validate refused it: {said}"))
    if not out:  # each is fine alone, not together (two patches on one resource): all of them
        out = [
            _at(written[(p.namespace, p.name)], ("spec", "patches"), "GM153",
                f"envoy --mode validate refused the patches together: {said_of_all}")
            for p in mesh.patches
            if any(p in selecting for _, selecting in selected)
        ]  # fmt: skip
    return out


def _refused(
    p: EnvoyPatch,
    selected: Sequence[tuple[Proxy, list[EnvoyPatch]]],
    translator: Translator,
    memo: Memo,
    envoy: str,
) -> str | None:
    """What Envoy says of ``p``'s changes alone, on the proxies it selects."""
    alone = _Shown()
    for proxy, selecting in selected:
        if any(q.namespace == p.namespace and q.name == p.name for q in selecting):
            alone.add(apply(translator.resources(proxy), [p], proxy.service, proxy.identity, memo))
    return envoy_check.check(envoy_check.render([alone.checked()]), envoy) if alone.resources else None


@dataclass(frozen=True)
class ResourceDiff:
    """One resource as the mesh's patches leave it against other patches (those live), the same
    for each proxy listed; JSON in proto field names, "" where it did not exist."""

    proxies: tuple[str, ...]  # each as <namespace>/<service> (<identity namespace>/<name>)
    type: str
    name: str
    before: str
    after: str


def resource_diffs(mesh: MeshState, before: Sequence[EnvoyPatch]) -> list[ResourceDiff]:
    """What changing the patches from ``before`` to ``mesh.patches`` does to each selected proxy's
    resources, grouped by proxies that get the same change."""
    translator, memo = Translator(mesh), Memo()
    groups: dict[tuple[str, str, str, str], list[str]] = defaultdict(list)
    names = {url: type_name for type_name, (url, _) in TYPES.items()}
    for proxy in proxies(mesh):
        now = [p for p in mesh.patches if p.selects(proxy.service, proxy.identity)]
        was = [p for p in before if p.selects(proxy.service, proxy.identity)]
        if now == was:
            continue
        found = translator.resources(proxy)
        old = apply(found, was, proxy.service, proxy.identity, memo)
        new = apply(found, now, proxy.service, proxy.identity, memo)
        for url, name in sorted(old.changed | new.changed):
            was_text, now_text = (_text(p.resources.get(url, {}).get(name)) for p in (old, new))
            if was_text != now_text:
                groups[(names[url], name, was_text, now_text)].append(f"{proxy.service} ({proxy.identity})")
    return [ResourceDiff(tuple(ps), t, n, b, a) for (t, n, b, a), ps in groups.items()]


def _text(resource: message.Message | AssembledRoutes | None) -> str:
    return "" if resource is None else json.dumps(as_json(resource), indent=2, sort_keys=True)


def proxies(mesh: MeshState) -> list[Proxy]:
    """A proxy for each Service under each identity of its namespace (one named after the Service
    where the namespace has none): the proxies a patch may select."""
    by_namespace: dict[str, list[Identity]] = defaultdict(list)
    for identity in sorted(mesh.identities, key=str):
        by_namespace[identity.namespace].append(identity)
    out = []
    for ref, svc in sorted(mesh.services.items()):
        app_port = svc.ports[0].port if svc.ports else 8080
        for identity in by_namespace.get(ref.namespace) or [Identity(ref.namespace, ref.name)]:
            out.append(Proxy(identity, ref, app_port, _OUTBOUND_PORT, _INBOUND_PORT))
    return out


class _Shown:
    """The changed resources of many proxies, each object once: proxies share them (``Memo``), and
    a thousand proxies' copies of one cluster are one resource to show Envoy."""

    def __init__(self) -> None:
        self.resources: dict[int, tuple[str, Any]] = {}

    def add(self, patched: Patched) -> None:
        for url, name in patched.changed:
            resource = patched.resources[url][name]
            self.resources.setdefault(id(resource), (url, resource))

    def checked(self) -> envoy_check.Checked:
        by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for url, resource in self.resources.values():
            by_type[url].append(as_json(resource))
        return envoy_check.Checked(
            listeners=tuple(by_type[resources.LISTENER]),
            clusters=tuple(by_type[resources.CLUSTER]),
            routes=tuple(by_type[resources.ROUTE]),
        )


# What a proto parse error names: an unknown field, else the proto path of the value it refused.
_FIELD = re.compile(r'field named "([^"]+)"|at "?[\w.]*?(\w+)"?\.?$')


def _where(m: Manifest, problem: PatchProblem) -> tuple[str | int, ...]:
    """The patch entry, or within it the key the proto error names, where it is written."""
    entry: tuple[str | int, ...] = ("spec", "patches", problem.change.index)
    if problem.code == "GM150":
        return (*entry, "name")
    written = m.obj["spec"]["patches"][problem.change.index]
    found = _FIELD.search(problem.message)
    if problem.code == "GM152" and found:
        at = _find_key(written, found.group(1) or found.group(2))
        if at is not None:
            return (*entry, *at)
    return (*entry, "merge" if _is_merge(problem.change) else "jsonPatch")


def _is_merge(change: ResourceChange) -> bool:
    return change.merge is not None


def _find_key(node: Any, key: str) -> tuple[str | int, ...] | None:
    if isinstance(node, dict):
        if key in node:
            return (key,)
        items: Any = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return None
    for k, v in items:
        below = _find_key(v, key)
        if below is not None:
            return (k, *below)
    return None


def _at(m: Manifest, path: tuple[str | int, ...], code: str, message: str) -> Diagnostic:
    return Diagnostic(m.locate(path), code, message, field_path(path), m.ref)

"""EnvoyPatch: a proxy's translated resources, changed as the patches that select it say.

Each change is applied to the resource's JSON form in Envoy's proto field names (merge patch,
RFC 7386, or JSON patch, RFC 6902) and parsed back against the Envoy protos, so a field that does
not exist or a value of the wrong type is a problem here, with its proto path. What Envoy itself
would refuse is ``envoy_check``'s to find.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import json_merge_patch
import jsonpatch
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format, message

from gitmesh.mesh.state import EnvoyPatch, Identity, ResourceChange, ServiceRef
from gitmesh.xds import resources
from gitmesh.xds.translate import AssembledRoutes, Resources

# The patchable types, by the name an EnvoyPatch gives them.
TYPES: dict[str, tuple[str, type[message.Message]]] = {
    "Listener": (resources.LISTENER, listener_pb2.Listener),
    "RouteConfiguration": (resources.ROUTE, route_pb2.RouteConfiguration),
    "Cluster": (resources.CLUSTER, cluster_pb2.Cluster),
}


@dataclass(frozen=True)
class PatchProblem:
    """Why one change of a patch could not be made; ``code`` is a GM15x diagnostic code."""

    patch: EnvoyPatch
    change: ResourceChange
    code: str
    message: str


@dataclass(frozen=True)
class Patched:
    resources: Resources
    changed: frozenset[tuple[str, str]]  # (type URL, name) of every resource a patch changed
    problems: tuple[PatchProblem, ...]
    by_type: Mapping[str, tuple[str, ...]]  # type URL -> the patches that changed resources of it


class Memo:
    """Changes already made, by the resource object they were made to. Proxies share their
    translated resources (a scope's clusters, a namespace's routes), so a patch over a thousand
    proxies changes each shared resource once, not once per proxy. Keep one as long as the
    resources it has seen (a translation's generation)."""

    def __init__(self) -> None:
        # Each entry holds its resource, so that the id it is keyed by is not reused.
        self._made: dict[tuple[int, EnvoyPatch, int], tuple[object, message.Message | str]] = {}

    def change(
        self,
        resource: message.Message | AssembledRoutes,
        patch: EnvoyPatch,
        change: ResourceChange,
        proto: type[message.Message],
    ) -> message.Message | str:
        key = (id(resource), patch, change.index)
        made = self._made.get(key)
        if made is None or made[0] is not resource:
            made = (resource, _change(resource, change, proto))
            self._made[key] = made
        return made[1]


def apply(
    found: Resources,
    patches: Sequence[EnvoyPatch],
    service: ServiceRef,
    identity: Identity,
    memo: Memo | None = None,
) -> Patched:
    """``found`` with every change of the patches selecting this proxy made, in order. A change
    that cannot be made is a problem and leaves its resource as it was. ``memo`` shares the
    changes made between the proxies of one translation."""
    memo = memo or Memo()
    out: dict[str, dict[str, Any]] = {}
    changed: set[tuple[str, str]] = set()
    problems: list[PatchProblem] = []
    by_type: dict[str, list[str]] = {}
    for patch in patches:
        if not patch.selects(service, identity):
            continue
        for change in patch.changes:
            url, proto = TYPES[change.type]
            current = out.get(url, found.get(url, {}))
            if change.name is not None and change.name not in current:
                problems.append(
                    PatchProblem(
                        patch,
                        change,
                        "GM150",
                        f"no {change.type} named {change.name!r} for the proxies of {service}; "
                        f"it has {', '.join(sorted(current)) or 'none'}",
                    )
                )
                continue
            names = [change.name] if change.name is not None else sorted(current)
            updated = dict(current)
            failed = False
            for name in names:
                result = memo.change(current[name], patch, change, proto)
                if isinstance(result, str):
                    code, _, text = result.partition(" ")
                    problems.append(PatchProblem(patch, change, code, f"{change.type} {name!r}: {text}"))
                    failed = True
                    break
                updated[name] = result
            if not failed:
                out[url] = updated
                changed.update((url, n) for n in names)
                if str(patch) not in by_type.setdefault(url, []):
                    by_type[url].append(str(patch))
    return Patched(
        {**found, **out},
        frozenset(changed),
        tuple(problems),
        {url: tuple(patches) for url, patches in by_type.items()},
    )


def as_json(resource: message.Message | AssembledRoutes) -> dict[str, Any]:
    """A resource in Envoy's proto field names, as patches are written."""
    msg = resource.parsed() if isinstance(resource, AssembledRoutes) else resource
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def _change(
    resource: message.Message | AssembledRoutes, change: ResourceChange, proto: type[message.Message]
) -> message.Message | str:
    """The patched message, or "GMnnn why" when the change cannot be made or does not parse."""
    doc = as_json(resource)
    try:
        if change.merge is not None:
            doc = json_merge_patch.merge(doc, json.loads(change.merge))
        elif change.json_patch is not None:
            doc = jsonpatch.apply_patch(doc, json.loads(change.json_patch))
        else:
            return "GM151 the entry has neither merge nor jsonPatch"
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
        return f"GM151 {str(e).partition(' in {')[0]}"  # not the whole resource it looked in
    _load_any_types(doc)
    try:
        return json_format.ParseDict(doc, proto())
    except json_format.ParseError as e:
        # The innermost of its nested "Failed to parse x field: ..." says what and where.
        return f"GM152 {str(e).splitlines()[0].rpartition(' field: ')[2]}"


def _load_any_types(node: Any) -> None:
    """Make each ``@type`` named in ``node`` known to the protobuf runtime: an Any is parsed only
    when its message's module was imported. Its package (``envoy.extensions...v3``) is imported whole,
    since a message's name does not say its file's."""
    if isinstance(node, list):
        for n in node:
            _load_any_types(n)
    elif isinstance(node, dict):
        url = node.get("@type")
        if isinstance(url, str):
            _import_package(url.rpartition("/")[2].rpartition(".")[0])
        for v in node.values():
            _load_any_types(v)


_imported: set[str] = set()


def _import_package(package: str) -> None:
    if package in _imported or not package.startswith("envoy."):
        return
    _imported.add(package)
    try:
        pkg = importlib.import_module(package)
    except ImportError:
        return  # parsing then names the type it does not know
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.endswith("_pb2"):
            importlib.import_module(f"{package}.{info.name}")

"""The EnvoyPatch reader: a gitmesh.dev object to the mesh model's ``EnvoyPatch``.

Only the shape is read here (the schema has checked it); whether a change applies and what Envoy
makes of it is the translation's to say (``xds.patch``), since only it has the resources.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from gitmesh.apis import core
from gitmesh.mesh.state import EnvoyPatch, ResourceChange

GROUP = "gitmesh.dev"


def read_patch(obj: Mapping[str, Any]) -> EnvoyPatch:
    spec = obj.get("spec") or {}
    selector = spec.get("selector") or {}
    namespace = core.namespace(obj)
    changes = tuple(
        ResourceChange(
            i,
            p["type"],
            p.get("name"),
            merge=json.dumps(p["merge"], sort_keys=True) if "merge" in p else None,
            json_patch=json.dumps(p["jsonPatch"], sort_keys=True) if "jsonPatch" in p else None,
        )
        for i, p in enumerate(spec.get("patches") or ())
    )
    return EnvoyPatch(
        namespace,
        obj["metadata"]["name"],
        frozenset(selector.get("services") or ()),
        frozenset(selector.get("identities") or ()),
        frozenset(selector.get("namespaces") or (namespace,)),
        changes,
    )

from __future__ import annotations

from typing import Any

import pytest

from gitmesh.apis.kinds import BY_NAME, KINDS
from gitmesh.plan import crds


def walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, value in node.items():
            out += walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += walk(value, f"{path}[{i}]")
    return out


SERVED = [k.name for k in KINDS if k.crd]


@pytest.mark.parametrize("kind", SERVED)
def test_each_crd_serves_and_stores_exactly_the_served_version(kind: str) -> None:
    crd = crds.render(kind)
    group, version = BY_NAME[kind].group, BY_NAME[kind].served
    assert crd["metadata"]["name"] == f"{BY_NAME[kind].plural}.{group}"
    assert [(v["name"], v["served"], v["storage"]) for v in crd["spec"]["versions"]] == [
        (version, True, True)
    ]


@pytest.mark.parametrize("kind", SERVED)
def test_schemas_are_structural(kind: str) -> None:
    """The rules the API server enforces for CRD schemas, checked before any server sees them."""
    schema = crds.render(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in walk(schema):
        if path.endswith((".properties", ".enum", ".required")):
            continue
        assert not {"$ref", "$schema", "$id", "const", "anyOf", "oneOf", "allOf"} & set(node), path
        assert node.get("additionalProperties") is not False, path
        if "properties" in node or "items" in node or "enum" in node:
            assert "type" in node, f"{path} needs a type"
    assert schema["properties"]["metadata"] == {"type": "object"}


def test_headers_keep_the_list_spelling() -> None:
    schema = crds.render("HTTPRouteGroup")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    headers = schema["properties"]["spec"]["properties"]["matches"]["items"]["properties"]["headers"]
    assert headers["type"] == "array"
    assert headers["items"]["additionalProperties"]["type"] == "string"

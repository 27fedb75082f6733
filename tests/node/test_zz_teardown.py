"""Last of the node tests (files run in name order on one worker): the node goes and leaves nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.node import NodeCluster, leftovers, read_sysctl


def test_teardown_leaves_nothing_behind(node_cluster: NodeCluster) -> None:
    if not node_cluster.owned:
        pytest.skip("the node was started by testenv/up, not by this session; testenv/down removes it")
    state = json.loads((node_cluster.directory / "state.json").read_text())
    assert leftovers(node_cluster.directory)["processes"], "the node's processes should be running before"
    node_cluster.down()
    assert leftovers(node_cluster.directory) == {
        "processes": [],
        "links": [],
        "iptables chains": [],
        "mounts": [],
        "pod log links": [],
        "cgroups": [],
    }
    assert [path for path in state["created_paths"] if Path(path).exists()] == []
    for name, value in state["sysctls"].items():
        assert read_sysctl(name) == value

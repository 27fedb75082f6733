"""The ``node_cluster`` fixture: a real single-node Kubernetes (tests/node.py) for the whole session.

The binaries and images are built right after collection, when a selected test
asks for the node, so that a cold build (minutes) does not count against one
test's timeout. A failed build or start is a failure, never a skip.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.kube import KubeEnvError
from tests.node import NodeCluster, node, prepare

_prepared: dict[str, str] = {}


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    if not any("node_cluster" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    started = time.monotonic()
    try:
        prepare()
    except KubeEnvError as exc:
        _prepared["error"] = str(exc)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and time.monotonic() - started > 5:
        reporter.write_line(f"testenv/build.sh node and the node's images: {time.monotonic() - started:.0f}s")


@pytest.fixture(scope="session")
def node_cluster() -> Iterator[NodeCluster]:
    """The running node; started here (and torn down after the session) unless one already runs."""
    if "error" in _prepared:
        pytest.fail(f"cannot build the test node:\n{_prepared['error']}", pytrace=False)
    with node() as cluster:
        yield cluster

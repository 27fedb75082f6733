"""GAMMA routes on the real data path: the bookstore demo with an HTTPRoute in place of its
TrafficSplit, served by `gitmesh run` to real Envoy sidecars."""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from gitmesh import demo as demo_mod
from gitmesh.demo import Demo, eventually
from tests import bookstore

pytestmark = pytest.mark.integration

ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bookstore, namespace: bookstore}
spec:
  parentRefs: [{group: "", kind: Service, name: bookstore, port: 14001}]
  rules:
  - name: stable
    matches: [{path: {type: PathPrefix, value: /books-bought}}]
    backendRefs: [{name: bookstore-v1, port: 14001}]
    timeouts: {request: 10s}
  - name: canary
    matches: [{path: {type: Exact, value: /books-bought}, headers: [{name: x-canary, value: "yes"}]}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-via, value: canary}], remove: [x-debug]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-route, value: canary}]}
    backendRefs: [{name: bookstore-v2, port: 14001}]
  - name: buy
    matches: [{path: {type: PathPrefix, value: /buy-a-book}, queryParams: [{name: n, value: "1"}]}]
    backendRefs: [{name: bookstore-v1, port: 14001, weight: 0}, {name: bookstore-v2, port: 14001, weight: 1}]
  - name: moved
    matches: [{path: {type: PathPrefix, value: /old-books}}]
    filters:
    - type: RequestRedirect
      requestRedirect:
        hostname: books.example
        statusCode: 301
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /books-bought}
  - name: renamed
    matches: [{path: {type: PathPrefix, value: /sold}}]
    filters:
    - type: URLRewrite
      urlRewrite:
        hostname: shop.example
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /books-bought}
    backendRefs: [{name: bookstore-v1, port: 14001}]
  - name: secure
    matches: [{path: {type: Exact, value: /login}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, hostname: secure.example}
"""


class _Unfollowed(urllib.request.HTTPRedirectHandler):
    """Redirects come back as they are, to be looked at."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_Unfollowed)


def get(d: Demo, path: str, headers: dict[str, str]) -> tuple[int, str, dict[str, str]]:
    """A request from bookbuyer to the bookstore: status, body, and response headers."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{d.proxies['bookbuyer'].outbound_port}{path}",
        headers={"Host": "bookstore.bookstore:14001", "User-Agent": demo_mod.CALLER_AGENT, **headers},
    )
    try:
        with _OPENER.open(request, timeout=5) as r:
            return r.status, r.read().decode(), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read().decode(), {k.lower(): v for k, v in e.headers.items()}


def test_an_http_route_routes_by_its_rules_and_refuses_what_none_match(tmp_path: Path) -> None:
    with bookstore.running(tmp_path) as d:
        mesh = d.repo / demo_mod.MESH_PATH / "bookstore"
        (mesh / "split.yaml").unlink()
        (mesh / "route.yaml").write_text(ROUTE)
        git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(d.repo)]
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-q", "-m", "Route the bookstore by an HTTPRoute"], check=True)
        d.applied = d.apply()
        # The split sent a quarter to v2; the route sends none of this path there.
        eventually(
            lambda: {get(d, "/books-bought", {})[1] for _ in range(40)},
            lambda s: s == {"bookstore-v1"},
            "the route",
        )

        status, body, headers = get(d, "/books-bought", {"x-canary": "yes", "x-debug": "1"})
        assert (status, body) == (200, "bookstore-v2")
        assert headers["x-route"] == "canary"
        assert headers["x-echo-x-via"] == "canary" and "x-echo-x-debug" not in headers
        status, body, headers = get(d, "/books-bought/2026", {"x-canary": "yes"})
        assert (status, body) == (200, "bookstore-v1")  # the exact path only is the canary's
        assert "x-route" not in headers
        assert get(d, "/buy-a-book/new?n=1", {})[:2] == (200, "bookstore-v2")
        # No rule matches: 404 from the caller's sidecar, not the bookstore's 403.
        assert get(d, "/buy-a-book/new", {})[0] == 404
        assert get(d, "/admin", {})[0] == 404
        # Redirects are answered by the caller's sidecar: the matched prefix replaced, the query
        # kept, the Service port in the Location (as a Gateway listener's); a scheme's own port not.
        status, _, headers = get(d, "/old-books/2026?x=1", {})
        assert (status, headers["location"]) == (301, "http://books.example:14001/books-bought/2026?x=1")
        assert get(d, "/old-books", {})[2]["location"] == "http://books.example:14001/books-bought"
        # A rewrite changes the request the backend gets, the query kept.
        status, body, headers = get(d, "/sold/2026?x=1", {})
        assert (status, body) == (200, "bookstore-v1")
        assert (headers["x-echo-path"], headers["x-echo-host"]) == ("/books-bought/2026?x=1", "shop.example")
        status, _, headers = get(d, "/login", {})
        assert (status, headers["location"]) == (302, "https://secure.example/login")

"""What the cluster says of a bearer token: who may ask the controller for a reconcile (its own
authentication and RBAC), and which pod an injected sidecar's token is bound to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gitmesh.kube.client import Client
from gitmesh.kube.errors import NotFound

RECONCILE_PERMISSION = {"group": "gitmesh.dev", "resource": "sources", "verb": "reconcile"}


@dataclass(frozen=True)
class Reviewed:
    """What the cluster says of a bearer token: whose it is ("" when it does not know it), and
    whether that user may ask for the reconcile."""

    user: str
    allowed: bool


def may_reconcile(client: Client, token: str, source: str) -> Reviewed:
    """Whose bearer token this is (TokenReview), and whether RBAC lets them ask for a reconcile
    of ``source`` (SubjectAccessReview: verb ``reconcile`` on ``sources`` in API group
    ``gitmesh.dev``, a permission that exists only to be granted for this)."""
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
    status = _review(client, "/apis/authentication.k8s.io/v1/tokenreviews", review)
    if not status.get("authenticated"):
        return Reviewed("", False)
    user = status.get("user") or {}
    spec = {
        **{k: user[k] for k in ("uid", "groups", "extra") if k in user},
        "user": user.get("username", ""),
        "resourceAttributes": {**RECONCILE_PERMISSION, "name": source},
    }
    access = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
    allowed = _review(client, "/apis/authorization.k8s.io/v1/subjectaccessreviews", access).get("allowed")
    return Reviewed(spec["user"], bool(allowed))


def token_review(client: Client, token: str, audiences: list[str]) -> dict[str, Any]:
    """What the cluster says of a token meant for ``audiences`` (the TokenReview's status)."""
    review = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": audiences},
    }
    return _review(client, "/apis/authentication.k8s.io/v1/tokenreviews", review)


def pod(client: Client, namespace: str, name: str) -> dict[str, Any] | None:
    """The pod as the API server has it; None when there is none."""
    try:
        return client.get(f"/api/v1/namespaces/{namespace}/pods/{name}")
    except NotFound:
        return None


def _review(client: Client, path: str, review: dict[str, Any]) -> dict[str, Any]:
    status = client.request("POST", path, body=review).get("status")
    return dict(status or {})

"""Who may ask the controller for a reconcile: the cluster's own authentication and RBAC."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gitmesh.kube.client import Client

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


def _review(client: Client, path: str, review: dict[str, Any]) -> dict[str, Any]:
    status = client.request("POST", path, body=review).get("status")
    return dict(status or {})

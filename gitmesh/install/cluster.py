"""``gitmesh install`` and ``gitmesh uninstall`` against a cluster: server-side apply of the objects
``manifests.objects`` makes, and deletion of exactly the objects that carry its labels.

Uninstall loses nothing still in use: a CRD that still has objects stays (deleting it would delete
them), and so does the namespace while it holds objects install did not make (the mesh CA, the
inventories, the Secrets the user made for the controller).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from gitmesh.certs import store
from gitmesh.cluster.kube import KubeObjects
from gitmesh.errors import ClusterError
from gitmesh.install.manifests import INSTALL_LABELS, MANAGER, NAME, NAMESPACE
from gitmesh.kube import errors
from gitmesh.kube.client import Client, Resource
from gitmesh.state.kube import SecretKeeper

_RBAC = "rbac.authorization.k8s.io"
# The kinds install writes, in the order uninstall deletes them (the Namespace and CRDs come last).
_RESOURCES: dict[str, Resource] = {
    "MutatingWebhookConfiguration": Resource(
        "admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", False
    ),
    "Service": Resource("", "v1", "services", True),
    "PodDisruptionBudget": Resource("policy", "v1", "poddisruptionbudgets", True),
    "Deployment": Resource("apps", "v1", "deployments", True),
    "ConfigMap": Resource("", "v1", "configmaps", True),
    "RoleBinding": Resource(_RBAC, "v1", "rolebindings", True),
    "Role": Resource(_RBAC, "v1", "roles", True),
    "ClusterRoleBinding": Resource(_RBAC, "v1", "clusterrolebindings", False),
    "ClusterRole": Resource(_RBAC, "v1", "clusterroles", False),
    "ServiceAccount": Resource("", "v1", "serviceaccounts", True),
    "Namespace": Resource("", "v1", "namespaces", False),
    "CustomResourceDefinition": Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", False),
}
_SELECTOR = ",".join(f"{k}={v}" for k, v in INSTALL_LABELS.items())
# What a namespace holds that nobody made: its root CA bundle and default ServiceAccount.
_BUILT_IN = {("ConfigMap", "kube-root-ca.crt"), ("ServiceAccount", "default")}


def apply(client: Client, objects: Sequence[Mapping[str, Any]]) -> list[str]:
    """Apply ``objects`` (CRDs first, waiting until they are served) and make the mesh CA if there is
    none; returns what was applied as kind/name."""
    crds = [o for o in objects if o["kind"] == "CustomResourceDefinition"]
    done = [f"CustomResourceDefinition/{name}" for name in KubeObjects(client).install_crds(crds)]
    for obj in objects:
        if obj["kind"] == "CustomResourceDefinition":
            continue
        meta = obj["metadata"]
        path = _RESOURCES[obj["kind"]].path(meta.get("namespace", ""), meta["name"])
        client.apply(path, obj, MANAGER, force=True)
        done.append(f"{obj['kind']}/{meta['name']}")
        if obj["kind"] == "Namespace":
            # The mesh CA, made once here: replicas starting together would each make their own.
            store.load_or_create(SecretKeeper(client), datetime.now(UTC))
    return done


def wait_rolled_out(client: Client, timeout: float = 180) -> None:
    """Wait until the controller's Deployment has all its replicas updated and available."""
    path = _RESOURCES["Deployment"].path(NAMESPACE, NAME)
    deadline = time.monotonic() + timeout
    while True:
        deployment = client.get(path)
        if _rolled_out(deployment):
            return
        if time.monotonic() > deadline:
            status = deployment.get("status") or {}
            raise ClusterError(
                f"Deployment {NAMESPACE}/{NAME} did not roll out within {timeout:g}s "
                f"({status.get('availableReplicas', 0)} of {deployment['spec']['replicas']} available); "
                f"see kubectl -n {NAMESPACE} describe pods"
            )
        time.sleep(1)


def _rolled_out(deployment: Mapping[str, Any]) -> bool:
    """Every replica runs the newest template and is available, and no old one is left."""
    status = deployment.get("status") or {}
    wanted = deployment["spec"]["replicas"]
    return bool(
        status.get("observedGeneration", 0) >= deployment["metadata"]["generation"]
        and status.get("updatedReplicas", 0) == wanted
        and status.get("availableReplicas", 0) == wanted
        and status.get("replicas", 0) == wanted
    )


def uninstall(client: Client) -> tuple[list[str], list[str]]:
    """Delete what install made; returns (deleted, kept with the reason) as text lines."""
    deleted: list[str] = []
    kept: list[str] = []
    for kind, resource in _RESOURCES.items():
        for obj in _labelled(client, resource):
            name = obj["metadata"]["name"]
            reason = _in_use(client, kind, obj)
            if reason:
                kept.append(f"{kind}/{name}: {reason}")
                continue
            with contextlib.suppress(errors.NotFound):
                client.delete(resource.path(obj["metadata"].get("namespace", ""), name))
            deleted.append(f"{kind}/{name}")
    return deleted, kept


def _labelled(client: Client, resource: Resource) -> Iterable[dict[str, Any]]:
    path = resource.path(NAMESPACE) if resource.namespaced else resource.path()
    try:
        return list(client.get(path, {"labelSelector": _SELECTOR}).get("items") or ())
    except errors.NotFound:  # the namespace is gone already
        return []


def _in_use(client: Client, kind: str, obj: Mapping[str, Any]) -> str:
    """Why ``obj`` must stay ("" when it may go)."""
    if kind == "CustomResourceDefinition":
        spec = obj["spec"]
        version = next(v["name"] for v in spec["versions"] if v.get("storage"))
        plural = spec["names"]["plural"]
        items = client.get(f"/apis/{spec['group']}/{version}/{plural}", {"limit": "1"})
        return f"{plural} still exist" if items.get("items") else ""
    if kind == "Namespace":
        others = sorted(
            f"{k}/{o['metadata']['name']}"
            for k in ("ConfigMap", "Secret")
            for o in _all_in_namespace(client, k)
            if (k, o["metadata"]["name"]) not in _BUILT_IN
        )
        return f"it still holds {', '.join(others)}" if others else ""
    return ""


def _all_in_namespace(client: Client, kind: str) -> list[dict[str, Any]]:
    plural = {"ConfigMap": "configmaps", "Secret": "secrets"}[kind]
    return list(client.get(f"/api/v1/namespaces/{NAMESPACE}/{plural}").get("items") or ())

"""The state stores in the cluster: ConfigMaps (and the CA's Secret) in ``gitmesh-system``.

Each is written by server-side apply through the shared client; a store that shares an object
with another (records and suspend flags, one rollout per key) applies as a field manager of its
own, so that each writes only its fields.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import time
from collections.abc import Mapping
from typing import Any

from gitmesh import durations
from gitmesh.certs import store as certs_store
from gitmesh.certs.authority import CaState
from gitmesh.cluster.inventory import Applied
from gitmesh.embedded import now
from gitmesh.errors import CertsError, ClusterError
from gitmesh.kube import errors
from gitmesh.kube.client import CONFIGMAP, FIELD_MANAGER, NAMESPACE, SECRET, Client, Resource
from gitmesh.objects import ObjectRef
from gitmesh.state import SourceStatus, StateStores, reports
from gitmesh.state.records import SourceRecord

SYSTEM_NAMESPACE = "gitmesh-system"
INVENTORY_LABEL = "gitmesh.io/inventory"
SOURCE_LABEL = "gitmesh.io/source"
XDS_CONFIGMAP = "gitmesh-xds"
CA_SECRET = "gitmesh-ca"  # the mesh CA's state (roots, keys, rotation), in SYSTEM_NAMESPACE
RECORD_LABEL = "gitmesh.io/reconciler"
SUSPEND_MANAGER = f"{FIELD_MANAGER}-suspend"  # owns only data.suspended of a record ConfigMap
ROLLOUTS_CONFIGMAP = "gitmesh-rollouts"
_SOURCE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?$")


def stores(client: Client) -> StateStores:
    return StateStores(
        KubeInventories(client),
        KubeRecords(client),
        KubeRollouts(client),
        KubeXdsReports(client),
        SecretKeeper(client),
    )


def apply_system(
    client: Client, resource: Resource, body: dict[str, Any], manager: str = FIELD_MANAGER
) -> None:
    """Server-side apply one of gitmesh's own objects in SYSTEM_NAMESPACE, made first if missing."""
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NAMESPACE}}
    client.apply(NAMESPACE.path(name=SYSTEM_NAMESPACE), ns, FIELD_MANAGER)
    client.apply(resource.path(SYSTEM_NAMESPACE, body["metadata"]["name"]), body, manager, force=True)


def check_source_name(source: str) -> None:
    if not _SOURCE_NAME.match(source):
        raise ClusterError(f"source name {source!r} must be lowercase letters, digits and '-' (at most 42)")


class KubeInventories:
    """One ConfigMap per source: the inventory (gzipped JSON), the revision and the last error."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def get(self, source: str) -> dict[ObjectRef, Applied]:
        check_source_name(source)
        try:
            cm = self._client.get(CONFIGMAP.path(SYSTEM_NAMESPACE, _inventory_name(source)))
        except errors.NotFound:
            return {}
        packed = (cm.get("binaryData") or {}).get("inventory.json.gz")
        if not packed:
            return {}
        rows = json.loads(gzip.decompress(base64.b64decode(packed)))
        return {ObjectRef(g, k, ns, n): Applied(h, rv) for g, k, ns, n, h, rv in rows}

    def save(
        self, source: str, inventory: Mapping[ObjectRef, Applied], revision: str | None, ref: str, error: str
    ) -> None:
        check_source_name(source)
        rows = sorted(
            [r.group, r.kind, r.namespace, r.name, a.hash, a.resource_version] for r, a in inventory.items()
        )
        packed = base64.b64encode(gzip.compress(json.dumps(rows, separators=(",", ":")).encode(), mtime=0))
        data = {"lastError": error, "lastErrorAt": now() if error else ""}
        if revision is not None or not error:
            data |= {"revision": revision or "", "ref": ref, "appliedAt": now()}
        body = _inventory_body(source, data)
        body["binaryData"] = {"inventory.json.gz": packed.decode()}
        apply_system(self._client, CONFIGMAP, body)

    def record_error(self, source: str, message: str) -> None:
        check_source_name(source)
        body = _inventory_body(source, {"lastError": message, "lastErrorAt": now()})
        apply_system(self._client, CONFIGMAP, body, manager=f"{FIELD_MANAGER}-status")

    def status(self) -> list[SourceStatus]:
        try:
            body = self._client.get(
                CONFIGMAP.path(SYSTEM_NAMESPACE), {"labelSelector": f"{INVENTORY_LABEL}=true"}
            )
        except errors.NotFound:
            return []
        out = []
        for cm in sorted(body.get("items") or (), key=lambda c: c["metadata"]["name"]):
            data = cm.get("data") or {}
            source = cm["metadata"].get("labels", {}).get(SOURCE_LABEL, "")
            counts: dict[str, int] = {}
            for ref in self.get(source):
                counts[ref.kind] = counts.get(ref.kind, 0) + 1
            out.append(
                SourceStatus(
                    source,
                    data.get("revision") or None,
                    data.get("ref", ""),
                    durations.instant(data.get("appliedAt")),
                    counts,
                    data.get("lastError", ""),
                    durations.instant(data.get("lastErrorAt")),
                )
            )
        return out


class KubeRecords:
    """ConfigMap ``gitmesh-reconciler-<source>``: the record, and the suspend flag beside it."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def save(self, record: SourceRecord) -> None:
        body = _record_body(record.source, {"record": json.dumps(record.to_json(), sort_keys=True)})
        apply_system(self._client, CONFIGMAP, body)

    def all(self) -> list[SourceRecord]:
        return [
            SourceRecord.from_json(json.loads(data["record"]))
            for data in self._configmaps()
            if data.get("record")
        ]

    def set_suspended(self, source: str, suspended: bool) -> None:
        # A field manager of its own: resuming applies a body without the field, and server-side
        # apply removes what this manager alone set, leaving the controller's record as it is.
        body = _record_body(source, {"suspended": "true"} if suspended else {})
        apply_system(self._client, CONFIGMAP, body, manager=SUSPEND_MANAGER)

    def suspended(self) -> frozenset[str]:
        return frozenset(data["source"] for data in self._configmaps() if data.get("suspended") == "true")

    def _configmaps(self) -> list[dict[str, str]]:
        """Each record ConfigMap's data, with its source name under ``source``."""
        try:
            body = self._client.get(
                CONFIGMAP.path(SYSTEM_NAMESPACE), {"labelSelector": f"{RECORD_LABEL}=true"}
            )
        except errors.NotFound:
            return []
        return [
            {**(cm.get("data") or {}), "source": cm["metadata"].get("labels", {}).get(SOURCE_LABEL, "")}
            for cm in sorted(body.get("items") or (), key=lambda c: c["metadata"]["name"])
        ]


class KubeRollouts:
    """One data key per split (``namespace_name``: ``_`` is in no Kubernetes name) in one ConfigMap."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def all(self) -> dict[str, dict[str, Any]]:
        try:
            cm = self._client.get(CONFIGMAP.path(SYSTEM_NAMESPACE, ROLLOUTS_CONFIGMAP))
        except errors.NotFound:
            return {}
        records = [json.loads(v) for v in (cm.get("data") or {}).values()]
        return {r["split"]: r for r in records}

    def save(self, split: str, record: Mapping[str, Any]) -> None:
        # Each split's key is applied by a field manager of its own, so applying one key leaves
        # the other splits' keys alone.
        key = split.replace("/", "_")
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": ROLLOUTS_CONFIGMAP, "namespace": SYSTEM_NAMESPACE},
            "data": {key: json.dumps(record, sort_keys=True)},
        }
        apply_system(self._client, CONFIGMAP, body, manager=f"{FIELD_MANAGER}-rollout-{key}"[:128])


class KubeXdsReports:
    """ConfigMap ``gitmesh-xds``, beside the inventories: a key per replica (its report's
    ``replica``), each applied by a field manager of its own, read back as one (``reports.merged``)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def save(self, report: Mapping[str, Any]) -> None:
        replica = re.sub(r"[^-._a-zA-Z0-9]", "_", str(report["replica"]))  # a data key
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": XDS_CONFIGMAP, "namespace": SYSTEM_NAMESPACE},
            "data": {replica: json.dumps(report, sort_keys=True)},
        }
        apply_system(self._client, CONFIGMAP, body, manager=f"{FIELD_MANAGER}-xds-{replica}"[:128])

    def latest(self) -> dict[str, Any] | None:
        try:
            cm = self._client.get(CONFIGMAP.path(SYSTEM_NAMESPACE, XDS_CONFIGMAP))
        except errors.NotFound:
            return None
        return reports.merged((json.loads(v) for v in (cm.get("data") or {}).values()), time.time())


class SecretKeeper:
    """The mesh CA's state in the Secret ``gitmesh-system/gitmesh-ca`` (key ``ca.json``)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def load(self) -> CaState | None:
        try:
            secret = self._client.get(SECRET.path(SYSTEM_NAMESPACE, CA_SECRET))
        except errors.NotFound:
            return None
        data = (secret.get("data") or {}).get("ca.json")
        if not data:
            raise ClusterError(f"Secret {SYSTEM_NAMESPACE}/{CA_SECRET} has no ca.json")
        try:
            return certs_store.decode(base64.b64decode(data).decode())
        except (CertsError, ValueError) as e:  # ValueError: not base64 or not UTF-8
            raise CertsError(f"Secret {SYSTEM_NAMESPACE}/{CA_SECRET}: {e}") from e

    def save(self, state: CaState) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": CA_SECRET, "namespace": SYSTEM_NAMESPACE},
            "type": "Opaque",
            "data": {"ca.json": base64.b64encode(certs_store.encode(state).encode()).decode()},
        }
        apply_system(self._client, SECRET, body)


def _inventory_name(source: str) -> str:
    return f"gitmesh-inventory-{source}"


def _inventory_body(source: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": _inventory_name(source),
            "namespace": SYSTEM_NAMESPACE,
            "labels": {INVENTORY_LABEL: "true", SOURCE_LABEL: source},
        },
        "data": data,
    }


def _record_body(source: str, data: dict[str, str]) -> dict[str, Any]:
    check_source_name(source)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"gitmesh-reconciler-{source}",
            "namespace": SYSTEM_NAMESPACE,
            "labels": {RECORD_LABEL: "true", SOURCE_LABEL: source},
        },
        "data": data,
    }

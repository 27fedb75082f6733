"""The Kubernetes backend: server-side apply as one field manager, dry-run predictions, inventories.

Every request goes through the shared client (``gitmesh.kube.client``).

The inventory of each source lives in the cluster, in a ConfigMap in
``gitmesh-system``: what the source applied (content hash and the
resourceVersion the apply produced), the revision, and the last error.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import re
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from itertools import groupby
from typing import Any

from gitmesh.certs import store as certs_store
from gitmesh.certs.authority import CaState
from gitmesh.cluster.backend import (
    Changes,
    Live,
    ObjectsFailed,
    Prediction,
    SourceStatus,
    content_hash,
    owned,
)
from gitmesh.cluster.inventory import Applied, ChangeSet
from gitmesh.cluster.records import SourceRecord
from gitmesh.errors import CertsError, ClusterError
from gitmesh.kube import client, errors
from gitmesh.kube.client import Client, Resource
from gitmesh.objects import ObjectRef, apply_rank
from gitmesh.plan.convert import SERVED

FIELD_MANAGER = "gitmesh"
SYSTEM_NAMESPACE = "gitmesh-system"
INVENTORY_LABEL = "gitmesh.io/inventory"
SOURCE_LABEL = "gitmesh.io/source"
XDS_CONFIGMAP = "gitmesh-xds"
CA_SECRET = "gitmesh-ca"  # the mesh CA's state (roots, keys, rotation), in SYSTEM_NAMESPACE
RECORD_LABEL = "gitmesh.io/reconciler"
SUSPEND_MANAGER = f"{FIELD_MANAGER}-suspend"  # owns only data.suspended of a record ConfigMap
ROLLOUTS_CONFIGMAP = "gitmesh-rollouts"
_SOURCE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?$")


def _custom(kind: str, plural: str) -> Resource:
    group, version = SERVED[kind].split("/")
    return Resource(group, version, plural, True)


# The kinds gitmesh manages, in the versions it writes.
RESOURCES: dict[str, Resource] = {
    "Namespace": client.NAMESPACE,
    "ServiceAccount": Resource("", "v1", "serviceaccounts", True),
    "Service": Resource("", "v1", "services", True),
    "EndpointSlice": Resource("discovery.k8s.io", "v1", "endpointslices", True),
    "HTTPRouteGroup": _custom("HTTPRouteGroup", "httproutegroups"),
    "TCPRoute": _custom("TCPRoute", "tcproutes"),
    "UDPRoute": _custom("UDPRoute", "udproutes"),
    "TrafficTarget": _custom("TrafficTarget", "traffictargets"),
    "TrafficSplit": _custom("TrafficSplit", "trafficsplits"),
    "MeshConfig": _custom("MeshConfig", "meshconfigs"),
}
_CRD, _CONFIGMAP, _SECRET = client.CRD, client.CONFIGMAP, client.SECRET


class KubeBackend:
    def __init__(self, client: Client) -> None:
        self.client = client

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None) -> KubeBackend:
        return cls(Client.connect(kubeconfig, context))

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """The API server has no transactions: each write stands alone."""
        return contextlib.nullcontext()

    def close(self) -> None:
        self.client.close()

    def describe(self) -> str:
        return f"kube:{self.client.name}"

    # --- reading --------------------------------------------------------------------------------

    def list_managed(self) -> dict[ObjectRef, Live]:
        query = {"labelSelector": "app.kubernetes.io/managed-by=gitmesh"}

        def list_kind(kind: str) -> list[dict[str, Any]]:
            res = RESOURCES[kind]
            try:
                body = self.client.request("GET", res.path(), query)
            except errors.NotFound:
                return []  # an SMI kind whose CRD is not installed: nothing of it can exist
            return [{"apiVersion": res.api_version, "kind": kind, **item} for item in body.get("items") or ()]

        out = {}
        for items in self.client.parallel(list_kind, RESOURCES):
            for obj in items:
                out[ObjectRef.of(obj)] = Live.of(obj)
        return out

    def present(self, refs: Collection[ObjectRef]) -> frozenset[ObjectRef]:
        def exists(ref: ObjectRef) -> bool:
            try:
                self.client.request("GET", _resource(ref.kind).path(ref.namespace, ref.name), ref=ref)
            except errors.NotFound:
                return False
            return True

        refs = list(refs)
        return frozenset(
            ref for ref, found in zip(refs, self.client.parallel(exists, refs), strict=True) if found
        )

    def inventory(self, source: str) -> dict[ObjectRef, Applied]:
        cm = self._inventory_configmap(source)
        if cm is None:
            return {}
        packed = (cm.get("binaryData") or {}).get("inventory.json.gz")
        if not packed:
            return {}
        rows = json.loads(gzip.decompress(base64.b64decode(packed)))
        return {ObjectRef(g, k, ns, n): Applied(h, rv) for g, k, ns, n, h, rv in rows}

    def status(self) -> list[SourceStatus]:
        try:
            body = self.client.request(
                "GET", _CONFIGMAP.path(SYSTEM_NAMESPACE), {"labelSelector": f"{INVENTORY_LABEL}=true"}
            )
        except errors.NotFound:
            return []
        out = []
        for cm in sorted(body.get("items") or (), key=lambda c: c["metadata"]["name"]):
            data = cm.get("data") or {}
            source = cm["metadata"].get("labels", {}).get(SOURCE_LABEL, "")
            counts: dict[str, int] = {}
            for ref in self.inventory(source):
                counts[ref.kind] = counts.get(ref.kind, 0) + 1
            out.append(
                SourceStatus(
                    source,
                    data.get("revision") or None,
                    data.get("ref", ""),
                    _time(data.get("appliedAt")),
                    counts,
                    data.get("lastError", ""),
                    _time(data.get("lastErrorAt")),
                )
            )
        return out

    # --- predicting and writing -------------------------------------------------------------------

    def predict(self, objects: Sequence[Mapping[str, Any]]) -> list[Prediction]:
        results = self.client.parallel(self._predict_one, objects)
        failures = [r for r in results if isinstance(r, errors.ApiError)]
        if failures:
            raise ObjectsFailed("dry-run applied", failures)
        return [r for r in results if isinstance(r, Prediction)]

    def _predict_one(self, obj: Mapping[str, Any]) -> Prediction | errors.ApiError:
        body = owned(obj)
        try:
            return Prediction(self._apply(body, dry_run=True, force=False))
        except errors.Conflict as e:
            # Another field manager owns some of these fields: show what applying would do if
            # forced, and say whose fields they are. Apply refuses unless --force-conflicts.
            try:
                return Prediction(self._apply(body, dry_run=True, force=True), conflict=_conflict_text(e))
            except errors.ApiError as forced:
                return forced
        except errors.NotFound as e:
            if "namespaces" in e.message and "not found" in e.message:
                return Prediction(body)  # its namespace is created by the same plan
            return e
        except errors.ApiError as e:
            return e

    def apply(self, changes: Changes) -> ChangeSet:
        applied: dict[ObjectRef, Applied] = {}
        deleted: set[ObjectRef] = set()
        failures: list[ClusterError] = []
        # Writes arrive in apply order; each kind is applied concurrently, kinds one after another.
        for _, batch in groupby(changes.writes, key=lambda o: apply_rank(ObjectRef.of(o))[0]):
            group = list(batch)
            results = self.client.parallel(
                lambda o: self._apply_recorded(o, ObjectRef.of(o) in changes.force), group
            )
            for obj, result in zip(group, results, strict=True):
                if isinstance(result, ClusterError):
                    failures.append(result)
                else:
                    applied[ObjectRef.of(obj)] = Applied(content_hash(obj), result)
            if failures:
                break
        if not failures:
            for r in changes.deletes:  # in order: what refers to others goes first
                try:
                    self._delete(r)
                    deleted.add(r)
                except ClusterError as e:
                    failures.append(e)
                    break
        reached = applied.keys() | deleted
        untouched = changes.unchanged | {
            r for r in [*map(ObjectRef.of, changes.writes), *changes.deletes] if r not in reached
        }
        return ChangeSet(applied, frozenset(deleted), frozenset(untouched), tuple(failures))

    def save_inventory(
        self, source: str, inventory: Mapping[ObjectRef, Applied], revision: str | None, ref: str, error: str
    ) -> None:
        _check_source_name(source)
        self._write_inventory(source, inventory, revision=revision, ref=ref, error=error)

    def _apply_recorded(self, obj: Mapping[str, Any], force: bool) -> str | ClusterError:
        try:
            applied = self._apply(owned(obj), dry_run=False, force=force)
        except ClusterError as e:  # refused, or the server gone: the change set says so
            return e
        return str(applied["metadata"]["resourceVersion"])

    def record_error(self, source: str, message: str) -> None:
        _check_source_name(source)
        self._apply_system(
            _CONFIGMAP,
            self._inventory_body(source, {"lastError": message, "lastErrorAt": _now()}),
            manager=f"{FIELD_MANAGER}-status",
        )

    def record_xds(self, report: Mapping[str, Any]) -> None:
        """What ``gitmesh run`` last saw of its sidecars, in a ConfigMap beside the inventories."""
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": XDS_CONFIGMAP, "namespace": SYSTEM_NAMESPACE},
            "data": {"report": json.dumps(report, sort_keys=True)},
        }
        self._apply_system(_CONFIGMAP, body)

    def xds_report(self) -> dict[str, Any] | None:
        try:
            cm = self.client.request("GET", _CONFIGMAP.path(SYSTEM_NAMESPACE, XDS_CONFIGMAP))
        except errors.NotFound:
            return None
        report: dict[str, Any] | None = json.loads((cm.get("data") or {}).get("report") or "null")
        return report

    def ca_keeper(self) -> SecretKeeper:
        return SecretKeeper(self)

    def save_record(self, record: SourceRecord) -> None:
        """The controller's record of a source, in ConfigMap ``gitmesh-reconciler-<source>``."""
        body = self._record_body(record.source, {"record": json.dumps(record.to_json(), sort_keys=True)})
        self._apply_system(_CONFIGMAP, body)

    def records(self) -> list[SourceRecord]:
        return [
            SourceRecord.from_json(json.loads(data["record"]))
            for data in self._record_configmaps()
            if data.get("record")
        ]

    def set_suspended(self, source: str, suspended: bool) -> None:
        # A field manager of its own: resuming applies a body without the field, and server-side
        # apply removes what this manager alone set, leaving the controller's record as it is.
        body = self._record_body(source, {"suspended": "true"} if suspended else {})
        self._apply_system(_CONFIGMAP, body, manager=SUSPEND_MANAGER)

    def suspended(self) -> frozenset[str]:
        return frozenset(
            data["source"] for data in self._record_configmaps() if data.get("suspended") == "true"
        )

    def _record_configmaps(self) -> list[dict[str, str]]:
        """Each record ConfigMap's data, with its source name under ``source``."""
        try:
            body = self.client.request(
                "GET", _CONFIGMAP.path(SYSTEM_NAMESPACE), {"labelSelector": f"{RECORD_LABEL}=true"}
            )
        except errors.NotFound:
            return []
        return [
            {**(cm.get("data") or {}), "source": cm["metadata"].get("labels", {}).get(SOURCE_LABEL, "")}
            for cm in sorted(body.get("items") or (), key=lambda c: c["metadata"]["name"])
        ]

    @staticmethod
    def _record_body(source: str, data: dict[str, str]) -> dict[str, Any]:
        _check_source_name(source)
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": _record_name(source),
                "namespace": SYSTEM_NAMESPACE,
                "labels": {RECORD_LABEL: "true", SOURCE_LABEL: source},
            },
            "data": data,
        }

    def rollouts(self) -> dict[str, dict[str, Any]]:
        """One data key per split (``namespace_name``: ``_`` is in no Kubernetes name) in one ConfigMap."""
        try:
            cm = self.client.request("GET", _CONFIGMAP.path(SYSTEM_NAMESPACE, ROLLOUTS_CONFIGMAP))
        except errors.NotFound:
            return {}
        records = [json.loads(v) for v in (cm.get("data") or {}).values()]
        return {r["split"]: r for r in records}

    def save_rollout(self, split: str, record: Mapping[str, Any]) -> None:
        # Each split's key is applied by a field manager of its own, so applying one key leaves
        # the other splits' keys alone.
        key = split.replace("/", "_")
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": ROLLOUTS_CONFIGMAP, "namespace": SYSTEM_NAMESPACE},
            "data": {key: json.dumps(record, sort_keys=True)},
        }
        self._apply_system(_CONFIGMAP, body, manager=f"{FIELD_MANAGER}-rollout-{key}"[:128])

    def install_crds(self, crds: Iterable[Mapping[str, Any]], timeout: float = 60) -> list[str]:
        """Apply CRDs, then wait until the API server serves every one of them (Established)."""
        names = []
        for crd in crds:
            body = dict(crd)
            path = _CRD.path(name=body["metadata"]["name"])
            self.client.apply(path, body, FIELD_MANAGER, force=True, ref=ObjectRef.of(body))
            names.append(body["metadata"]["name"])
        deadline = time.monotonic() + timeout
        for name in names:
            while not _established(self.client.request("GET", _CRD.path(name=name))):
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"CustomResourceDefinition {name} was not Established within {timeout:g}s"
                    )
                time.sleep(0.1)
        return names

    # --- plumbing ---------------------------------------------------------------------------------

    def _apply(self, obj: dict[str, Any], *, dry_run: bool, force: bool) -> dict[str, Any]:
        ref = ObjectRef.of(obj)
        path = _resource(ref.kind).path(ref.namespace, ref.name)
        return self.client.apply(path, obj, FIELD_MANAGER, force=force, dry_run=dry_run, strict=True, ref=ref)

    def _delete(self, ref: ObjectRef) -> None:
        with contextlib.suppress(errors.NotFound):  # already gone: what prune wanted
            self.client.delete(_resource(ref.kind).path(ref.namespace, ref.name), ref=ref)

    def _inventory_configmap(self, source: str) -> dict[str, Any] | None:
        _check_source_name(source)
        try:
            return self.client.request("GET", _CONFIGMAP.path(SYSTEM_NAMESPACE, _inventory_name(source)))
        except errors.NotFound:
            return None

    def _write_inventory(
        self,
        source: str,
        inventory: Mapping[ObjectRef, Applied],
        *,
        revision: str | None,
        ref: str,
        error: str,
    ) -> None:
        rows = sorted(
            [r.group, r.kind, r.namespace, r.name, a.hash, a.resource_version] for r, a in inventory.items()
        )
        packed = base64.b64encode(gzip.compress(json.dumps(rows, separators=(",", ":")).encode(), mtime=0))
        data = {"lastError": error, "lastErrorAt": _now() if error else ""}
        if revision is not None or not error:
            data |= {"revision": revision or "", "ref": ref, "appliedAt": _now()}
        body = self._inventory_body(source, data)
        body["binaryData"] = {"inventory.json.gz": packed.decode()}
        self._apply_system(_CONFIGMAP, body)

    @staticmethod
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

    def _apply_system(self, resource: Resource, body: dict[str, Any], manager: str = FIELD_MANAGER) -> None:
        """Server-side apply one of gitmesh's own objects (inventories, records, the CA) in
        SYSTEM_NAMESPACE, which is made first if it is missing."""
        self._ensure_system_namespace()
        self.client.apply(
            resource.path(SYSTEM_NAMESPACE, body["metadata"]["name"]), body, manager, force=True
        )

    def _ensure_system_namespace(self) -> None:
        ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NAMESPACE}}
        self.client.apply(client.NAMESPACE.path(name=SYSTEM_NAMESPACE), ns, FIELD_MANAGER)


def _resource(kind: str) -> Resource:
    try:
        return RESOURCES[kind]
    except KeyError:
        raise ClusterError(f"gitmesh does not manage {kind} objects") from None


def _inventory_name(source: str) -> str:
    return f"gitmesh-inventory-{source}"


def _record_name(source: str) -> str:
    return f"gitmesh-reconciler-{source}"


def _check_source_name(source: str) -> None:
    if not _SOURCE_NAME.match(source):
        raise ClusterError(f"source name {source!r} must be lowercase letters, digits and '-' (at most 42)")


def _established(crd: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "Established" and c.get("status") == "True"
        for c in (crd.get("status") or {}).get("conditions") or ()
    )


def _conflict_text(e: errors.ApiError) -> str:
    return "; ".join(c.message for c in e.causes) or e.message


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time(value: str | None) -> datetime | None:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) if value else None


class SecretKeeper:
    """The mesh CA's state in the Secret ``gitmesh-system/gitmesh-ca`` (key ``ca.json``)."""

    def __init__(self, backend: KubeBackend) -> None:
        self._backend = backend

    def load(self) -> CaState | None:
        try:
            secret = self._backend.client.request("GET", _SECRET.path(SYSTEM_NAMESPACE, CA_SECRET))
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
        self._backend._apply_system(_SECRET, body)

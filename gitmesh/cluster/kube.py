"""The object port to a Kubernetes cluster: server-side apply as one field manager, dry runs, a watch.

Every request goes through the shared client (``gitmesh.kube.client``).

gitmesh's own state (inventories, records, rollouts, the CA) is not kept here: see
``gitmesh.state.kube``.
"""

from __future__ import annotations

import builtins
import contextlib
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from itertools import groupby
from typing import Any

from gitmesh.apis.kinds import KINDS, apply_rank
from gitmesh.cluster.inventory import Applied, ChangeSet
from gitmesh.cluster.port import Changes, Live, ObjectsFailed, Prediction, StatusWrite, content_hash, owned
from gitmesh.cluster.watch import MeshWatch
from gitmesh.errors import ClusterError
from gitmesh.kube import client, errors
from gitmesh.kube.client import FIELD_MANAGER, Client, Resource
from gitmesh.objects import Conflict, ObjectRef

# The kinds gitmesh manages, in the versions it writes.
RESOURCES: dict[str, Resource] = {
    k.name: Resource(k.group, k.served, k.plural, k.namespaced) for k in KINDS if k.read
}


class KubeObjects:
    """The object port to a Kubernetes cluster: server-side apply as one field manager, dry runs,
    and a watch of everything the mesh reads."""

    def __init__(self, client: Client) -> None:
        self.client = client

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None) -> KubeObjects:
        return cls(Client.connect(kubeconfig, context))

    def close(self) -> None:
        self.client.close()

    def describe(self) -> str:
        return self.client.describe()

    # --- reading --------------------------------------------------------------------------------

    def list(self, refs: Collection[ObjectRef] | None = None) -> dict[ObjectRef, Live]:
        if refs is not None:
            return self._get_each(list(refs))
        query = {"labelSelector": "app.kubernetes.io/managed-by=gitmesh"}

        def list_kind(kind: str) -> builtins.list[dict[str, Any]]:
            res = RESOURCES[kind]
            try:
                body = self.client.get(res.path(), query)
            except errors.NotFound:
                return []  # an SMI kind whose CRD is not installed: nothing of it can exist
            return [{"apiVersion": res.api_version, "kind": kind, **item} for item in body.get("items") or ()]

        out = {}
        for items in self.client.parallel(list_kind, RESOURCES):
            for obj in items:
                out[ObjectRef.of(obj)] = Live.of(obj)
        return out

    def _get_each(self, refs: builtins.list[ObjectRef]) -> dict[ObjectRef, Live]:
        def get(ref: ObjectRef) -> Live | None:
            res = _resource(ref.kind)
            try:
                obj = self.client.get(res.path(ref.namespace, ref.name), ref=ref)
            except errors.NotFound:
                return None
            return Live.of({"apiVersion": res.api_version, "kind": ref.kind, **obj})

        found = self.client.parallel(get, refs)
        return {ref: live for ref, live in zip(refs, found, strict=True) if live is not None}

    def contents(self, namespace: str) -> builtins.list[ObjectRef]:
        # Every kind the server lists in a namespace, found by discovery as kubectl api-resources does:
        # deleting a Namespace takes all of them, not only the kinds gitmesh manages.
        kinds = self._namespaced_kinds()

        def list_kind(kind: tuple[str, Resource]) -> builtins.list[ObjectRef]:
            name, res = kind
            try:
                body = self.client.get(res.path(namespace))
            except (errors.NotFound, errors.Forbidden):
                return []  # gone meanwhile, or hidden from us: a real apiserver answers both
            refs = [
                ObjectRef(res.group, name, namespace, str(i["metadata"]["name"]))
                for i in body.get("items") or ()
            ]
            owners = [bool(i["metadata"].get("ownerReferences")) for i in body.get("items") or ()]
            # Events, what the control plane puts in every namespace, and what another object owns
            # (it goes with its owner) are not worth a refusal.
            return [r for r, o in zip(refs, owners, strict=True) if not o and not _housekeeping(r)]

        return sorted((r for refs in self.client.parallel(list_kind, kinds) for r in refs), key=str)

    def _namespaced_kinds(self) -> builtins.list[tuple[str, Resource]]:
        versions = ["v1"] + [
            g["preferredVersion"]["groupVersion"] for g in self.client.get("/apis").get("groups") or ()
        ]

        def discover(group_version: str) -> builtins.list[tuple[str, Resource]]:
            group, _, version = group_version.rpartition("/")
            path = f"/apis/{group_version}" if group else f"/api/{version}"
            found = []
            for r in self.client.get(path).get("resources") or ():
                if r["namespaced"] and "/" not in r["name"] and "list" in r.get("verbs", ()):
                    found.append((str(r["kind"]), Resource(group, version, r["name"], True)))
            return found

        return [k for kinds in self.client.parallel(discover, versions) for k in kinds]

    def watch(self) -> MeshWatch:
        return MeshWatch(self.client, RESOURCES).start()

    # --- predicting and writing -------------------------------------------------------------------

    def predict(self, objects: Sequence[Mapping[str, Any]]) -> builtins.list[Prediction]:
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
                return Prediction(self._apply(body, dry_run=True, force=True), conflict=_conflict(e))
            except errors.ApiError as forced:
                return forced
        except errors.NotFound as e:
            if e.missing == "namespaces":
                return Prediction(body)  # its namespace is created by the same plan
            return e
        except errors.ApiError as e:
            return e

    def apply(self, changes: Changes) -> ChangeSet:
        applied: dict[ObjectRef, Applied] = {}
        deleted: set[ObjectRef] = set()
        failures: builtins.list[ClusterError] = []
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

    def _apply_recorded(self, obj: Mapping[str, Any], force: bool) -> str | ClusterError:
        try:
            applied = self._apply(owned(obj), dry_run=False, force=force)
        except ClusterError as e:  # refused, or the server gone: the change set says so
            return e
        return str(applied["metadata"]["resourceVersion"])

    def write_status(self, writes: Sequence[StatusWrite]) -> builtins.list[ClusterError]:
        def write(w: StatusWrite) -> ClusterError | None:
            res = _resource(w.ref.kind)
            # The resourceVersion makes the apply conditional (409 when the object moved on); force
            # takes a list another manager applied last (status.parents is one atomic list), whose
            # other controllers' entries ``w.status`` carries as they were.
            metadata = {
                "name": w.ref.name,
                "namespace": w.ref.namespace,
                "resourceVersion": w.resource_version,
            }
            body = {
                "apiVersion": res.api_version,
                "kind": w.ref.kind,
                "metadata": metadata,
                "status": w.status,
            }
            try:
                path = res.path(w.ref.namespace, w.ref.name) + "/status"
                self.client.apply(path, body, FIELD_MANAGER, force=True, ref=w.ref)
            except ClusterError as e:
                return e
            return None

        return [e for e in self.client.parallel(write, writes) if e is not None]

    def install_crds(self, crds: Iterable[Mapping[str, Any]], timeout: float = 60) -> builtins.list[str]:
        """Apply CRDs, then wait until the API server serves every one of them (Established)."""
        names = []
        for crd in crds:
            body = dict(crd)
            path = client.CRD.path(name=body["metadata"]["name"])
            names.append(body["metadata"]["name"])
            if BUNDLE_VERSION in (body["metadata"].get("annotations") or {}) and self._exists(path):
                continue  # Gateway API's, installed already (perhaps a newer release): left as it is
            self.client.apply(path, body, FIELD_MANAGER, force=True, ref=ObjectRef.of(body))
        deadline = time.monotonic() + timeout
        for name in names:
            while not _established(self.client.request("GET", client.CRD.path(name=name))):
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"CustomResourceDefinition {name} was not Established within {timeout:g}s"
                    )
                time.sleep(0.1)
        return names

    # --- plumbing ---------------------------------------------------------------------------------

    def _exists(self, path: str) -> bool:
        try:
            self.client.request("GET", path)
        except errors.NotFound:
            return False
        return True

    def _apply(self, obj: dict[str, Any], *, dry_run: bool, force: bool) -> dict[str, Any]:
        ref = ObjectRef.of(obj)
        path = _resource(ref.kind).path(ref.namespace, ref.name)
        return self.client.apply(path, obj, FIELD_MANAGER, force=force, dry_run=dry_run, strict=True, ref=ref)

    def _delete(self, ref: ObjectRef) -> None:
        with contextlib.suppress(errors.NotFound):  # already gone: what prune wanted
            self.client.delete(_resource(ref.kind).path(ref.namespace, ref.name), ref=ref)


# The annotation Gateway API's released CRDs carry: which release installed them.
BUNDLE_VERSION = "gateway.networking.k8s.io/bundle-version"


def _housekeeping(ref: ObjectRef) -> bool:
    return ref.kind == "Event" or (ref.kind, ref.name) in {
        ("ServiceAccount", "default"),
        ("ConfigMap", "kube-root-ca.crt"),
    }


def _resource(kind: str) -> Resource:
    try:
        return RESOURCES[kind]
    except KeyError:
        raise ClusterError(f"gitmesh does not manage {kind} objects") from None


def _established(crd: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "Established" and c.get("status") == "True"
        for c in (crd.get("status") or {}).get("conditions") or ()
    )


def _conflict(e: errors.ApiError) -> Conflict:
    return Conflict(
        tuple(c.field for c in e.causes if c.field), "; ".join(c.message for c in e.causes) or e.message
    )

"""The hub: a Kubernetes API server holding the fleet as objects, and the one client that reads and
writes them.

``gitmesh install fleet-hub`` installs ``hub_objects()``: the two CRDs (FleetCluster, whose status
is the member's compliance, and FleetConfiguration) and the namespace they live in. ``gitmesh fleet
join`` registers a member with ``member_objects()``: its FleetCluster and an agent ServiceAccount
whose Role lets it read its own FleetCluster and every configuration (its assignment is among them)
and write only its own FleetCluster's status.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from gitmesh.errors import ClusterError
from gitmesh.fleet.model import DEFAULT_UNKNOWN_AFTER, GROUP, NAMESPACE, VERSION, Configuration, Member
from gitmesh.fleet.wave import Abort, Gate, StageState, WaveState
from gitmesh.kube import errors
from gitmesh.kube.client import Client, Resource
from gitmesh.state.records import MESSAGE_KEPT, OBJECTS_KEPT

CLUSTERS = Resource(GROUP, VERSION, "fleetclusters", True)
CONFIGURATIONS = Resource(GROUP, VERSION, "fleetconfigurations", True)
SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts", True)
_RBAC = "rbac.authorization.k8s.io"
ROLES = Resource(_RBAC, "v1", "roles", True)
ROLE_BINDINGS = Resource(_RBAC, "v1", "rolebindings", True)
MANAGER = "gitmesh-fleet"  # the field manager of what install and join write
AGENT_MANAGER = "gitmesh-fleet-agent"  # the field manager of an agent's status reports
WAVE_MANAGER = "gitmesh-fleet-waves"  # the field manager of the waves' status
LABELS = {"app.kubernetes.io/managed-by": MANAGER, "app.kubernetes.io/part-of": "gitmesh"}

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_SELECTOR = {"type": "object", "properties": {"matchLabels": _STRING_MAP}}
_DURATION = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(ms|s|m|h|d)$"}
_TIME = {"type": "string", "format": "date-time"}
_ABORT = {
    "type": "object",
    "required": ["revision", "at"],
    "properties": {
        "revision": {"type": "string", "description": "The revision whose wave stops."},
        "by": {"type": "string", "description": "Who aborted it."},
        "at": _TIME,
    },
}

_CLUSTER_SPEC = {
    "type": "object",
    "properties": {
        "labels": {**_STRING_MAP, "description": "What configurations and overlays select it by."},
        "unknownAfter": {
            **_DURATION,
            "description": f"Its state reads Unknown after this long without a report "
            f"(default {DEFAULT_UNKNOWN_AFTER}).",
        },
        "agent": {
            "type": "object",
            "description": "How its agent authenticates to the hub.",
            "properties": {"serviceAccount": {"type": "string"}},
        },
    },
}
_COMPLIANCE = {"type": "string", "enum": ["Compliant", "Non-Compliant", "Pending", "Suspended"]}
_CLUSTER_STATUS = {
    "type": "object",
    "description": "Written by the member's agent.",
    "properties": {
        "compliance": _COMPLIANCE,
        "reason": {"type": "string"},
        "lastReportTime": {"type": "string", "format": "date-time"},
        "overlaps": {
            "type": "array",
            "description": "Objects two configurations declare: the first to apply one keeps it.",
            "items": {
                "type": "object",
                "properties": {k: {"type": "string"} for k in ("object", "appliedBy", "refusedTo")},
            },
        },
        "configurations": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "compliance"],
                "properties": {
                    "name": {"type": "string"},
                    "compliance": _COMPLIANCE,
                    "reason": {"type": "string"},
                    "path": {"type": "string"},
                    "desiredRevision": {"type": "string"},
                    "appliedRevision": {"type": "string"},
                    "objects": {"type": "integer"},
                    "objectResults": {
                        "type": "array",
                        "description": "What the last reconcile did with each object, failures first.",
                        "maxItems": OBJECTS_KEPT,
                        "items": {
                            "type": "object",
                            "required": ["object", "result"],
                            "properties": {
                                "object": {"type": "string"},
                                "result": {"type": "string"},
                                "message": {"type": "string", "maxLength": MESSAGE_KEPT},
                            },
                        },
                    },
                    "objectResultsOmitted": {"type": "integer"},
                    "health": {
                        "type": "object",
                        "description": "Its mesh health at the applied revision (a configuration in waves).",
                        "properties": {
                            "revision": {"type": "string"},
                            "verdict": {"type": "string", "enum": ["pass", "fail", "hold"]},
                            "reasons": {"type": "array", "items": {"type": "string"}},
                            "passingSince": {"type": "string", "format": "date-time"},
                        },
                    },
                },
            },
        },
    },
}
_CONFIGURATION_SPEC = {
    "type": "object",
    "required": ["repository"],
    "properties": {
        "repository": {"type": "string", "description": "The Git repository's URL, as the agents reach it."},
        "ref": {
            "type": "object",
            "description": "One of branch, tag, semver, commit (default: the default branch).",
            "maxProperties": 1,
            "properties": {k: {"type": "string"} for k in ("branch", "tag", "semver", "commit")},
        },
        "path": {"type": "string", "description": "The manifests' directory (the base)."},
        "namespace": {"type": "string", "description": "The namespace of objects that name none."},
        "interval": {**_DURATION, "description": "How often agents fetch (default 1m)."},
        "clusterSelector": {**_SELECTOR, "description": "The clusters it applies to (all when empty)."},
        "wave": {
            "type": "object",
            "description": "Roll each new revision out by stages, each gated on the one before being "
            "Compliant and healthy (gitmesh run --fleet-view walks it).",
            "required": ["stages"],
            "properties": {
                "stages": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string"},
                            "clusterSelector": {
                                **_SELECTOR,
                                "description": "Its clusters (not in an earlier stage); all when empty.",
                            },
                            "wait": {**_DURATION, "description": "How long mesh health must pass."},
                            "approval": {"type": "boolean", "description": "A person approves it first."},
                        },
                    },
                },
                "health": {
                    "type": "object",
                    "description": "What every backend of the configuration's splits must show, per member.",
                    "properties": {
                        "successRate": {"type": "number", "minimum": 0, "maximum": 100},
                        "latencyP99": {"type": "number", "minimum": 0, "description": "Milliseconds."},
                        "minRequests": {"type": "integer", "minimum": 0},
                        "window": _DURATION,
                    },
                },
                "approvals": {**_STRING_MAP, "description": "Stage -> the revision approved for it."},
                "abort": {
                    **_ABORT,
                    "description": "Stop the wave bringing this revision (gitmesh fleet wave abort).",
                },
            },
        },
        "overlays": {
            "type": "array",
            "description": "Directories replacing path for some clusters; the first that applies wins.",
            "items": {
                "type": "object",
                "required": ["path"],
                "properties": {
                    "path": {"type": "string"},
                    "clusters": {"type": "array", "items": {"type": "string"}},
                    "clusterSelector": _SELECTOR,
                },
            },
        },
    },
}


_CONFIGURATION_STATUS = {
    "type": "object",
    "description": "Written by the wave walker.",
    "properties": {
        "wave": {
            "type": "object",
            "properties": {
                "revision": {"type": "string"},
                "lastGood": {"type": "string"},
                "state": {"type": "string", "enum": [s.value for s in WaveState]},
                "reason": {"type": "string"},
                "stages": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "revision": {"type": "string"},
                            "state": {"type": "string", "enum": [s.value for s in StageState]},
                            "reason": {"type": "string"},
                            "since": _TIME,
                            "started": _TIME,
                            "finished": _TIME,
                            "waitingFor": {"type": "string", "enum": [g.value for g in Gate]},
                        },
                    },
                },
                "abort": _ABORT,
            },
        }
    },
}

# A configuration's name is its source's name in every member (inventories, records): refused at the
# hub when a member could not use it.
_SOURCE_NAME = {"type": "string", "maxLength": 42, "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}


def _crd(kind: str, plural: str, short: str, spec: dict[str, Any], status: dict[str, Any] | None,
         columns: list[dict[str, str]], name: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    properties: dict[str, Any] = {"spec": spec}
    if name:  # the one restriction a CRD may put on metadata
        properties["metadata"] = {"type": "object", "properties": {"name": name}}
    if status:
        properties["status"] = status
    version: dict[str, Any] = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": {"type": "object", "properties": properties}},
        "additionalPrinterColumns": columns,
    }
    if status:
        version["subresources"] = {"status": {}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": dict(LABELS)},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["gitmesh"],
            },
            "versions": [version],
        },
    }


def hub_objects() -> list[dict[str, Any]]:
    """What ``gitmesh install fleet-hub`` applies, CRDs first."""
    return [
        _crd(
            "FleetCluster",
            CLUSTERS.plural,
            "fc",
            _CLUSTER_SPEC,
            _CLUSTER_STATUS,
            [
                {"name": "Compliance", "type": "string", "jsonPath": ".status.compliance"},
                {"name": "Last report", "type": "date", "jsonPath": ".status.lastReportTime"},
            ],
        ),
        _crd(
            "FleetConfiguration",
            CONFIGURATIONS.plural,
            "fconf",
            _CONFIGURATION_SPEC,
            _CONFIGURATION_STATUS,
            [
                {"name": "Repository", "type": "string", "jsonPath": ".spec.repository"},
                {"name": "Path", "type": "string", "jsonPath": ".spec.path"},
                {"name": "Wave", "type": "string", "jsonPath": ".status.wave.state"},
            ],
            name=_SOURCE_NAME,
        ),
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE, "labels": dict(LABELS)}},
    ]


def agent_account(cluster: str) -> str:
    return f"agent-{cluster}"


def member_objects(cluster: str, labels: Mapping[str, str], unknown_after: str) -> list[dict[str, Any]]:
    """A member's FleetCluster and its agent's ServiceAccount, Role and RoleBinding."""
    account = agent_account(cluster)

    def meta(name: str) -> dict[str, Any]:
        return {"name": name, "namespace": NAMESPACE, "labels": dict(LABELS)}

    rules = [
        {"apiGroups": [GROUP], "resources": [CLUSTERS.plural], "resourceNames": [cluster], "verbs": ["get"]},
        {
            "apiGroups": [GROUP],
            "resources": [f"{CLUSTERS.plural}/status"],
            "resourceNames": [cluster],
            "verbs": ["get", "patch"],
        },
        {"apiGroups": [GROUP], "resources": [CONFIGURATIONS.plural], "verbs": ["get", "list", "watch"]},
    ]
    return [
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "FleetCluster",
            "metadata": meta(cluster),
            "spec": {
                "labels": dict(labels),
                "unknownAfter": unknown_after,
                "agent": {"serviceAccount": account},
            },
        },
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(account)},
        {"apiVersion": f"{_RBAC}/v1", "kind": "Role", "metadata": meta(account), "rules": rules},
        {
            "apiVersion": f"{_RBAC}/v1",
            "kind": "RoleBinding",
            "metadata": meta(account),
            "roleRef": {"apiGroup": _RBAC, "kind": "Role", "name": account},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}],
        },
    ]


_RESOURCES = {
    "FleetCluster": CLUSTERS,
    "ServiceAccount": SERVICE_ACCOUNTS,
    "Role": ROLES,
    "RoleBinding": ROLE_BINDINGS,
}


class Hub:
    """The hub's API server, through one client: an agent's (scoped by RBAC) or an operator's."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def member(self, name: str) -> Member:
        return Member.of(self.client.get(CLUSTERS.path(NAMESPACE, name)))

    def configurations(self) -> list[Configuration]:
        items = self.client.get(CONFIGURATIONS.path(NAMESPACE)).get("items") or []
        return [Configuration.of(obj) for obj in items]

    def list_configurations(self) -> tuple[list[dict[str, Any]], str]:
        """Every FleetConfiguration as the server has it, and the list's resourceVersion to watch from."""
        body = self.client.get(CONFIGURATIONS.path(NAMESPACE))
        return list(body.get("items") or ()), str((body.get("metadata") or {}).get("resourceVersion") or "")

    def watch_configurations(self, resource_version: str, seconds: int) -> Iterator[dict[str, Any]]:
        """The FleetConfigurations' events from ``resource_version`` until the server ends the watch."""
        return self.client.watch(CONFIGURATIONS.path(NAMESPACE), resource_version, seconds)

    def clusters(self) -> list[dict[str, Any]]:
        """Every FleetCluster, status included, in name order."""
        items = self.client.get(CLUSTERS.path(NAMESPACE)).get("items") or []
        return sorted(items, key=lambda o: o["metadata"]["name"])

    def report(self, name: str, status: Mapping[str, Any]) -> None:
        """Write a member's status (server-side apply of the status subresource, as the agent)."""
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "FleetCluster",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "status": dict(status),
        }
        self.client.apply(CLUSTERS.path(NAMESPACE, name) + "/status", body, AGENT_MANAGER, force=True)

    def write_wave(self, configuration: str, wave: Mapping[str, Any]) -> None:
        """Write a configuration's wave (its status subresource, as the walker)."""
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "FleetConfiguration",
            "metadata": {"name": configuration, "namespace": NAMESPACE},
            "status": {"wave": dict(wave)},
        }
        self.client.apply(
            CONFIGURATIONS.path(NAMESPACE, configuration) + "/status", body, WAVE_MANAGER, force=True
        )

    def approve(self, configuration: str, stage: str, revision: str) -> None:
        """Approve ``revision`` for a stage of a configuration's wave (its spec, as a person)."""
        self.client.request(
            "PATCH",
            CONFIGURATIONS.path(NAMESPACE, configuration),
            body={"spec": {"wave": {"approvals": {stage: revision}}}},
            content_type="application/merge-patch+json",
        )

    def abort(self, configuration: str, abort: Abort) -> None:
        """Ask the walker to stop a configuration's wave (its spec, as a person)."""
        self.client.request(
            "PATCH",
            CONFIGURATIONS.path(NAMESPACE, configuration),
            body={"spec": {"wave": {"abort": abort.to_json()}}},
            content_type="application/merge-patch+json",
        )

    def user(self) -> str | None:
        """Who the hub says its client is (SelfSubjectReview); None from a server without it, or one
        that does not let this client ask."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        try:
            answer = self.client.request(
                "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", body=body
            )
        except (errors.NotFound, errors.Forbidden):
            return None
        return ((answer.get("status") or {}).get("userInfo") or {}).get("username") or None

    def join(self, objects: list[dict[str, Any]]) -> list[str]:
        """Apply a member's objects; returns them as kind/name."""
        done = []
        for obj in objects:
            path = _RESOURCES[obj["kind"]].path(NAMESPACE, obj["metadata"]["name"])
            self.client.apply(path, obj, MANAGER, force=True)
            done.append(f"{obj['kind']}/{obj['metadata']['name']}")
        return done

    def agent_token(self, cluster: str, seconds: int) -> str:
        """A token for the member's agent ServiceAccount (TokenRequest), valid for ``seconds``."""
        path = SERVICE_ACCOUNTS.path(NAMESPACE, agent_account(cluster)) + "/token"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": seconds},
        }
        try:
            answer = self.client.request("POST", path, body=body)
        except errors.NotFound:
            raise ClusterError(
                f"cluster {cluster!r} has not joined the fleet (no ServiceAccount {agent_account(cluster)})"
            ) from None
        return str(answer["status"]["token"])

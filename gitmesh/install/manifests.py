"""Everything ``gitmesh install`` puts in a cluster, as plain objects made from its options.

The controller runs as a Deployment in ``gitmesh-system`` under its own ServiceAccount. Its
configuration file is a ConfigMap; the secrets it reads (the webhook secret, the Git password)
stay in Secrets the user makes, named here and mounted as files, never copied into an object
this module writes. Every object carries ``INSTALL_LABELS``: ``gitmesh uninstall`` deletes what
has them and nothing else.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import yaml

from gitmesh.inject import webhook
from gitmesh.plan import crds

NAMESPACE = "gitmesh-system"
NAME = "gitmesh"
LEADER_SERVICE = "gitmesh-leader"  # the HTTP port of the replica that leads
LEADER_LABEL = "gitmesh.io/leader"  # set on its pod by the replica that leads
MANAGER = "gitmesh-install"  # the field manager of install's server-side applies
INSTALL_LABELS = {"app.kubernetes.io/managed-by": MANAGER, "app.kubernetes.io/part-of": "gitmesh"}
SELECTOR = {"app.kubernetes.io/name": NAME}
CONFIG_ANNOTATION = "gitmesh.io/config-sha256"
XDS_PORT = 15010
INJECT_PORT = 15017  # the sidecar-injection webhook (HTTPS), served by every replica
HTTP_PORT = 9090
CONFIG_DIR = "/etc/gitmesh/config"
WEBHOOK_DIR = "/etc/gitmesh/webhook"
GIT_DIR = "/etc/gitmesh/git"
WEBHOOK_KEY = "webhook-secret"  # the key in the user's webhook Secret
PASSWORD_KEY = "password"  # the key in the user's Git credentials Secret

# What the controller does, kind by kind (the README's "Install in a cluster" repeats it):
_WRITES = ["get", "list", "watch", "create", "patch", "delete"]
_RULES: list[dict[str, Any]] = [
    # Plan, apply (server-side apply creates with PATCH, hence create and patch), prune (delete)
    # and watch for the mesh the kinds gitmesh manages. Namespaces also because gitmesh-system
    # is made again when it is missing.
    {"apiGroups": [""], "resources": ["namespaces", "serviceaccounts", "services"], "verbs": _WRITES},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": _WRITES},
    {"apiGroups": ["split.smi-spec.io"], "resources": ["trafficsplits"], "verbs": _WRITES},
    {"apiGroups": ["access.smi-spec.io"], "resources": ["traffictargets"], "verbs": _WRITES},
    {
        "apiGroups": ["specs.smi-spec.io"],
        "resources": ["httproutegroups", "tcproutes", "udproutes"],
        "verbs": _WRITES,
    },
    {
        "apiGroups": ["config.openservicemesh.io"],
        "resources": ["meshconfigs", "meshrootcertificates"],
        "verbs": _WRITES,
    },
    {"apiGroups": ["gitmesh.dev"], "resources": ["envoypatches"], "verbs": _WRITES},
    {
        "apiGroups": ["policy.openservicemesh.io"],
        "resources": ["retries", "upstreamtrafficsettings", "egresses", "ingressbackends"],
        "verbs": _WRITES,
    },
    {"apiGroups": ["gitmesh.dev"], "resources": ["faultinjections"], "verbs": _WRITES},
    {
        "apiGroups": ["gateway.networking.k8s.io"],
        "resources": ["referencegrants", "httproutes", "grpcroutes"],
        "verbs": _WRITES,
    },
    # A bearer token sent to the HTTP port: whose it is and whether they may ask for a reconcile.
    {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
    {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
    # An injected pod's token is checked against the pod it is bound to, before its certificate is
    # issued and on every xDS stream its sidecar opens.
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
    # The injection webhook's caBundle, kept to the mesh CA's roots (also through a rotation).
    {
        "apiGroups": ["admissionregistration.k8s.io"],
        "resources": ["mutatingwebhookconfigurations"],
        "resourceNames": [webhook.NAME],
        "verbs": ["get", "patch"],
    },
]
# In gitmesh-system only: inventories, reconcile records, rollouts and the xDS report
# (ConfigMaps), the mesh CA (a Secret), the leader's Lease, the leader's label on its own pod, and
# the CertificateRequests of the cert-manager provider (made there unless an Issuer elsewhere signs).
_SYSTEM_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch", "create", "patch"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "patch"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]},
    {
        "apiGroups": ["cert-manager.io"],
        "resources": ["certificaterequests"],
        "verbs": ["get", "create", "delete"],
    },
]


@dataclass(frozen=True)
class InstallOptions:
    """What a person chooses; everything else follows from it."""

    image: str
    repo: str  # the one source's repository URL
    branch: str = ""  # "" follows the repository's default branch
    path: str = ""
    source: str = "default"
    interval: str = "1m"
    namespace: str = ""  # of the source's objects that name none
    git_username: str = ""
    git_secret: str = ""  # a Secret in gitmesh-system with the Git password under PASSWORD_KEY
    webhook_secret: str = ""  # a Secret in gitmesh-system with the secret under WEBHOOK_KEY
    replicas: int = 2
    image_pull_policy: str = "IfNotPresent"
    proxy_image: str = ""  # the injected sidecar's Envoy image; "" injects nothing

    def __post_init__(self) -> None:
        if bool(self.git_username) != bool(self.git_secret):
            raise ValueError("a Git username and the Secret with its password go together")
        if self.replicas < 1:
            raise ValueError("at least one replica")


def objects(options: InstallOptions) -> list[dict[str, Any]]:
    """The objects to apply, in an order the API server accepts (CRDs and the namespace first)."""
    config = config_file(options)
    return [
        *(_labelled(crd) for crd in crds.own()),
        # Not labelled: they are Gateway API's, which other controllers read too; uninstall leaves them.
        *crds.official(),
        _namespace(),
        _object("v1", "ServiceAccount", {}),
        _cluster_role(),
        _binding("ClusterRoleBinding", "ClusterRole"),
        _object("rbac.authorization.k8s.io/v1", "Role", {"rules": _SYSTEM_RULES}),
        _binding("RoleBinding", "Role"),
        _object("v1", "ConfigMap", {"data": {"config.yaml": config}}),
        _deployment(options, config),
        _object(
            "policy/v1",
            "PodDisruptionBudget",
            # One replica may go at a time: a drain never leaves the sidecars without a server.
            {"spec": {"maxUnavailable": 1, "selector": {"matchLabels": SELECTOR}}},
        ),
        _service(NAME, SELECTOR, [_XDS_PORT, _HTTP_PORT, *([_INJECT_PORT] if options.proxy_image else [])]),
        # Webhooks and reconcile requests: to the leader only, which labels its pod so.
        _service(LEADER_SERVICE, {**SELECTOR, LEADER_LABEL: "true"}, [_HTTP_PORT]),
        *([_labelled(_webhook_configuration())] if options.proxy_image else []),
    ]


def _webhook_configuration() -> dict[str, Any]:
    service = {"name": NAME, "namespace": NAMESPACE, "port": INJECT_PORT}
    return webhook.configuration({"service": service})


def config_file(options: InstallOptions) -> str:
    """The controller's configuration file (README: "The controller's configuration file")."""
    source: dict[str, Any] = {"name": options.source, "url": options.repo, "interval": options.interval}
    if options.branch:
        source["ref"] = {"branch": options.branch}
    if options.path:
        source["path"] = options.path
    if options.namespace:
        source["namespace"] = options.namespace
    if options.git_secret:
        source["auth"] = {"username": options.git_username, "password_file": f"{GIT_DIR}/{PASSWORD_KEY}"}
    config: dict[str, Any] = {"http_address": f"0.0.0.0:{HTTP_PORT}", "sources": [source]}
    if options.webhook_secret:
        config["webhook_secret_file"] = f"{WEBHOOK_DIR}/{WEBHOOK_KEY}"
    return yaml.safe_dump(config, sort_keys=False)


def _labelled(obj: dict[str, Any]) -> dict[str, Any]:
    metadata = obj.setdefault("metadata", {})
    metadata["labels"] = {**metadata.get("labels", {}), **INSTALL_LABELS}
    return obj


def _namespace() -> dict[str, Any]:
    return _labelled({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})


def _object(api_version: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    metadata = {"name": NAME, "namespace": NAMESPACE}
    return _labelled({"apiVersion": api_version, "kind": kind, "metadata": metadata, **body})


def _cluster_role() -> dict[str, Any]:
    role = _object("rbac.authorization.k8s.io/v1", "ClusterRole", {"rules": _RULES})
    del role["metadata"]["namespace"]
    return role


def _binding(kind: str, role_kind: str) -> dict[str, Any]:
    binding = _object(
        "rbac.authorization.k8s.io/v1",
        kind,
        {
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": NAME},
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}],
        },
    )
    if kind == "ClusterRoleBinding":
        del binding["metadata"]["namespace"]
    return binding


def _deployment(options: InstallOptions, config: str) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": NAME}},
        {"name": "tmp", "emptyDir": {}},  # HOME: the Git mirrors
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    for volume, secret, directory in (
        ("webhook", options.webhook_secret, WEBHOOK_DIR),
        ("git", options.git_secret, GIT_DIR),
    ):
        if secret:
            volumes.append({"name": volume, "secret": {"secretName": secret}})
            mounts.append({"name": volume, "mountPath": directory, "readOnly": True})
    probe = {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5}
    container = {
        "name": "gitmesh",
        "image": options.image,
        "imagePullPolicy": options.image_pull_policy,
        "args": [
            "run",
            "--config",
            f"{CONFIG_DIR}/config.yaml",
            "--xds-address",
            f"0.0.0.0:{XDS_PORT}",
            "--leader-election",
            "--log-format",
            "json",
            *_inject_args(options),
        ],
        "env": [
            # The Lease holder's name: the pod's, so kubectl shows which pod leads.
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        "ports": [
            {"name": "xds", "containerPort": XDS_PORT},
            {"name": "http", "containerPort": HTTP_PORT},
            *([{"name": "inject", "containerPort": INJECT_PORT}] if options.proxy_image else []),
        ],
        "readinessProbe": probe,
        "livenessProbe": {**probe, "failureThreshold": 6},
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "512Mi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    }
    spec = {
        "replicas": options.replicas,
        "selector": {"matchLabels": SELECTOR},
        # A new pod is Ready before an old one goes: there is always an xDS server to reconnect to.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": {
            "metadata": {
                "labels": {**SELECTOR, **INSTALL_LABELS},
                # The controller reads its file once: a new one rolls the pods.
                "annotations": {CONFIG_ANNOTATION: hashlib.sha256(config.encode()).hexdigest()},
            },
            "spec": {
                "serviceAccountName": NAME,
                "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532},
                "containers": [container],
                "volumes": volumes,
            },
        },
    }
    return _object("apps/v1", "Deployment", {"spec": spec})


def _inject_args(options: InstallOptions) -> list[str]:
    if not options.proxy_image:
        return []
    return [
        "--inject-address",
        f"0.0.0.0:{INJECT_PORT}",
        "--inject-proxy-image",
        options.proxy_image,
        "--inject-init-image",
        options.image,  # its `gitmesh capture` sets the iptables rules
    ]


_XDS_PORT = {"name": "xds", "port": XDS_PORT, "targetPort": "xds", "appProtocol": "grpc"}
_HTTP_PORT = {"name": "http", "port": HTTP_PORT, "targetPort": "http"}
_INJECT_PORT = {"name": "inject", "port": INJECT_PORT, "targetPort": "inject"}


def _service(name: str, selector: dict[str, str], ports: list[dict[str, Any]]) -> dict[str, Any]:
    service = _object("v1", "Service", {"spec": {"selector": selector, "ports": ports}})
    service["metadata"]["name"] = name
    return service

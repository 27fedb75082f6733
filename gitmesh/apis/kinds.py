"""The kinds registry: every kind gitmesh manages, declared once.

A ``Kind`` says where the kind lives (group, the versions read from Git, the one version written
to clusters), how a cluster names it (plural, scope, short names, whether gitmesh installs its
CustomResourceDefinition) and what it means to the mesh. ``KINDS`` is in apply order: what an
object refers to comes before it; deletes run in reverse. Everything else derives from here:
the schemas loaded (``schemas/<group>/<version>/<Kind>.yaml`` for each version read), the CRDs
rendered, the cluster resources listed and watched, the kinds ``.gitmeshignore`` may not
acknowledge, the API groups whose unknown kinds are refused, and which kinds the plan's traffic
impact looks at.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from gitmesh.apis import envoy, gateway, osm, policy, smi
from gitmesh.objects import ObjectRef


class Meaning(enum.Enum):
    """What a kind's objects mean to the mesh."""

    NONE = "none"  # cluster structure only
    SERVICE = "service"  # services, their ports and endpoints, identities
    ROUTE = "route"  # what traffic a permission names (matches, ports)
    ACCESS = "access"  # who may call whom
    SPLIT = "split"  # where a service's traffic goes, by weight
    SETTINGS = "settings"  # mesh-wide settings (permissive mode)
    ENVOY = "envoy"  # changes to the Envoy resources themselves
    POLICY = "policy"  # retries, connection limits, egress, ingress, faults


@dataclass(frozen=True)
class PrinterColumn:
    """An extra column ``kubectl get`` shows for a kind gitmesh installs."""

    name: str
    json_path: str
    description: str


@dataclass(frozen=True)
class Kind:
    group: str  # "" for the core group
    name: str
    read: tuple[str, ...]  # the versions read from Git, oldest first; each has a schema file
    served: str  # the one version written to clusters (a CRD gitmesh installs serves only this)
    plural: str
    meaning: Meaning
    namespaced: bool = True
    crd: bool = False  # gitmesh renders and installs its CustomResourceDefinition
    short_names: tuple[str, ...] = ()
    columns: tuple[PrinterColumn, ...] = ()
    # A kind that splits traffic by weight: its root service and each backend's share in percent,
    # as written, for the plan's traffic impact.
    shares: Callable[[dict[str, Any]], tuple[str, dict[str, Decimal]]] | None = None

    @property
    def api_version(self) -> str:
        """The apiVersion written to clusters."""
        return f"{self.group}/{self.served}" if self.group else self.served


_SMI_VERSIONS = ("v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4")

KINDS: tuple[Kind, ...] = (
    Kind(
        "apiextensions.k8s.io", "CustomResourceDefinition", (), "v1", "customresourcedefinitions",
        Meaning.NONE, namespaced=False,
    ),
    Kind("", "Namespace", ("v1",), "v1", "namespaces", Meaning.NONE, namespaced=False),
    Kind(
        osm.CONFIG_GROUP, "MeshConfig", ("v1alpha1", "v1alpha2"), "v1alpha2", "meshconfigs",
        Meaning.SETTINGS, crd=True, short_names=("meshconfig",),
    ),
    Kind(
        osm.CONFIG_GROUP, "MeshRootCertificate", ("v1alpha2",), "v1alpha2", "meshrootcertificates",
        Meaning.SETTINGS, crd=True, short_names=("mrc",),
    ),
    Kind("", "ServiceAccount", ("v1",), "v1", "serviceaccounts", Meaning.SERVICE),
    Kind("", "Service", ("v1",), "v1", "services", Meaning.SERVICE),
    Kind("discovery.k8s.io", "EndpointSlice", ("v1",), "v1", "endpointslices", Meaning.SERVICE),
    Kind(
        smi.SPECS_GROUP, "HTTPRouteGroup", _SMI_VERSIONS, "v1alpha4", "httproutegroups",
        Meaning.ROUTE, crd=True, short_names=("htr",),
    ),
    Kind(
        smi.SPECS_GROUP, "TCPRoute", _SMI_VERSIONS, "v1alpha4", "tcproutes",
        Meaning.ROUTE, crd=True, short_names=("tr",),
    ),
    Kind(
        smi.SPECS_GROUP, "UDPRoute", ("v1alpha4",), "v1alpha4", "udproutes",
        Meaning.ROUTE, crd=True, short_names=("ur",),
    ),
    Kind(
        smi.ACCESS_GROUP, "TrafficTarget", _SMI_VERSIONS, "v1alpha3", "traffictargets",
        Meaning.ACCESS, crd=True, short_names=("tt",),
    ),
    Kind(
        smi.SPLIT_GROUP, "TrafficSplit", _SMI_VERSIONS, "v1alpha4", "trafficsplits",
        Meaning.SPLIT, crd=True, short_names=("ts",),
        columns=(PrinterColumn("Service", ".spec.service", "The root service."),),
        shares=smi.split_shares,
    ),
    # Their CustomResourceDefinitions are Gateway API's own (gitmesh/plan/official/). A grant means
    # nothing to the mesh alone: it lets routes of other namespaces send to this one's Services.
    Kind(
        gateway.GROUP, "ReferenceGrant", ("v1beta1", "v1"), "v1beta1", "referencegrants", Meaning.NONE,
    ),
    Kind(
        gateway.GROUP, "HTTPRoute", ("v1",), "v1", "httproutes", Meaning.SPLIT,
        shares=gateway.route_shares,
    ),
    Kind(
        gateway.GROUP, "GRPCRoute", ("v1",), "v1", "grpcroutes", Meaning.SPLIT,
        shares=gateway.route_shares,
    ),
    Kind(
        policy.OSM_GROUP, "Retry", ("v1alpha1",), "v1alpha1", "retries",
        Meaning.POLICY, crd=True, short_names=("retry",),
    ),
    Kind(
        policy.OSM_GROUP, "UpstreamTrafficSetting", ("v1alpha1",), "v1alpha1", "upstreamtrafficsettings",
        Meaning.POLICY, crd=True, short_names=("upstreamtrafficsetting",),
        columns=(PrinterColumn("Host", ".spec.host", "The destination host."),),
    ),
    Kind(
        policy.OSM_GROUP, "Egress", ("v1alpha1",), "v1alpha1", "egresses",
        Meaning.POLICY, crd=True, short_names=("egress",),
    ),
    Kind(
        policy.OSM_GROUP, "IngressBackend", ("v1alpha1",), "v1alpha1", "ingressbackends",
        Meaning.POLICY, crd=True, short_names=("ingressbackend",),
    ),
    Kind(
        policy.GITMESH_GROUP, "FaultInjection", ("v1alpha1",), "v1alpha1", "faultinjections",
        Meaning.POLICY, crd=True, short_names=("fault",),
    ),
    Kind(
        envoy.GROUP, "EnvoyPatch", ("v1alpha1",), "v1alpha1", "envoypatches",
        Meaning.ENVOY, crd=True, short_names=("epatch",),  # "ep" is kubectl's for Endpoints
    ),
)  # fmt: skip

BY_NAME = {k.name: k for k in KINDS}
_RANK = {k.name: i for i, k in enumerate(KINDS)}

# The API groups gitmesh reads whole: a kind of theirs that gitmesh does not read is refused rather
# than left out of the revision.
READ_GROUPS = frozenset(k.group for k in KINDS if k.crd)
CLUSTER_SCOPED = frozenset(k.name for k in KINDS if not k.namespaced)


def apply_rank(ref: ObjectRef) -> tuple[int, ObjectRef]:
    """Sort key putting an object after everything it may refer to."""
    return (_RANK.get(ref.kind, len(KINDS)), ref)


def with_meaning(*meanings: Meaning) -> frozenset[str]:
    """The names of the kinds that mean any of ``meanings`` to the mesh."""
    return frozenset(k.name for k in KINDS if k.meaning in meanings)


@functools.cache
def managed() -> frozenset[tuple[str, str]]:
    """Every (group, kind) gitmesh reads from Git, at any version."""
    return frozenset((k.group, k.name) for k in KINDS if k.read)

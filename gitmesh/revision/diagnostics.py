"""Diagnostics and the one table of their codes.

Every problem gitmesh finds in a revision is a ``Diagnostic`` with a stable
code. This module is the single place the codes are defined and explained;
``gitmesh explain CODE`` prints an entry, and the README links here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gitmesh.objects import Location, ObjectRef


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Code:
    code: str
    severity: Severity
    title: str
    explanation: str


_E, _W = Severity.ERROR, Severity.WARNING

CODES: dict[str, Code] = {
    c.code: c
    for c in (
        # GM0xx: the file itself cannot be read as manifests.
        Code(
            "GM001",
            _E,
            "YAML or JSON syntax error",
            "The parser stopped here. Common causes: a tab used for indentation, an unclosed quote or "
            "bracket, a key without a colon.",
        ),
        Code(
            "GM002",
            _E,
            "not a text file",
            "The file is not UTF-8 text (it may be binary). Remove it, rename it, or list it in "
            ".gitmeshignore.",
        ),
        Code(
            "GM003",
            _E,
            "file too large",
            "Manifest files are limited to 2 MiB; a single Kubernetes object cannot be larger than about "
            "1.5 MiB anyway. Split the file.",
        ),
        Code(
            "GM004",
            _E,
            "nesting too deep",
            "Objects nested more than 64 levels deep are refused: no mesh manifest needs that, and such "
            "input is usually generated or hostile.",
        ),
        Code(
            "GM005",
            _E,
            "too many values",
            "A document may hold at most 100,000 values, counting each alias at its expanded size (the "
            "'billion laughs' pattern). Split the document, or write out what the aliases stand for.",
        ),
        Code(
            "GM006",
            _E,
            "value has no JSON form",
            "Kubernetes objects are JSON. Mapping keys must be strings, and tags such as !!binary, !!set "
            "or custom !tags, and non-finite numbers, cannot be represented.",
        ),
        Code(
            "GM007",
            _E,
            "duplicate key",
            "The same key appears twice in one mapping. YAML parsers disagree on which one wins, so "
            "gitmesh refuses to guess.",
        ),
        Code(
            "GM008",
            _E,
            "document is not an object",
            "Each YAML document (or JSON file) must be a mapping describing one Kubernetes object, or a "
            "List of them.",
        ),
        Code(
            "GM009",
            _E,
            "too many documents in one file",
            "A file may hold at most 10,000 YAML documents (empty ones count). Such a file is refused "
            "whole rather than read in part. Split it.",
        ),
        # GM01x: object shape.
        Code(
            "GM010",
            _E,
            "missing apiVersion, kind or metadata.name",
            "Every object needs apiVersion, kind and metadata.name to be identified.",
        ),
        Code(
            "GM011",
            _W,
            "unknown apiVersion or kind",
            "gitmesh has no schema for this apiVersion/kind. The object is reported and not applied. "
            "Objects of a kind gitmesh does not manage at all (a Deployment, a Flux HelmRelease) are "
            "reported once per kind, with their number and the first one's place; a line such as "
            "'kind: apps/Deployment' in .gitmeshignore acknowledges the kind and silences it.",
        ),
        Code(
            "GM012",
            _E,
            "a kind gitmesh reads, at a version it does not",
            "gitmesh reads this kind, but not at this apiVersion (or the apiVersion lacks its API group, "
            "as in apiVersion: v1alpha1). Left out, the object would be missing from the revision and "
            "apply would prune the live one, so the revision is refused. Write one of the versions the "
            "message names.",
        ),
        Code(
            "GM013",
            _E,
            "an SMI or OSM kind gitmesh does not read",
            "The object belongs to an API group gitmesh reads, but gitmesh does not read its kind "
            "(IdentityBinding: gitmesh identities are ServiceAccounts). Dropping it would change what "
            "the mesh allows without a word, so the revision is refused. Remove it, or write what it "
            "means with the kinds gitmesh reads.",
        ),
        Code(
            "GM020",
            _E,
            "schema violation",
            "The object does not match gitmesh's schema for its apiVersion and kind. The message names "
            "the field and the rule it breaks.",
        ),
        # GM05x: how the repository is laid out.
        Code(
            "GM050",
            _E,
            ".gitmeshignore line not usable",
            "A line of .gitmeshignore is not a valid gitignore pattern ('[z-a]', a lone '\\' or '!'), is "
            "longer than 1,024 characters, comes after 1,000 patterns, or acknowledges a kind badly "
            "(write kind: GROUP/KIND, kind: KIND for the core group; a kind gitmesh manages, or its name in "
            "a group gitmesh reads, cannot be acknowledged). The revision is refused, since files meant to "
            "be left out might be applied.",
        ),
        Code(
            "GM051",
            _W,
            "Helm chart not rendered",
            "gitmesh does not run Helm. A directory with Chart.yaml is skipped whole. Render the chart "
            "with 'helm template' and commit the output, or install it with a Flux HelmRelease (which "
            "gitmesh leaves to Flux).",
        ),
        Code(
            "GM052",
            _E,
            "kustomization cannot be built",
            "A directory with kustomization.yaml is rendered with 'kubectl kustomize'. Remote bases (URLs, "
            "github.com/...) are refused: gitmesh reads only the revision. So are paths leaving the "
            "repository, references to files that do not exist, helmCharts, and builds that kubectl "
            "refuses or that take longer than 30 seconds.",
        ),
        # GM1xx: meaning across objects.
        Code(
            "GM101",
            _E,
            "split root service not found",
            "A TrafficSplit's spec.service must name a Service in the split's namespace, by name or by "
            "DNS name (name.namespace.svc.cluster.local): one the revision defines, or, checked by plan "
            "and apply, one the cluster has.",
        ),
        Code(
            "GM102",
            _E,
            "split backend service not found",
            "Each TrafficSplit backend must name a Service in the split's namespace: one the revision "
            "defines, or, checked by plan and apply, one the cluster has.",
        ),
        Code(
            "GM103",
            _E,
            "backend shares no port with the root service",
            "A backend receives split traffic on the root service's ports; a backend with none of them "
            "would get no traffic.",
        ),
        Code(
            "GM104",
            _E,
            "two TrafficSplits for one root service",
            "At most one TrafficSplit may name a given root service; with two, the traffic shares would "
            "be ambiguous.",
        ),
        Code(
            "GM105",
            _E,
            "split backend is itself a split root",
            "Splits do not chain: a backend that is the root of another TrafficSplit is refused.",
        ),
        Code(
            "GM106",
            _E,
            "all split weights are zero",
            "Weights are relative; with every weight 0 there is nowhere to send traffic.",
        ),
        Code(
            "GM107",
            _E,
            "backend listed twice in one split",
            "Each backend service may appear once in a TrafficSplit; give it a single combined weight.",
        ),
        Code(
            "GM108",
            _E,
            "split match names a missing HTTPRouteGroup",
            "TrafficSplit spec.matches must name HTTPRouteGroups defined in the split's namespace.",
        ),
        Code(
            "GM109",
            _E,
            "split names a Service in another namespace",
            "A TrafficSplit's root and backends may be written as DNS names (name.namespace, "
            "name.namespace.svc, name.namespace.svc.cluster.local), but the namespace must be the "
            "split's own: splits do not cross namespaces.",
        ),
        Code(
            "GM110",
            _W,
            "split or route names a Service outside the revision, not checked",
            "The Service is not defined in the revision: it may come from elsewhere (another team's "
            "repository, a Helm chart). Without a cluster gitmesh cannot check it; gitmesh plan and "
            "apply look for it in the cluster (or the embedded store) and refuse the revision with "
            "GM101 or GM102 (GM161 for an HTTPRoute or GRPCRoute) if it is not there either.",
        ),
        Code(
            "GM111",
            _E,
            "traffic target rule names a missing route",
            "Each TrafficTarget rule must name an HTTPRouteGroup, TCPRoute or UDPRoute defined in the "
            "target's namespace.",
        ),
        Code(
            "GM112",
            _E,
            "traffic target rule names a missing match",
            "Each name in a rule's matches must be the name of a match in the referenced HTTPRouteGroup.",
        ),
        Code(
            "GM113",
            _E,
            "invalid regular expression",
            "A pathRegex, header pattern or rate-limited path does not compile as RE2, the regular "
            "expression engine Envoy uses (no lookarounds, no backreferences, repetition counts up "
            "to 1000), or compiles to a program larger than gitmesh's sidecars accept (RE2 program "
            "size 1000).",
        ),
        Code(
            "GM114",
            _W,
            "backend lacks one of the root service's ports",
            "A backend gets split traffic only on the root service's ports it has too; on the others "
            "the split sends all traffic to the backends that have them.",
        ),
        Code(
            "GM121",
            _E,
            "duplicate object",
            "Two documents define the same object (group, kind, namespace and name). Keep one.",
        ),
        Code(
            "GM122",
            _E,
            "namespace missing",
            "A namespaced object has no metadata.namespace and none can be inferred: an object without "
            "one takes the namespace of the single Namespace object defined in the same file.",
        ),
        Code(
            "GM130",
            _E,
            "field has no equivalent in the served version",
            "gitmesh converts older SMI versions to the version clusters serve. TrafficTarget "
            "destination.port (v1alpha1, v1alpha2) has no equivalent in v1alpha3; dropping it would widen "
            "access to every port, so gitmesh refuses. Limit ports with a TCPRoute rule instead.",
        ),
        Code(
            "GM131",
            _E,
            "more than one MeshConfig",
            "A MeshConfig holds the settings of the whole mesh, so a revision may have at most one: with "
            "two, which setting holds would depend on their order. Keep one.",
        ),
        Code(
            "GM132",
            _W,
            "MeshConfig settings gitmesh does not act on",
            "gitmesh reads MeshConfig as Open Service Mesh writes it (config.openservicemesh.io "
            "v1alpha1 and v1alpha2) but acts only on spec.traffic.enablePermissiveTrafficPolicyMode and "
            "spec.certificate's serviceCertValidityDuration and certKeyBitSize. "
            "The other settings are accepted, so that a MeshConfig copied from OSM keeps working, and "
            "listed in this one note. Sidecar images, TLS versions, egress, ingress gateway certificate "
            "and tracing settings belong to OSM's own components; gitmesh's equivalents are its command "
            "options.",
        ),
        Code(
            "GM133",
            _E,
            "more than one MeshRootCertificate",
            "A MeshRootCertificate chooses the mesh's certificate provider, so a revision may have at most "
            "one: with two, which provider issues would depend on their order. OSM's rotation between "
            "two (an active and a passive one) is gitmesh's switch of provider: change the one object, "
            "and gitmesh run walks both roots through the rotation. Keep one.",
        ),
        Code(
            "GM140",
            _E,
            "rollout policy annotation invalid",
            "A rollout.gitmesh.dev/ annotation on a TrafficSplit has an unknown key or a value of the "
            "wrong form (durations are written 500ms, 30s, 5m, 1h; percents 0-100). gitmesh explain "
            "rollout lists the keys.",
        ),
        Code(
            "GM141",
            _E,
            "rollout steps out of order or range",
            "rollout.gitmesh.dev/steps are percents of the way to the target: each above 0 and below "
            "100 (the target itself is always the last step), strictly increasing. step-size is "
            "above 0 and below 100.",
        ),
        Code(
            "GM142",
            _E,
            "conflicting rollout step keys",
            "Give steps as a list (rollout.gitmesh.dev/steps) or as step-size with an optional "
            "step-max, not both; step-max alone means nothing.",
        ),
        Code(
            "GM143",
            _E,
            "progress deadline shorter than the interval",
            "A step is analysed once its interval has passed; a progress deadline shorter than the "
            "interval would fail every rollout before its first check.",
        ),
        Code(
            "GM144",
            _E,
            "rollout step weights out of order or range",
            "rollout.gitmesh.dev/step-weights are shares of all traffic (as Flagger's stepWeights) that "
            "the backends gaining traffic reach at each step: each above 0 and below 100 (the target "
            "is always the last step), strictly increasing.",
        ),
        Code(
            "GM145",
            _E,
            "step weights given with steps",
            "rollout.gitmesh.dev/step-weights (shares of all traffic) and steps or step-size (percents "
            "of the way from the live weights to the target) are two ways to say the same thing; give "
            "one.",
        ),
        # GM15x: EnvoyPatch, checked on the resources it changes.
        Code(
            "GM150",
            _E,
            "patch target does not exist",
            "No proxy the EnvoyPatch selects has a resource of that type and name. Resource names are "
            "documented (README, 'Resource names'); a name that changed in an upgrade is reported here "
            "rather than the patch left out.",
        ),
        Code(
            "GM151",
            _E,
            "patch cannot be applied",
            "A JSON patch operation names a path the resource does not have, or a test operation failed. "
            "`gitmesh plan` shows the resources as they are before the patch.",
        ),
        Code(
            "GM152",
            _E,
            "patched resource is not a valid Envoy message",
            "The patched resource does not parse against Envoy's protos: an unknown field or a value of "
            "the wrong type, at the proto path given. Fields are written as in Envoy's proto files "
            "(snake_case), and an Any as typed_config with its @type.",
        ),
        Code(
            "GM153",
            _E,
            "Envoy refuses the patched configuration",
            "`envoy --mode validate` refused the patched resources: the value is well-formed but Envoy "
            "cannot use it (a negative duration, an unknown extension, contradictory settings).",
        ),
        Code(
            "GM154",
            _W,
            "patch selects no proxy",
            "No Service of the revision matches the EnvoyPatch's selector (services, identities, "
            "namespaces: the patch's own namespace when left out); it changes nothing.",
        ),
        # GM160-GM169: Gateway API routes on Services (GAMMA).
        Code(
            "GM160",
            _E,
            "route says what gitmesh does not serve yet",
            "The HTTPRoute or GRPCRoute is valid Gateway API but uses something gitmesh does not carry "
            "to Envoy yet: "
            "a parent other than a Service (a Gateway), sectionName, hostnames, filters other than "
            "RequestHeaderModifier and ResponseHeaderModifier, filters on a backend, a backend other "
            "than a Service, timeouts.backendRequest. It is "
            "refused rather than served without it.",
        ),
        Code(
            "GM161",
            _E,
            "route names a Service that does not exist",
            "A route's parent and backends must be Services: in the revision or (at plan and apply) in "
            "the cluster. A parent is in the route's namespace unless parentRefs[].namespace says "
            "otherwise (a consumer route); a backend is in the route's namespace.",
        ),
        Code(
            "GM162",
            _E,
            "route names a port its Service lacks, or a port that is not HTTP",
            "parentRefs[].port must be an HTTP port of the parent Service (named http-*, http2-*, "
            "grpc-*, or with an appProtocol of http, http2, h2c or grpc), and backendRefs[].port a port "
            "of the backend Service.",
        ),
        Code(
            "GM163",
            _E,
            "Service routed by both a TrafficSplit and an HTTPRoute",
            "A Service's traffic is routed by SMI or by Gateway API, not both: the meaning of the two "
            "together would be ambiguous. Move the split into the route's backendRefs (weights) or "
            "remove the route.",
        ),
        Code(
            "GM164",
            _E,
            "route sends to another namespace without a ReferenceGrant",
            "A backendRef with a namespace other than the route's needs a ReferenceGrant in that "
            "namespace whose from names the route's kind (HTTPRoute, GRPCRoute) and namespace, and "
            "whose to names the Service (or every Service).",
        ),
        # GM170-GM179: traffic policies (Retry, UpstreamTrafficSetting, Egress, IngressBackend,
        # FaultInjection).
        Code(
            "GM170",
            _E,
            "policy names a Service or route group that does not exist",
            "A policy's destination, host or backend must be a Service of the mesh, and an Egress's "
            "matches HTTPRouteGroups of its namespace, in the revision or "
            "(at plan and apply) in the cluster. A host is written name, name.ns or "
            "name.ns.svc.cluster.local.",
        ),
        Code(
            "GM171",
            _E,
            "policy duration is not a duration",
            "Timeouts and intervals are a number and a unit: 250ms, 1s, 5m.",
        ),
        Code(
            "GM172",
            _W,
            "overlapping policies",
            "Two policies say different things about the same thing (a caller's retries to one "
            "destination, one host's connection limits, one backend port's ingress, one fault, the "
            "TLS port one caller reaches a host on). The first in namespace/name order wins; the "
            "others are left out. Merge them into one.",
        ),
        Code(
            "GM173",
            _E,
            "policy says what gitmesh cannot carry yet",
            "The policy is valid for Open Service Mesh but uses something gitmesh does not translate "
            "yet: egress hosts on a tcp port or IP ranges on http or tls ports (hosts tell HTTP and "
            "TLS apart, addresses TCP), http or tls egress without hosts, a wildcard other than a "
            "leading '*.', matches but HTTPRouteGroups, a host on two TLS ports or that is a mesh "
            "Service, IngressBackend "
            "ServiceAccounts over plaintext, addresses over mTLS or tls options, a rate-limit status "
            "Envoy does not define. It is refused rather than silently dropped, so that nothing OSM "
            "allowed or limited changes unnoticed. Rewrite it with hosts and ServiceAccounts, or "
            "leave it out.",
        ),
        Code(
            "GM174",
            _E,
            "fault injection without a fault",
            "A FaultInjection needs a delay, an abort or both.",
        ),
        Code(
            "GM175",
            _E,
            "policy address range is not an IP range",
            "An IngressBackend IPRange source, or an Egress ipAddresses entry, is an address or a "
            "CIDR: 10.0.0.0/8, 192.168.1.7.",
        ),
    )
}


@dataclass(frozen=True, order=True)
class Diagnostic:
    """One problem, pointing at file, line and field."""

    location: Location
    code: str
    message: str
    path: str = ""  # the field, as a dotted path: spec.backends[0].weight
    ref: ObjectRef | None = None

    @property
    def severity(self) -> Severity:
        return CODES[self.code].severity

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR


def field_path(path: tuple[str | int, ...]) -> str:
    """Render a field path the way kubectl does: spec.backends[0].weight."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out

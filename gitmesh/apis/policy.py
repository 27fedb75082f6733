"""The policy readers: OSM's Retry, UpstreamTrafficSetting, Egress and IngressBackend, and gitmesh's
FaultInjection, into the mesh model's policy values."""

from __future__ import annotations

OSM_GROUP = "policy.openservicemesh.io"
GITMESH_GROUP = "gitmesh.dev"

"""Pod identity, pure: what a pod's projected ServiceAccount token proves (a TokenReview's answer),
and whether a pod is the one a sidecar says it runs in.

An injected pod's init container presents its token (audience ``gitmesh``, bound to the pod) to
gitmesh, which asks the cluster whose it is (TokenReview) and reads the pod it is bound to; only
then does it issue the pod's xDS client certificate, for the token's ServiceAccount and no other.
On every xDS stream, gitmesh checks the pod the node names against the certificate's identity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gitmesh.mesh.state import Identity

AUDIENCE = "gitmesh"
_SERVICE_ACCOUNT_USER = "system:serviceaccount:"
# What the API server adds to the review of a token bound to a pod.
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"


class Refused(Exception):
    """A token or a claim that proves nothing (the message says why, without the token)."""


@dataclass(frozen=True)
class PodClaim:
    """A pod, by name and UID, and the ServiceAccount it runs as."""

    identity: Identity  # its namespace is the pod's
    pod_name: str
    pod_uid: str


def reviewed(status: Mapping[str, Any]) -> PodClaim:
    """What a TokenReview's status proves: the pod the token is bound to and its ServiceAccount.
    Refused for a token that is not authenticated, not meant for gitmesh, not a ServiceAccount's,
    or not bound to a pod."""
    if not status.get("authenticated"):
        raise Refused(f"the token is not valid: {status.get('error') or 'not authenticated'}")
    if AUDIENCE not in (status.get("audiences") or ()):
        raise Refused(f"the token is not meant for audience {AUDIENCE!r}")
    user = status.get("user") or {}
    username = str(user.get("username") or "")
    namespace, _, name = username.removeprefix(_SERVICE_ACCOUNT_USER).partition(":")
    if not username.startswith(_SERVICE_ACCOUNT_USER) or not namespace or not name:
        raise Refused(f"the token is {username or 'nobody'}'s, not a ServiceAccount's")
    extra = user.get("extra") or {}
    pod_name, pod_uid = (next(iter(extra.get(key) or ()), "") for key in (POD_NAME_EXTRA, POD_UID_EXTRA))
    if not pod_name or not pod_uid:
        raise Refused("the token is not bound to a pod (a projected ServiceAccount token is)")
    return PodClaim(Identity(namespace, name), str(pod_name), str(pod_uid))


def pod_problem(pod: Mapping[str, Any] | None, claim: PodClaim, ip: str = "") -> str | None:
    """Why ``pod`` (as the API server has it; None: not found) is not the claimed one: another UID
    (deleted and made again), another ServiceAccount, being deleted, or (with ``ip``) another address."""
    where = f"pod {claim.identity.namespace}/{claim.pod_name}"
    if pod is None:
        return f"{where} does not exist"
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    if metadata.get("uid") != claim.pod_uid:
        return f"{where} has UID {metadata.get('uid')}, not {claim.pod_uid}"
    account = spec.get("serviceAccountName") or "default"
    if account != claim.identity.name:
        return f"{where} runs as ServiceAccount {account}, not {claim.identity.name}"
    if metadata.get("deletionTimestamp"):
        return f"{where} is being deleted"
    if ip and (pod.get("status") or {}).get("podIP") != ip:
        return f"{where} is not at {ip}"
    return None

"""What a pod's projected token proves (a TokenReview's answer), and whether a pod is the claimed one."""

from __future__ import annotations

from typing import Any

import pytest

from gitmesh.inject.identity import POD_NAME_EXTRA, POD_UID_EXTRA, PodClaim, Refused, pod_problem, reviewed
from gitmesh.mesh.state import Identity

CLAIM = PodClaim(Identity("shop", "web"), "web-1", "uid-1")


def status(**changes: Any) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "authenticated": True,
        "audiences": ["gitmesh"],
        "user": {
            "username": "system:serviceaccount:shop:web",
            "extra": {POD_NAME_EXTRA: ["web-1"], POD_UID_EXTRA: ["uid-1"]},
        },
    }
    answer.update(changes)
    return answer


def pod(**changes: Any) -> dict[str, Any]:
    found: dict[str, Any] = {
        "metadata": {"name": "web-1", "namespace": "shop", "uid": "uid-1"},
        "spec": {"serviceAccountName": "web"},
        "status": {"podIP": "10.244.0.5"},
    }
    for key, value in changes.items():
        found[key] = {**found[key], **value}
    return found


def test_a_bound_service_account_token_proves_its_pod_and_account() -> None:
    assert reviewed(status()) == CLAIM


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (status(authenticated=False, error="token expired"), "token expired"),
        (status(audiences=["https://kubernetes.default.svc"]), "audience 'gitmesh'"),
        (status(user={"username": "alice"}), "alice's, not a ServiceAccount's"),
        (status(user={"username": "system:serviceaccount:shop:web"}), "not bound to a pod"),
    ],
)
def test_a_token_that_proves_no_pod_is_refused(answer: dict[str, Any], why: str) -> None:
    with pytest.raises(Refused, match=why):
        reviewed(answer)


def test_the_pod_must_be_the_claimed_one() -> None:
    assert pod_problem(pod(), CLAIM, "10.244.0.5") is None
    assert pod_problem(None, CLAIM) == "pod shop/web-1 does not exist"
    assert "has UID uid-2" in str(pod_problem(pod(metadata={"uid": "uid-2"}), CLAIM))
    assert "runs as ServiceAccount db" in str(pod_problem(pod(spec={"serviceAccountName": "db"}), CLAIM))
    assert "being deleted" in str(
        pod_problem(pod(metadata={"deletionTimestamp": "2026-01-01T00:00:00Z"}), CLAIM)
    )
    assert "not at 10.244.0.6" in str(pod_problem(pod(), CLAIM, "10.244.0.6"))
    # A pod without a ServiceAccount named runs as "default".
    default = PodClaim(Identity("shop", "default"), "web-1", "uid-1")
    assert pod_problem(pod(spec={"serviceAccountName": None}), default) is None

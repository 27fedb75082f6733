from __future__ import annotations

import json

import pytest
import urllib3

from gitmesh.cluster.port import ObjectsFailed
from gitmesh.errors import ClusterError
from gitmesh.kube import errors
from gitmesh.objects import ObjectRef

REF = ObjectRef("", "Service", "app", "web")


def status_body(code: int, reason: str, message: str, causes: list[dict[str, str]] | None = None) -> bytes:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
        "details": {"causes": causes or []},
    }
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (403, errors.Forbidden),
        (404, errors.NotFound),
        (409, errors.Conflict),
        (422, errors.Invalid),
        (500, errors.ServerError),
        (503, errors.ServerError),
        (400, errors.ApiError),
        (429, errors.ApiError),
    ],
)
def test_statuses_map_to_their_error(code: int, cls: type[errors.ApiError]) -> None:
    e = errors.api_error(code, status_body(code, "Reason", "it failed"), REF)
    assert type(e) is cls
    assert str(e) == f"Service/app/web: {code} Reason: it failed"


def test_every_error_status_is_a_cluster_error() -> None:
    for code in range(400, 600):
        e = errors.api_error(code, b"", REF)
        assert isinstance(e, ClusterError)
        assert e.status == code


def test_field_causes_are_listed() -> None:
    body = status_body(
        422,
        "Invalid",
        'Service "web" is invalid',
        [
            {"field": "spec.ports[1].name", "message": 'Duplicate value: "p80"'},
            {"field": "", "message": "something general"},
        ],
    )
    e = errors.api_error(422, body, REF)
    assert isinstance(e, errors.Invalid)
    assert [c.field for c in e.causes] == ["spec.ports[1].name", ""]
    assert "\n    spec.ports[1].name: Duplicate value" in str(e)
    assert str(e).endswith("\n    something general")


def test_a_body_that_is_not_a_status_is_kept_short() -> None:
    e = errors.api_error(404, b"404 page not found\n" + b"x" * 1000)
    assert str(e).startswith("404 : 404 page not found")
    assert len(str(e)) < 320


def test_unreachable_names_the_server_and_the_cause() -> None:
    cause = urllib3.exceptions.NewConnectionError(None, "Connection refused")  # type: ignore[arg-type]
    e = errors.unreachable("https://127.0.0.1:1", urllib3.exceptions.MaxRetryError(None, "/", cause))  # type: ignore[arg-type]
    assert str(e).startswith("the API server at https://127.0.0.1:1 is unreachable: ")
    timeout = errors.unreachable(
        "https://x", urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out")
    )  # type: ignore[arg-type]
    assert "timed out" in str(timeout)


def test_apply_failed_lists_every_object() -> None:
    failures = [
        errors.api_error(422, status_body(422, "Invalid", "bad"), REF),
        errors.api_error(403, status_body(403, "Forbidden", "no"), ObjectRef("", "Namespace", "", "x")),
    ]
    text = str(ObjectsFailed("applied", failures))
    assert text.splitlines() == [
        "2 object(s) could not be applied:",
        "  Service/app/web: 422 Invalid: bad",
        "  Namespace/x: 403 Forbidden: no",
    ]


def test_a_404_names_the_resource_the_server_did_not_find() -> None:
    # What the API server answers when an object's namespace does not exist yet.
    body = {
        "kind": "Status",
        "code": 404,
        "reason": "NotFound",
        "message": 'namespaces "shop" not found',
        "details": {"name": "shop", "kind": "namespaces"},
    }
    e = errors.api_error(404, json.dumps(body).encode(), REF)
    assert isinstance(e, errors.NotFound) and e.missing == "namespaces"
    other = status_body(404, "NotFound", "services web not found")  # no details.kind: nothing named
    assert errors.api_error(404, other, REF).missing == ""

"""Kubernetes API failures, translated once, here, into ``ClusterError`` values that name the object.

The API answers with a Status object; its reason and field causes are kept so
the message says what the server refused and why (a 422 lists every field).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import urllib3

from gitmesh.errors import ClusterError
from gitmesh.objects import ObjectRef


@dataclass(frozen=True)
class Cause:
    field: str
    message: str


class ApiError(ClusterError):
    """The API server refused a request about ``ref``."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        ref: ObjectRef | None = None,
        causes: tuple[Cause, ...] = (),
        missing: str = "",
    ) -> None:
        self.status, self.reason, self.message, self.ref, self.causes = status, reason, message, ref, causes
        self.missing = missing  # on a 404, the resource (plural) the server did not find, as it says
        fields = "".join(f"\n    {c.field}: {c.message}" if c.field else f"\n    {c.message}" for c in causes)
        self.detail = f"{status} {reason}: {message}{fields}"
        super().__init__(f"{ref}: {self.detail}" if ref else self.detail)


class Forbidden(ApiError):
    pass


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    """409: a field-manager conflict on apply, or a resourceVersion race."""


class Invalid(ApiError):
    """422: the object breaks the server's validation; ``causes`` name the fields."""


class ServerError(ApiError):
    pass


_BY_STATUS: dict[int, type[ApiError]] = {403: Forbidden, 404: NotFound, 409: Conflict, 422: Invalid}


class Unreachable(ClusterError):
    """The API server did not answer: down, wrong address, or too slow."""


def api_error(status: int, body: bytes, ref: ObjectRef | None = None) -> ApiError:
    """The error for a non-2xx answer, from its Status body when there is one."""
    try:
        st = json.loads(body)
    except ValueError:
        st = {}
    if not isinstance(st, dict) or st.get("kind") != "Status":
        text = body[:300].decode("utf-8", "replace").strip()
        return _class(status)(status, "", text or "no message", ref)
    details = st.get("details") or {}
    causes = tuple(
        Cause(str(c.get("field", "")), str(c.get("message", ""))) for c in details.get("causes") or ()
    )
    missing = str(details.get("kind", "")) if status == 404 else ""
    return _class(status)(status, str(st.get("reason", "")), str(st.get("message", "")), ref, causes, missing)


def _class(status: int) -> type[ApiError]:
    return _BY_STATUS.get(status, ServerError if status >= 500 else ApiError)


def unreachable(server: str, error: Exception) -> Unreachable:
    if isinstance(error, urllib3.exceptions.MaxRetryError) and error.reason is not None:
        error = error.reason
    # urllib3 counts a refused connection as a kind of timeout; a person would not.
    timed_out = isinstance(error, urllib3.exceptions.TimeoutError) and not isinstance(
        error, urllib3.exceptions.NewConnectionError
    )
    kind = "timed out" if timed_out else "is unreachable"
    return Unreachable(f"the API server at {server} {kind}: {error}")

"""The replicas' xDS reports as one: each ``gitmesh run`` replica saves what it sees of the sidecars
connected to it, and readers (the leader judging a rollout, ``gitmesh status``, the console) want
the whole mesh."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

REFRESH_SECONDS = 30.0  # a replica saves its report at least this often, changed or not
# A report not saved for this long is of a replica that is gone: its sidecars, if alive, have
# reconnected to another replica, and the ones it names may no longer exist.
STALE_SECONDS = 4 * REFRESH_SECONDS
MAX_NACKS = 100  # the latest rejections, of all proxies, that a report lists


def merged(reports: Iterable[Mapping[str, Any]], now: float) -> dict[str, Any] | None:
    """The fresh reports (saved within STALE_SECONDS of ``now``) as one: every replica's proxies,
    sidecars and latest rejections; each identity's latest certificate expiry; the rest (the
    certificate provider's state) as the newest report has it. None: no replica reports."""
    fresh = sorted(
        (r for r in reports if now - float(r.get("at", 0)) <= STALE_SECONDS), key=lambda r: r["at"]
    )
    if not fresh:
        return None
    certificates: dict[str, str] = {}
    for report in fresh:
        for identity, expires in report.get("certificates", {}).items():
            # ISO 8601 in UTC throughout: the later string is the later time.
            certificates[identity] = max(expires, certificates.get(identity, expires))
    nacks = sorted((n for r in fresh for n in r.get("nacks", ())), key=lambda n: n["at"])
    return {
        **fresh[-1],
        "proxies": sorted({p for r in fresh for p in r.get("proxies", ())}),
        "sidecars": dict(sorted({a: s for r in fresh for a, s in r.get("sidecars", {}).items()}.items())),
        "nacks": nacks[-MAX_NACKS:],
        "certificates": dict(sorted(certificates.items())),
        "replicas": {str(r.get("replica", "")): r["at"] for r in fresh},
    }

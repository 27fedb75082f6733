"""The replicas' xDS reports read as one (gitmesh/state/reports.py)."""

from __future__ import annotations

from typing import Any

from gitmesh.state import reports

NOW = 10_000.0


def report(replica: str, at: float, **fields: Any) -> dict[str, Any]:
    return {
        "replica": replica,
        "at": at,
        "proxies": [],
        "sidecars": {},
        "nacks": [],
        "certificates": {},
        **fields,
    }


def test_every_fresh_replica_s_sidecars_and_proxies_are_in_the_whole() -> None:
    a = report("gitmesh-a", NOW - 1, proxies=["buyer"], sidecars={"10.0.0.1:15021": "bookbuyer/bookbuyer"})
    b = report("gitmesh-b", NOW - 2, proxies=["v2"], sidecars={"10.0.0.2:15021": "bookstore/bookstore-v2"})
    whole = reports.merged([a, b], NOW)
    assert whole is not None
    assert whole["proxies"] == ["buyer", "v2"]
    assert whole["sidecars"] == {
        "10.0.0.1:15021": "bookbuyer/bookbuyer",
        "10.0.0.2:15021": "bookstore/bookstore-v2",
    }
    assert whole["replicas"] == {"gitmesh-a": NOW - 1, "gitmesh-b": NOW - 2}
    assert whole["at"] == NOW - 1  # the newest


def test_a_replica_not_heard_from_is_left_out_and_none_means_no_report() -> None:
    gone = report("gitmesh-old", NOW - reports.STALE_SECONDS - 1, sidecars={"10.0.0.9:15021": "x/deleted"})
    alive = report("gitmesh-a", NOW - reports.STALE_SECONDS + 1, sidecars={"10.0.0.1:15021": "a/a"})
    whole = reports.merged([gone, alive], NOW)
    assert whole is not None and whole["sidecars"] == {"10.0.0.1:15021": "a/a"}
    assert list(whole["replicas"]) == ["gitmesh-a"]
    assert reports.merged([gone], NOW) is None
    assert reports.merged([], NOW) is None


def test_rejections_are_the_latest_of_all_and_each_identity_its_latest_expiry() -> None:
    nacks_a = [{"proxy": "p", "at": NOW - 100 + i} for i in range(reports.MAX_NACKS)]
    nacks_b = [{"proxy": "q", "at": NOW - 50.5}]
    a = report("a", NOW - 1, nacks=nacks_a, certificates={"bookstore/bookstore": "2026-12-07T00:00:00+00:00"})
    b = report(
        "b",
        NOW - 3,
        nacks=nacks_b,
        certificates={"bookstore/bookstore": "2026-12-07T06:00:00+00:00", "x/y": "2026-12-08T00:00:00+00:00"},
        certificate_provider={"name": "older", "problem": None},
    )
    whole = reports.merged([a, b], NOW)
    assert whole is not None
    assert len(whole["nacks"]) == reports.MAX_NACKS
    assert whole["nacks"][0]["at"] == NOW - 99  # the oldest of a's dropped to make room for b's
    assert {"proxy": "q", "at": NOW - 50.5} in whole["nacks"]
    assert [n["at"] for n in whole["nacks"]] == sorted(n["at"] for n in whole["nacks"])
    assert whole["certificates"] == {
        "bookstore/bookstore": "2026-12-07T06:00:00+00:00",
        "x/y": "2026-12-08T00:00:00+00:00",
    }
    assert "certificate_provider" not in whole  # the newest report (a) has none

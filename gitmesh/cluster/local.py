"""The embedded store: gitmesh's default backend when there is no cluster.

One SQLite file (standard library). An apply is one transaction, so a crash
or a kill mid-apply leaves the store exactly before or exactly after it.
Every write bumps a store-wide counter that becomes the object's
resourceVersion, as in Kubernetes.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gitmesh.certs.store import FileKeeper, ca_path
from gitmesh.cluster.backend import Changes, Live, Prediction, SourceStatus, content_hash, is_owned, owned
from gitmesh.cluster.inventory import Applied, ChangeSet
from gitmesh.cluster.records import SourceRecord
from gitmesh.errors import ClusterError
from gitmesh.objects import ObjectRef

DEFAULT_PATH = Path(".gitmesh") / "store.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    grp TEXT NOT NULL, kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    body TEXT NOT NULL, resource_version INTEGER NOT NULL, created_at TEXT NOT NULL,
    PRIMARY KEY (grp, kind, namespace, name)
);
CREATE TABLE IF NOT EXISTS inventory (
    source TEXT NOT NULL, grp TEXT NOT NULL, kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    hash TEXT NOT NULL, resource_version TEXT NOT NULL,
    PRIMARY KEY (source, grp, kind, namespace, name)
);
CREATE TABLE IF NOT EXISTS sources (
    source TEXT PRIMARY KEY, revision TEXT, ref TEXT NOT NULL DEFAULT '', applied_at TEXT,
    last_error TEXT NOT NULL DEFAULT '', last_error_at TEXT
);
CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY CHECK (id = 0), value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS xds (id INTEGER PRIMARY KEY CHECK (id = 0), report TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (source TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS suspended (source TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS rollouts (split TEXT PRIMARY KEY, record TEXT NOT NULL);
INSERT OR IGNORE INTO counter VALUES (0, 0);
"""


class LocalBackend:
    def __init__(self, path: Path | str = DEFAULT_PATH) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise ClusterError(f"cannot open the embedded store at {self.path}: {e}") from e

    def close(self) -> None:
        self._db.close()

    def describe(self) -> str:
        return f"local:{self.path}"

    def version(self) -> str:
        """The store-wide resource version: it changes with every write, from any process."""
        (value,) = self._db.execute("SELECT value FROM counter").fetchone()
        return str(value)

    def list_managed(self) -> dict[ObjectRef, Live]:
        out = {}
        for grp, kind, ns, name, body, rv, created in self._db.execute(
            "SELECT grp, kind, namespace, name, body, resource_version, created_at FROM objects"
        ):
            obj = json.loads(body)
            if not is_owned(obj):
                continue
            obj["metadata"].update(resourceVersion=str(rv), creationTimestamp=created)
            out[ObjectRef(grp, kind, ns, name)] = Live(obj, str(rv))
        return out

    def inventory(self, source: str) -> dict[ObjectRef, Applied]:
        rows = self._db.execute(
            "SELECT grp, kind, namespace, name, hash, resource_version FROM inventory WHERE source = ?",
            (source,),
        )
        return {ObjectRef(g, k, ns, n): Applied(h, rv) for g, k, ns, n, h, rv in rows}

    def present(self, refs: Collection[ObjectRef]) -> frozenset[ObjectRef]:
        query = "SELECT 1 FROM objects WHERE grp = ? AND kind = ? AND namespace = ? AND name = ?"
        return frozenset(
            r for r in refs if self._db.execute(query, (r.group, r.kind, r.namespace, r.name)).fetchone()
        )

    def predict(self, objects: Sequence[Mapping[str, Any]]) -> list[Prediction]:
        return [Prediction(owned(obj)) for obj in objects]

    def apply(self, changes: Changes) -> ChangeSet:
        # One transaction: all of it is written or, on an error, none (no partial change set).
        now = _now()
        applied = {}
        with self._transaction() as db:
            (counter,) = db.execute("SELECT value FROM counter").fetchone()
            for obj in changes.writes:
                counter += 1
                r = ObjectRef.of(obj)
                applied[r] = Applied(content_hash(obj), str(counter))
                body = json.dumps(owned(obj), separators=(",", ":"), sort_keys=True)
                db.execute(
                    "INSERT INTO objects VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                    "body = excluded.body, resource_version = excluded.resource_version",
                    (r.group, r.kind, r.namespace, r.name, body, counter, now),
                )
            for r in changes.deletes:
                counter += 1  # a delete is a write too: whoever follows version() must see it
                db.execute(
                    "DELETE FROM objects WHERE grp = ? AND kind = ? AND namespace = ? AND name = ?",
                    (r.group, r.kind, r.namespace, r.name),
                )
            db.execute("UPDATE counter SET value = ?", (counter,))
        return ChangeSet(applied, frozenset(changes.deletes), changes.unchanged)

    def save_inventory(
        self, source: str, inventory: Mapping[ObjectRef, Applied], revision: str | None, ref: str, error: str
    ) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM inventory WHERE source = ?", (source,))
            db.executemany(
                "INSERT INTO inventory VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (source, r.group, r.kind, r.namespace, r.name, a.hash, a.resource_version)
                    for r, a in inventory.items()
                ],
            )
            if revision is None and error:
                db.execute(
                    "INSERT INTO sources (source, last_error, last_error_at) VALUES (?, ?, ?) "
                    "ON CONFLICT DO UPDATE SET "
                    "last_error = excluded.last_error, last_error_at = excluded.last_error_at",
                    (source, error, _now()),
                )
                return
            db.execute(
                "INSERT INTO sources (source, revision, ref, applied_at, last_error, last_error_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET revision = excluded.revision, "
                "ref = excluded.ref, applied_at = excluded.applied_at, last_error = excluded.last_error, "
                "last_error_at = excluded.last_error_at",
                (source, revision, ref, _now(), error, _now() if error else None),
            )

    def record_error(self, source: str, message: str) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO sources (source, last_error, last_error_at) VALUES (?, ?, ?) "
                "ON CONFLICT DO UPDATE SET "
                "last_error = excluded.last_error, last_error_at = excluded.last_error_at",
                (source, message, _now()),
            )

    def record_xds(self, report: Mapping[str, Any]) -> None:
        """What ``gitmesh run`` last saw of its proxies: who is connected, what they rejected."""
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO xds VALUES (0, ?)", (json.dumps(report, sort_keys=True),))

    def ca_keeper(self) -> FileKeeper:
        return FileKeeper(ca_path(self.path))

    def xds_report(self) -> dict[str, Any] | None:
        row = self._db.execute("SELECT report FROM xds").fetchone()
        return json.loads(row[0]) if row else None

    def save_record(self, record: SourceRecord) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO records VALUES (?, ?)",
                (record.source, json.dumps(record.to_json(), sort_keys=True)),
            )

    def records(self) -> list[SourceRecord]:
        rows = self._db.execute("SELECT body FROM records ORDER BY source")
        return [SourceRecord.from_json(json.loads(body)) for (body,) in rows]

    def set_suspended(self, source: str, suspended: bool) -> None:
        with self._transaction() as db:
            if suspended:
                db.execute("INSERT OR IGNORE INTO suspended VALUES (?)", (source,))
            else:
                db.execute("DELETE FROM suspended WHERE source = ?", (source,))

    def suspended(self) -> frozenset[str]:
        return frozenset(source for (source,) in self._db.execute("SELECT source FROM suspended"))

    def rollouts(self) -> dict[str, dict[str, Any]]:
        return {split: json.loads(r) for split, r in self._db.execute("SELECT split, record FROM rollouts")}

    def save_rollout(self, split: str, record: Mapping[str, Any]) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO rollouts VALUES (?, ?)", (split, json.dumps(record)))

    def status(self) -> list[SourceStatus]:
        counts: dict[str, Counter[str]] = {}
        for source, kind, n in self._db.execute("SELECT source, kind, count(*) FROM inventory GROUP BY 1, 2"):
            counts.setdefault(source, Counter())[kind] = n
        return [
            SourceStatus(
                source, revision, ref, _time(applied), dict(counts.get(source, {})), error, _time(error_at)
            )
            for source, revision, ref, applied, error, error_at in self._db.execute(
                "SELECT source, revision, ref, applied_at, last_error, last_error_at "
                "FROM sources ORDER BY source"
            )
        ]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything inside commits together or not at all (writes inside join it)."""
        with self._transaction():
            yield

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        if self._db.in_transaction:  # inside transaction(): the outer one commits or rolls back
            yield self._db
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as e:
            raise ClusterError(f"embedded store {self.path}: {e}") from e


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time(value: str | None) -> datetime | None:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) if value else None

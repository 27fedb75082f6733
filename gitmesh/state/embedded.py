"""The state stores in the embedded store's SQLite file, one table (or two) each."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from typing import Any

from gitmesh import durations
from gitmesh.certs.store import FileKeeper, ca_path
from gitmesh.cluster.inventory import Applied
from gitmesh.embedded import Database, now
from gitmesh.objects import ObjectRef
from gitmesh.state import SourceStatus, StateStores
from gitmesh.state.records import SourceRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS inventory (
    source TEXT NOT NULL, grp TEXT NOT NULL, kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    hash TEXT NOT NULL, resource_version TEXT NOT NULL,
    PRIMARY KEY (source, grp, kind, namespace, name)
);
CREATE TABLE IF NOT EXISTS sources (
    source TEXT PRIMARY KEY, revision TEXT, ref TEXT NOT NULL DEFAULT '', applied_at TEXT,
    last_error TEXT NOT NULL DEFAULT '', last_error_at TEXT
);
CREATE TABLE IF NOT EXISTS xds (id INTEGER PRIMARY KEY CHECK (id = 0), report TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (source TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS suspended (source TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS rollouts (split TEXT PRIMARY KEY, record TEXT NOT NULL);
"""


def stores(db: Database) -> StateStores:
    return StateStores(
        EmbeddedInventories(db),
        EmbeddedRecords(db),
        EmbeddedRollouts(db),
        EmbeddedXdsReports(db),
        FileKeeper(ca_path(db.path)),
    )


class EmbeddedInventories:
    def __init__(self, db: Database) -> None:
        self._db = db

    def get(self, source: str) -> dict[ObjectRef, Applied]:
        rows = self._db.connection().execute(
            "SELECT grp, kind, namespace, name, hash, resource_version FROM inventory WHERE source = ?",
            (source,),
        )
        return {ObjectRef(g, k, ns, n): Applied(h, rv) for g, k, ns, n, h, rv in rows}

    def save(
        self, source: str, inventory: Mapping[ObjectRef, Applied], revision: str | None, ref: str, error: str
    ) -> None:
        with self._db.transaction() as db:
            db.execute("DELETE FROM inventory WHERE source = ?", (source,))
            db.executemany(
                "INSERT INTO inventory VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (source, r.group, r.kind, r.namespace, r.name, a.hash, a.resource_version)
                    for r, a in inventory.items()
                ],
            )
            if revision is None and error:
                self.record_error(source, error)
                return
            db.execute(
                "INSERT INTO sources (source, revision, ref, applied_at, last_error, last_error_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET revision = excluded.revision, "
                "ref = excluded.ref, applied_at = excluded.applied_at, last_error = excluded.last_error, "
                "last_error_at = excluded.last_error_at",
                (source, revision, ref, now(), error, now() if error else None),
            )

    def record_error(self, source: str, message: str) -> None:
        with self._db.transaction() as db:
            db.execute(
                "INSERT INTO sources (source, last_error, last_error_at) VALUES (?, ?, ?) "
                "ON CONFLICT DO UPDATE SET "
                "last_error = excluded.last_error, last_error_at = excluded.last_error_at",
                (source, message, now()),
            )

    def status(self) -> list[SourceStatus]:
        db = self._db.connection()
        counts: dict[str, Counter[str]] = {}
        for source, kind, n in db.execute("SELECT source, kind, count(*) FROM inventory GROUP BY 1, 2"):
            counts.setdefault(source, Counter())[kind] = n
        return [
            SourceStatus(
                source,
                revision,
                ref,
                durations.instant(applied),
                dict(counts.get(source, {})),
                error,
                durations.instant(error_at),
            )
            for source, revision, ref, applied, error, error_at in db.execute(
                "SELECT source, revision, ref, applied_at, last_error, last_error_at "
                "FROM sources ORDER BY source"
            )
        ]


class EmbeddedRecords:
    def __init__(self, db: Database) -> None:
        self._db = db

    def save(self, record: SourceRecord) -> None:
        with self._db.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO records VALUES (?, ?)",
                (record.source, json.dumps(record.to_json(), sort_keys=True)),
            )

    def all(self) -> list[SourceRecord]:
        rows = self._db.connection().execute("SELECT body FROM records ORDER BY source")
        return [SourceRecord.from_json(json.loads(body)) for (body,) in rows]

    def set_suspended(self, source: str, suspended: bool) -> None:
        with self._db.transaction() as db:
            if suspended:
                db.execute("INSERT OR IGNORE INTO suspended VALUES (?)", (source,))
            else:
                db.execute("DELETE FROM suspended WHERE source = ?", (source,))

    def suspended(self) -> frozenset[str]:
        rows = self._db.connection().execute("SELECT source FROM suspended")
        return frozenset(source for (source,) in rows)


class EmbeddedRollouts:
    def __init__(self, db: Database) -> None:
        self._db = db

    def all(self) -> dict[str, dict[str, Any]]:
        rows = self._db.connection().execute("SELECT split, record FROM rollouts")
        return {split: json.loads(r) for split, r in rows}

    def save(self, split: str, record: Mapping[str, Any]) -> None:
        with self._db.transaction() as db:
            db.execute("INSERT OR REPLACE INTO rollouts VALUES (?, ?)", (split, json.dumps(record)))


class EmbeddedXdsReports:
    def __init__(self, db: Database) -> None:
        self._db = db

    def save(self, report: Mapping[str, Any]) -> None:
        with self._db.transaction() as db:
            db.execute("INSERT OR REPLACE INTO xds VALUES (0, ?)", (json.dumps(report, sort_keys=True),))

    def latest(self) -> dict[str, Any] | None:
        row = self._db.connection().execute("SELECT report FROM xds").fetchone()
        return json.loads(row[0]) if row else None

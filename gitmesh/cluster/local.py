"""The object port to the embedded store: gitmesh's default cluster when there is none.

Objects live in a table of the embedded store's SQLite file (``gitmesh.embedded``). An apply is
one transaction, so a crash or a kill mid-apply leaves the objects exactly before or exactly
after it. Every write bumps a store-wide counter that becomes the object's resourceVersion, as
in Kubernetes.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from gitmesh.cluster.inventory import Applied, ChangeSet
from gitmesh.cluster.port import Changes, Live, Prediction, StatusWrite, content_hash, is_owned, owned
from gitmesh.embedded import Database, now
from gitmesh.errors import ClusterError
from gitmesh.objects import ObjectRef

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    grp TEXT NOT NULL, kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    body TEXT NOT NULL, resource_version INTEGER NOT NULL, created_at TEXT NOT NULL,
    PRIMARY KEY (grp, kind, namespace, name)
);
CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY CHECK (id = 0), value INTEGER NOT NULL);
INSERT OR IGNORE INTO counter VALUES (0, 0);
"""


class LocalObjects:
    def __init__(self, db: Database) -> None:
        self.db = db

    def describe(self) -> str:
        return f"local:{self.db.path}"

    def version(self) -> str:
        """The store-wide resource version: it changes with every write, from any process."""
        (value,) = self.db.connection().execute("SELECT value FROM counter").fetchone()
        return str(value)

    def list(self, refs: Collection[ObjectRef] | None = None) -> dict[ObjectRef, Live]:
        db = self.db.connection()
        query = "SELECT grp, kind, namespace, name, body, resource_version, created_at FROM objects"
        where = " WHERE grp = ? AND kind = ? AND namespace = ? AND name = ?"
        rows: Iterable[Any] = (
            db.execute(query)
            if refs is None
            else (
                row for r in refs for row in db.execute(query + where, (r.group, r.kind, r.namespace, r.name))
            )
        )
        out = {}
        for grp, kind, ns, name, body, rv, created in rows:
            obj = json.loads(body)
            if refs is None and not is_owned(obj):
                continue
            obj["metadata"].update(resourceVersion=str(rv), creationTimestamp=created)
            out[ObjectRef(grp, kind, ns, name)] = Live(obj, str(rv))
        return out

    def predict(self, objects: Sequence[Mapping[str, Any]]) -> builtins.list[Prediction]:
        return [Prediction(owned(obj)) for obj in objects]

    def apply(self, changes: Changes) -> ChangeSet:
        # One transaction: all of it is written or, on an error, none (no partial change set).
        # One writer: the embedded store has no conflicts, so ``force`` changes nothing.
        created = now()
        applied = {}
        with self.db.transaction() as db:
            (counter,) = db.execute("SELECT value FROM counter").fetchone()
            for obj in changes.writes:
                counter += 1
                r = ObjectRef.of(obj)
                applied[r] = Applied(content_hash(obj), str(counter))
                body = json.dumps(
                    _as_stored(owned(obj), self._body(db, r)), separators=(",", ":"), sort_keys=True
                )
                db.execute(
                    "INSERT INTO objects VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                    "body = excluded.body, resource_version = excluded.resource_version",
                    (r.group, r.kind, r.namespace, r.name, body, counter, created),
                )
            for r in changes.deletes:
                counter += 1  # a delete is a write too: whoever follows version() must see it
                db.execute(
                    "DELETE FROM objects WHERE grp = ? AND kind = ? AND namespace = ? AND name = ?",
                    (r.group, r.kind, r.namespace, r.name),
                )
            db.execute("UPDATE counter SET value = ?", (counter,))
        return ChangeSet(applied, frozenset(changes.deletes), changes.unchanged)

    def write_status(self, writes: Sequence[StatusWrite]) -> builtins.list[ClusterError]:
        refused: builtins.list[ClusterError] = []
        with self.db.transaction() as db:
            (counter,) = db.execute("SELECT value FROM counter").fetchone()
            for w in writes:
                r = w.ref
                key = (r.group, r.kind, r.namespace, r.name)
                row = db.execute(_SELECT_ONE, key).fetchone()
                if row is None or str(row[1]) != w.resource_version:
                    refused.append(ClusterError(f"{r} changed since its status was computed"))
                    continue
                counter += 1
                body = {**json.loads(row[0]), "status": dict(w.status)}
                db.execute(
                    "UPDATE objects SET body = ?, resource_version = ? WHERE grp = ? AND kind = ? "
                    "AND namespace = ? AND name = ?",
                    (json.dumps(body, separators=(",", ":"), sort_keys=True), counter, *key),
                )
            db.execute("UPDATE counter SET value = ?", (counter,))
        return refused

    def _body(self, db: sqlite3.Connection, r: ObjectRef) -> dict[str, Any] | None:
        row = db.execute(_SELECT_ONE, (r.group, r.kind, r.namespace, r.name)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def contents(self, namespace: str) -> builtins.list[ObjectRef]:
        rows = self.db.connection().execute(
            "SELECT grp, kind, namespace, name FROM objects WHERE namespace = ? ORDER BY kind, name",
            (namespace,),
        )
        return [ObjectRef(*row) for row in rows]

    def watch(self) -> LocalObjects:
        """Every object here is the mesh's, and ``version()`` follows every write: it is its own watch."""
        return self


_SELECT_ONE = (
    "SELECT body, resource_version FROM objects WHERE grp = ? AND kind = ? AND namespace = ? AND name = ?"
)


def _as_stored(obj: dict[str, Any], before: dict[str, Any] | None) -> dict[str, Any]:
    """An object written over ``before`` as Kubernetes stores it: its status kept (that is written
    apart, like a status subresource) and ``metadata.generation`` counting the changes of the rest."""
    if before is None:
        obj["metadata"]["generation"] = 1
        return obj
    generation = int(before["metadata"].get("generation", 1))
    if _spec(before) != _spec(obj):
        generation += 1
    obj["metadata"]["generation"] = generation
    if "status" in before:
        obj["status"] = before["status"]
    return obj


def _spec(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}

"""The object port to the embedded store: gitmesh's default cluster when there is none.

Objects live in a table of the embedded store's SQLite file (``gitmesh.embedded``). An apply is
one transaction, so a crash or a kill mid-apply leaves the objects exactly before or exactly
after it. Every write bumps a store-wide counter that becomes the object's resourceVersion, as
in Kubernetes.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from gitmesh.cluster.inventory import Applied, ChangeSet
from gitmesh.cluster.port import Changes, Live, Prediction, content_hash, is_owned, owned
from gitmesh.embedded import Database, now
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
                body = json.dumps(owned(obj), separators=(",", ":"), sort_keys=True)
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

    def contents(self, namespace: str) -> builtins.list[ObjectRef]:
        rows = self.db.connection().execute(
            "SELECT grp, kind, namespace, name FROM objects WHERE namespace = ? ORDER BY kind, name",
            (namespace,),
        )
        return [ObjectRef(*row) for row in rows]

    def watch(self) -> LocalObjects:
        """Every object here is the mesh's, and ``version()`` follows every write: it is its own watch."""
        return self

"""The embedded store's one SQLite file (standard library), shared by the object port and the state
stores that keep gitmesh's own state beside it.

Each thread gets its own connection (a connection belongs to the thread that opened it). A
``transaction()`` commits all of its writes or none, so a crash or a kill mid-apply leaves the file
exactly before or exactly after it; writes inside an open transaction join it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from gitmesh.errors import ClusterError


class Database:
    def __init__(self, path: Path | str, schema: str = "", *, create: bool = True) -> None:
        """``create=False``: a missing file is read as an empty store, in memory, and never made."""
        self.path = Path(path)
        self._schema = schema
        self._file = str(self.path) if create or self.path.exists() else ":memory:"
        self._local = threading.local()
        self.connection()  # fail now, with a clear error, if the file cannot be opened

    def connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            try:
                if self._file != ":memory:":
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self._file, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.execute("PRAGMA busy_timeout=5000")
                db.executescript(self._schema)
            except (OSError, sqlite3.Error) as e:
                raise ClusterError(f"cannot open the embedded store at {self.path}: {e}") from e
            self._local.db = db
        return db

    def close(self) -> None:
        """Close this thread's connection."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        db = self.connection()
        if db.in_transaction:  # inside another transaction(): that one commits or rolls back
            yield db
            return
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as e:
            raise ClusterError(f"embedded store {self.path}: {e}") from e


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

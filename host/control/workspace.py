"""A workspace: a folder holding an SQLite database (WAL, schema versioned by migrations) and a package
store. Every change to the database is one transaction, so a crash at any moment leaves it as it was
before the change or after it."""

from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mvu.host.control.store import PackageStore

__all__ = ["Workspace", "WorkspaceError", "MIGRATIONS", "default_workspace"]

#: Schema changes in order; the database's ``user_version`` is how many have been applied.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE models (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        registered_by TEXT NOT NULL,
        registered_at TEXT NOT NULL,
        manifest TEXT NOT NULL,
        PRIMARY KEY (name, version)
    );
    CREATE TABLE tags (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (name, version, key),
        FOREIGN KEY (name, version) REFERENCES models (name, version) ON DELETE CASCADE
    );
    """,
    """
    CREATE TABLE services (
        name TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        port INTEGER NOT NULL,
        grpc_port INTEGER NOT NULL,
        backend TEXT NOT NULL,
        tls_cert TEXT,
        tls_key TEXT,
        state TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '',
        supervisor_pid INTEGER,
        server_pid INTEGER,
        restarts INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE service_models (
        service TEXT NOT NULL REFERENCES services (name) ON DELETE CASCADE,
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        PRIMARY KEY (service, name),
        FOREIGN KEY (name, version) REFERENCES models (name, version) ON DELETE RESTRICT
    );
    """,
    """
    ALTER TABLE services ADD COLUMN replicas INTEGER NOT NULL DEFAULT 1;
    """,
)

_BUSY_TIMEOUT_S = 30.0


class WorkspaceError(ValueError):
    """A workspace that cannot be used, or a request it cannot carry out; the message says why."""


def default_workspace() -> Path:
    """``$MVU_WORKSPACE``, else ``~/.mvu``."""
    return Path(os.environ.get("MVU_WORKSPACE", Path.home() / ".mvu"))


class Workspace:
    """Opens (creating and migrating if needed) the workspace in ``path``."""

    DATABASE = "workspace.sqlite3"

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else default_workspace()
        if self.path.exists() and not self.path.is_dir():
            raise WorkspaceError(f"workspace {self.path}: not a folder")
        self.path.mkdir(parents=True, exist_ok=True)
        self.store = PackageStore(self.path / "packages")
        self._migrate()

    def connect(self) -> sqlite3.Connection:
        """A new connection (one per thread or process), waiting up to 30 s for another writer."""
        try:
            connection = sqlite3.connect(self.path / self.DATABASE, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as error:
            raise WorkspaceError(f"workspace {self.path}: cannot open its database ({error})") from None
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute("PRAGMA synchronous = FULL")
        return connection

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the database's write lock from its start: committed whole on
        success, rolled back on any error."""
        connection = self.connect()
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        finally:
            connection.close()

    def _migrate(self) -> None:
        connection = self.connect()
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("BEGIN IMMEDIATE")
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                connection.execute("ROLLBACK")
                raise WorkspaceError(f"workspace {self.path}: schema version {version} is newer than this mvu "
                                     f"knows ({len(MIGRATIONS)}); upgrade mvu")
            for script in MIGRATIONS[version:]:
                for statement in filter(str.strip, script.split(";")):
                    connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
            connection.execute("COMMIT")
        except sqlite3.DatabaseError as error:
            raise WorkspaceError(f"workspace {self.path}: its database is unreadable ({error})") from None
        finally:
            connection.close()

    @property
    def schema_version(self) -> int:
        connection = self.connect()
        try:
            return connection.execute("PRAGMA user_version").fetchone()[0]
        finally:
            connection.close()

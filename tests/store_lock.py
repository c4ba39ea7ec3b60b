"""A SQLite state store failing as it does for real, by another process's hand."""
from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def write_locked(path: Path) -> Iterator[None]:
    """Hold the write lock of the SQLite file at `path`; readers go on (WAL), writers wait and fail."""
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        yield
        holder.execute("ROLLBACK")
    finally:
        holder.close()


@contextmanager
def table_gone(path: Path, table: str) -> Iterator[None]:
    """Rename `table` of the SQLite file at `path` away, then back: reading it fails meanwhile."""
    holder = sqlite3.connect(path, isolation_level=None, timeout=10)
    try:
        holder.execute(f"ALTER TABLE {table} RENAME TO {table}_gone")
        try:
            yield
        finally:  # a failed check inside must not leave the session's store without the table
            holder.execute(f"ALTER TABLE {table}_gone RENAME TO {table}")
    finally:
        holder.close()

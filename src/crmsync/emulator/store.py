"""Records, row versions and the deletion log, in memory with optional SQLite persistence.

Everything runs on the server's single event loop and no method awaits, so each call is
atomic without locks. Three structures keep per-request work small at 200k rows:

- ``Table.rows`` is a dict kept in version order (a write pops and re-inserts the row),
  so a delta query walks back from the newest row only as far as the token's version.
- ``Table.ordered()`` is the primary keys in sorted order for keyset paging; inserts
  land in a small pending list merged in O(n) by timsort on the next read.
- ``Table.deleted`` is (version, id) in version order, for ``$deletedEntity`` entries.

Writes go through a transaction (undo log in memory, SQLite rows flushed on commit), so
a ``$batch`` changeset or a bulk message either applies whole or not at all.
"""

from __future__ import annotations

import bisect
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crmsync.emulator.model import ENTITIES

# Dataverse versionnumbers are large rowversion values; starting high keeps ETags
# looking like W/"72201545" rather than W/"1".
_FIRST_VERSION = 1_000_000


@dataclass
class Table:
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    deleted: list[tuple[int, str]] = field(default_factory=list)
    _sorted: list[str] = field(default_factory=list)
    _pending: list[str] = field(default_factory=list)
    _dirty_removed: bool = False

    def ordered(self) -> list[str]:
        """Primary keys in ascending order (may contain keys deleted since: callers skip)."""
        if self._pending or self._dirty_removed:
            self._pending.sort()
            merged = self._sorted + self._pending
            merged.sort()  # two sorted runs: timsort merges them in linear time
            if self._dirty_removed:
                rows = self.rows
                compact: list[str] = []
                last = None
                for key in merged:
                    if key != last and key in rows:
                        compact.append(key)
                    last = key
                merged = compact
            self._sorted = merged
            self._pending = []
            self._dirty_removed = False
        return self._sorted

    def changed_since(self, version: int, upto: int) -> list[dict[str, Any]]:
        """Rows with ``version < versionnumber <= upto``, oldest first."""
        out = []
        for row in reversed(self.rows.values()):
            v = row["versionnumber"]
            if v <= version:
                break
            if v <= upto:
                out.append(row)
        out.reverse()
        return out

    def deleted_since(self, version: int, upto: int) -> list[tuple[int, str]]:
        lo = bisect.bisect_right(self.deleted, (version, "\uffff"))
        hi = bisect.bisect_right(self.deleted, (upto, "\uffff"))
        return self.deleted[lo:hi]


class _Tables(dict[str, Table]):
    """One table per emulated entity set, made when first used: a mapping may add
    entity sets after the store is created (``emulator/mapped.py``)."""

    def __missing__(self, entity_set: str) -> Table:
        if entity_set not in ENTITIES:
            raise KeyError(entity_set)
        table = self[entity_set] = Table()
        return table


class Store:
    def __init__(self, path: Path | None = None) -> None:
        self.tables: dict[str, Table] = _Tables({name: Table() for name in ENTITIES})
        self.version = _FIRST_VERSION
        self._undo: list[tuple[str, str, dict[str, Any] | None, bool]] | None = None
        self._journal: list[tuple[str, str, dict[str, Any] | None, int]] = []
        self._db: sqlite3.Connection | None = None
        if path is not None:
            self._open(path)

    # -- reads ---------------------------------------------------------------------

    def get(self, entity_set: str, key: str) -> dict[str, Any] | None:
        return self.tables[entity_set].rows.get(key)

    def count(self, entity_set: str) -> int:
        return len(self.tables[entity_set].rows)

    def scan_from(self, entity_set: str, after: str | None) -> Iterator[dict[str, Any]]:
        """Live rows in primary-key order, starting after ``after``."""
        table = self.tables[entity_set]
        keys = table.ordered()
        start = 0 if after is None else bisect.bisect_right(keys, after)
        rows = table.rows
        for i in range(start, len(keys)):
            row = rows.get(keys[i])
            if row is not None:
                yield row

    # -- writes --------------------------------------------------------------------

    def next_version(self) -> int:
        self.version += 1
        return self.version

    def put(self, entity_set: str, row: dict[str, Any]) -> None:
        """Insert or replace a row; the caller has set a fresh ``versionnumber``."""
        table = self.tables[entity_set]
        key = row[_pk(entity_set)]
        old = table.rows.pop(key, None)
        if old is None:
            table._pending.append(key)
        table.rows[key] = row
        self._remember(entity_set, key, old, row, row["versionnumber"])

    def delete(self, entity_set: str, key: str) -> None:
        table = self.tables[entity_set]
        old = table.rows.pop(key)
        table._dirty_removed = True
        version = self.next_version()
        table.deleted.append((version, key))
        self._remember(entity_set, key, old, None, version)

    def _remember(
        self,
        entity_set: str,
        key: str,
        old: dict[str, Any] | None,
        new: dict[str, Any] | None,
        version: int,
    ) -> None:
        if self._undo is not None:
            self._undo.append((entity_set, key, old, new is None))
        if self._db is not None:
            self._journal.append((entity_set, key, new, version))

    # -- transactions --------------------------------------------------------------

    def begin(self) -> None:
        self._undo = []

    def commit(self) -> None:
        self._undo = None
        self._flush()

    def rollback(self) -> None:
        """Undo the writes since ``begin``. Versions stay consumed, as in SQL Server."""
        undo, self._undo = self._undo or [], None
        touched: set[str] = set()
        for entity_set, key, old, was_delete in reversed(undo):
            touched.add(entity_set)
            table = self.tables[entity_set]
            if was_delete:
                table.deleted.pop()
            table.rows.pop(key, None)
            if old is not None:
                table.rows[key] = old
                table._pending.append(key)
            table._dirty_removed = True
        for entity_set in touched:
            # A restored row re-entered the dict at the end; put it back in version order.
            table = self.tables[entity_set]
            ordered = sorted(table.rows.values(), key=lambda r: int(r["versionnumber"]))
            table.rows = {r[_pk(entity_set)]: r for r in ordered}
        self._journal.clear()

    def reset(self) -> None:
        for table in self.tables.values():
            table.__init__()  # type: ignore[misc]
        self._journal.clear()
        if self._db is not None:
            with self._db:
                self._db.execute("DELETE FROM records")
                self._db.execute("DELETE FROM deletions")

    # -- persistence ---------------------------------------------------------------

    def _open(self, path: Path) -> None:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS records (entity_set TEXT, id TEXT, version INTEGER,"
            " data TEXT, PRIMARY KEY (entity_set, id))"
        )
        db.execute(
            "CREATE TABLE IF NOT EXISTS deletions (version INTEGER, entity_set TEXT, id TEXT)"
        )
        for entity_set, _key, data in db.execute(
            "SELECT entity_set, id, data FROM records ORDER BY version"
        ):
            if entity_set in ENTITIES:
                row = json.loads(data)
                self.tables[entity_set].rows[row[_pk(entity_set)]] = row
                self.tables[entity_set]._pending.append(row[_pk(entity_set)])
                self.version = max(self.version, row["versionnumber"])
        for version, entity_set, key in db.execute(
            "SELECT version, entity_set, id FROM deletions ORDER BY version"
        ):
            if entity_set in ENTITIES:
                self.tables[entity_set].deleted.append((version, key))
                self.version = max(self.version, version)
        self._db = db

    def _flush(self) -> None:
        if self._db is None or not self._journal:
            return
        journal, self._journal = self._journal, []
        db = self._db
        db.execute("BEGIN")
        for entity_set, key, row, version in journal:
            if row is None:
                db.execute("DELETE FROM records WHERE entity_set = ? AND id = ?", (entity_set, key))
                db.execute("INSERT INTO deletions VALUES (?, ?, ?)", (version, entity_set, key))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?)",
                    (entity_set, key, version, json.dumps(row)),
                )
        db.execute("COMMIT")

    def close(self) -> None:
        if self._db is not None:
            self._flush()
            self._db.close()
            self._db = None


def _pk(entity_set: str) -> str:
    return ENTITIES[entity_set].primary_id

"""Bulk import of local records from a CSV file (``crmsync import``).

Every row goes through the same validation as the records API (a choice's label is
checked against the options the workers stored). A bad row is reported with its line
number and skipped; it never costs the valid rows around it. Valid rows are inserted
in batches, one transaction and one executemany per batch; the capture triggers queue
each of them for Dynamics as usual.

The file is read twice: a first pass checks that it is UTF-8 CSV with a known header
and counts the records (for the progress bar) before anything is written, so that a
usage error never leaves half a file imported.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from crmsync.domain import ObjectSpec
from crmsync.errors import CrmsyncError, ValidationFailed
from crmsync.store import records
from crmsync.store.db import write_transaction

DEFAULT_BATCH_SIZE = 500


class ImportUsageError(CrmsyncError):
    """The file as a whole cannot be imported (missing, not UTF-8, bad header...)."""


@dataclass(frozen=True)
class RowError:
    line: int  # where the record starts in the file, counting from 1
    field: str | None
    message: str
    values: dict[str, str]  # the row as read, to fix and import again

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field else ""
        return f"line {self.line}: {where}{self.message}"


@dataclass(frozen=True)
class CsvShape:
    header: list[str]
    rows: int  # records, blank lines excluded


@dataclass
class ImportResult:
    rows: int = 0
    imported: int = 0
    errors: list[RowError] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return len(self.errors)


def inspect_csv(path: Path, spec: ObjectSpec) -> CsvShape:
    """Check the file and its header without writing anything; count its records."""
    header: list[str] | None = None
    count = 0
    for _line, cells in _records(path):
        if header is None:
            header = _check_header(cells, spec)
        else:
            count += 1
    if header is None:
        raise ImportUsageError(f"{path}: the file is empty (expected a header row)")
    return CsvShape(header=header, rows=count)


def import_csv(
    engine: Engine,
    spec: ObjectSpec,
    path: Path,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_progress: Callable[[int], None] | None = None,
    on_error: Callable[[RowError], None] | None = None,
) -> ImportResult:
    """Import every valid row of ``path`` into ``spec``'s table; report the others."""
    if batch_size < 1:
        raise ImportUsageError("batch size must be at least 1")
    shape = inspect_csv(path, spec)
    result = ImportResult(rows=shape.rows)
    header = shape.header
    batch: list[tuple[int, dict[str, str], dict[str, Any]]] = []

    def reject(error: RowError) -> None:
        result.errors.append(error)
        if on_error is not None:
            on_error(error)

    def flush() -> None:
        if batch:
            result.imported += _insert_batch(engine, spec, batch, reject)
            if on_progress is not None:
                on_progress(len(batch))
            batch.clear()

    with engine.connect() as conn:
        checked = records.with_stored_options(conn, spec)
    rows = _records(path)
    next(rows)  # the header, checked above
    for line, cells in rows:
        raw = dict(zip(header, cells, strict=False))
        if len(cells) != len(header):
            reject(RowError(line, None, f"{len(cells)} values for {len(header)} columns", raw))
            _advance(on_progress)
            continue
        try:
            values = records.validate(checked, records.parse_text(spec, raw))
        except ValidationFailed as exc:
            reject(RowError(line, exc.field, exc.message, raw))
            _advance(on_progress)
            continue
        batch.append((line, raw, values))
        if len(batch) >= batch_size:
            flush()
    flush()
    return result


def _advance(on_progress: Callable[[int], None] | None) -> None:
    if on_progress is not None:
        on_progress(1)


def _insert_batch(
    engine: Engine,
    spec: ObjectSpec,
    batch: list[tuple[int, dict[str, str], dict[str, Any]]],
    reject: Callable[[RowError], None],
) -> int:
    refused: list[RowError] = []
    try:
        with write_transaction(engine) as conn:
            missing = set(records.missing_references(conn, spec, [v for _, _, v in batch]))
            good = []
            for line, raw, values in batch:
                bad = next(((c, v) for c, v in missing if values.get(c) == v), None)
                if bad is None:
                    good.append(values)
                else:
                    message = f"no {_target(spec, bad[0])} with id {bad[1]}"
                    refused.append(RowError(line, bad[0], message, raw))
            imported = records.insert_many(conn, spec, good)
    except DBAPIError:
        # Validation should leave nothing for the database to refuse; if it still does
        # (say, a constraint another application added), find the culprit row by row
        # rather than lose the whole batch.
        return _insert_one_by_one(engine, spec, batch, reject)
    for error in refused:
        reject(error)
    return imported


def _insert_one_by_one(
    engine: Engine,
    spec: ObjectSpec,
    batch: list[tuple[int, dict[str, str], dict[str, Any]]],
    reject: Callable[[RowError], None],
) -> int:
    imported = 0
    for line, raw, values in batch:
        try:
            with write_transaction(engine) as conn:
                records.check_references(conn, spec, [values])
                imported += records.insert_many(conn, spec, [values])
        except ValidationFailed as exc:
            reject(RowError(line, exc.field, exc.message, raw))
        except DBAPIError as exc:
            reason = str(exc.orig).splitlines()[0] if exc.orig else type(exc).__name__
            reject(RowError(line, None, f"refused by the store: {reason}", raw))
    return imported


def _target(spec: ObjectSpec, column: str) -> str:
    return next(lk.target for lk in spec.lookups if lk.column == column)


def _records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(first line number, cells) of each non-blank record, the header first."""
    try:
        # utf-8-sig drops a byte-order mark; newline="" lets csv see quoted newlines.
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            line = 1
            while True:
                try:
                    cells = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    raise ImportUsageError(f"{path}: line {line}: not valid CSV: {exc}") from None
                start, line = line, reader.line_num + 1
                if any(c.strip() for c in cells):
                    yield start, cells
    except FileNotFoundError:
        raise ImportUsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImportUsageError(f"{path}: is a directory, not a CSV file") from None
    except PermissionError:
        raise ImportUsageError(f"{path}: permission denied") from None
    except UnicodeDecodeError as exc:
        raise ImportUsageError(
            f"{path}: not UTF-8 text (invalid byte at offset {exc.start}); "
            "save the file as UTF-8 CSV"
        ) from None


def _check_header(cells: list[str], spec: ObjectSpec) -> list[str]:
    header = [c.strip() for c in cells]
    valid = ", ".join(spec.columns)
    seen: set[str] = set()
    for position, name in enumerate(header, start=1):
        if not name:
            raise ImportUsageError(f"header column {position} has no name; valid columns: {valid}")
        if name in records.READ_ONLY:
            raise ImportUsageError(
                f"header column {name!r} is read-only and cannot be imported; "
                f"valid columns: {valid}"
            )
        if name not in spec.columns:
            raise ImportUsageError(
                f"unknown column {name!r} for {spec.name}; valid columns: {valid}"
            )
        if name in seen:
            raise ImportUsageError(f"header names column {name!r} twice")
        seen.add(name)
    return header

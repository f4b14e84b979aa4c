"""Share of a real push's CPU spent converting values (issue 15's "value conversion under
10% of a push's CPU"), for the wide object of ``bench/wide.py`` (40 mapped fields of
mixed types).

Per round, on a fresh SQLite store (``CRMSYNC_CONFIG`` naming the wide mapping) and the
emulator serving the same mapping in its own process: a ``crmsync worker --once`` with
nothing to push (its CPU: start-up, the metadata check, the pull's first read), then
``--rows`` wide records inserted and a second ``worker --once`` pushing them. The push's
CPU is the second run's user + system time less the first's (the first also does the
initial load, so this is a lower bound of the push's CPU). The conversion's is timed in
this process over the same rows read back from the store: ``plan.body_for`` (every
field's ``to_dataverse`` for every body), median of three passes. Printed: both, per
record, and their ratio; the median over rounds.

    .venv/bin/python bench/convert_push.py [--rows 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from convert import value  # bench/convert.py: the same values per type
from crmsync.config import load_settings
from crmsync.engine.plan import body_for
from crmsync.store.db import create_store_engine, write_transaction
from crmsync.store.local_tables import local_table
from crmsync.store.migrate import upgrade
from push import start_emulator  # bench/push.py
from wide import KINDS, wide_mapping  # bench/wide.py


def toml_of(objects: dict[str, Any]) -> str:
    """The mapping as the TOML a user writes (only what ``wide_mapping`` uses)."""
    lines: list[str] = []
    for name, obj in objects.items():
        lines.append(f"[objects.{name}]")
        lines += [f'{k} = "{v}"' for k, v in obj.items() if isinstance(v, str)]
        for field, spec in obj["fields"].items():
            lines.append(f"[objects.{name}.fields.{field}]")
            lines.append(f'attribute = "{spec["attribute"]}"')
            lines.append(f'type = "{spec["type"]}"')
            if "choices" in spec:
                pairs = ", ".join(f"{k} = {v}" for k, v in spec["choices"].items())
                lines.append(f"choices = {{ {pairs} }}")
    return "\n".join(lines) + "\n"


def worker_cpu(env: dict[str, str]) -> float:
    """CPU seconds (user + system) of one ``crmsync worker --once``."""
    crmsync = str(Path(sys.executable).with_name("crmsync"))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([crmsync, "worker", "--once"], env=env, check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def one_round(rows: int, url: str, folder: Path, r: int) -> tuple[float, float]:
    """(CPU seconds of the push, seconds converting the same rows)."""
    db = f"sqlite:///{folder / f'store{r}.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMSYNC_")}
    env.update(
        CRMSYNC_CONFIG=str(folder / "crmsync.toml"),
        CRMSYNC_DATABASE_URL=db,
        CRMSYNC_DYNAMICS_URL=url,
        CRMSYNC_AUTHORITY_URL=url,
        CRMSYNC_TENANT_ID="bench",
        CRMSYNC_CLIENT_ID="bench-worker",
        CRMSYNC_CLIENT_SECRET="bench-secret",
        CRMSYNC_POLL_SECONDS="3600",
    )
    spec = load_settings(objects=wide_mapping()).object_specs()["wide"]
    engine = create_store_engine(db)
    upgrade(engine, [spec])
    idle = worker_cpu(env)
    table = local_table(spec)
    columns = [f"f{i}" for i in range(40)]
    with write_transaction(engine) as conn:
        for start in range(0, rows, 5_000):
            conn.execute(
                sa.insert(table),  # typed: Decimal, date, ...
                [
                    {c: value(KINDS[i % len(KINDS)], n) for i, c in enumerate(columns)}
                    for n in range(start, min(rows, start + 5_000))
                ],
            )
    with engine.connect() as conn:
        stored = [dict(m) for m in conn.execute(sa.select(table)).mappings()]
    push = worker_cpu(env) - idle
    with engine.connect() as conn:
        waiting = conn.execute(sa.text("SELECT count(*) FROM sync_queue")).scalar_one()
        synced = conn.execute(sa.text("SELECT count(*) FROM sync_record")).scalar_one()
    engine.dispose()
    if waiting or synced != rows:
        raise SystemExit(f"the push did not finish: {synced} synced, {waiting} waiting")
    passes = []
    for _ in range(3):
        started = time.process_time()
        for row in stored:
            body_for(spec, row, {})
        passes.append(time.process_time() - started)
    return push, statistics.median(passes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    shares: list[float] = []
    with tempfile.TemporaryDirectory(prefix="crmsync-convert-") as tmp:
        folder = Path(tmp)
        (folder / "crmsync.toml").write_text(toml_of(wide_mapping()))
        proc, url = start_emulator(wide_mapping())
        try:
            for r in range(args.rounds):
                push, converting = one_round(args.rows, url, folder, r)
                shares.append(converting / push)
                load = " ".join(f"{x:.2f}" for x in os.getloadavg())
                per = 1e6 / args.rows
                print(
                    f"round {r + 1}: push {push:.2f} s CPU ({push * per:.0f} µs a record),"
                    f" conversion {converting:.2f} s ({converting * per:.0f} µs a record):"
                    f" {shares[-1]:.1%} (load average {load})",
                    flush=True,
                )
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    print(f"\n{args.rows} wide records a round: conversion {statistics.median(shares):.1%} of the")
    print("push's CPU (median; target < 10%)")


if __name__ == "__main__":
    main()

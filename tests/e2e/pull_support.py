"""Helpers of the pull tests: a Dynamics user writing to the emulator, local row reads.

Imported by the ``test_pull*`` modules (pytest puts this directory on ``sys.path``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from crmsync.config import Settings


class Sales:
    """A Dynamics user (its own application user in the emulator) writing records."""

    def __init__(self, url: str, client_id: str = "sales-user") -> None:
        token = httpx.post(
            f"{url}/t/oauth2/v2.0/token",
            data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": "s"},
            timeout=10,
        ).json()["access_token"]
        self.http = httpx.Client(
            base_url=f"{url}/api/data/v9.2/",
            headers={"Authorization": f"Bearer {token}", "Prefer": "return=representation"},
            timeout=30,
        )

    def create(self, entity_set: str, body: dict[str, Any]) -> str:
        resp = self.http.post(entity_set, json=body)
        resp.raise_for_status()
        data = resp.json()
        key = next(k for k in data if k.endswith("id") and not k.startswith("_"))
        return str(data[key])

    def update(self, entity_set: str, crm_id: str, body: dict[str, Any]) -> None:
        self.http.patch(f"{entity_set}({crm_id})", json=body).raise_for_status()

    def delete(self, entity_set: str, crm_id: str) -> None:
        self.http.delete(f"{entity_set}({crm_id})").raise_for_status()

    def close(self) -> None:
        self.http.close()


@pytest.fixture(name="sales")
def sales_fixture(sync_settings: Settings) -> Iterator[Sales]:
    s = Sales(sync_settings.dynamics_url or "")
    yield s
    s.close()


def rows(engine: sa.Engine, table: str) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        found = conn.execute(sa.text(f"SELECT * FROM {table}")).mappings().all()
    return {r["crm_id"]: dict(r) for r in found if r["crm_id"]}


def count(engine: sa.Engine, table: sa.Table, *where: Any) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one()
        )

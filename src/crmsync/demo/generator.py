"""Realistic traffic on both sides of the sync, at a steady rate with occasional bursts.

Three kinds of writer, as in a real deployment:

- ``sql``: another program writing the local tables with plain SQL over its own
  connection (change capture must see it like any other write);
- ``api``: an application using crmsync's records API with the bearer token;
- ``crm``: people in Dynamics, a separate application user of the emulator writing
  through its Web API, never touching records crmsync created (so that what crmsync
  sent can be checked afterwards).

``plan`` (pure, seeded) draws what to do next; the writers carry it out. Now and then a
"list import" inserts a few hundred leads in one transaction, so the backlog visibly
rises and drains. A failed write (a 429, a record deleted meanwhile) is counted and
skipped: the generator stands for people, who do not retry on the sync's behalf.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from crmsync.demo.people import People, Person
from crmsync.domain import Operation
from crmsync.store.db import write_transaction

log = logging.getLogger(__name__)

TICK_SECONDS = 0.1
# Falling further behind than this is not caught up: the rate is a ceiling, not a debt.
MAX_LAG_SECONDS = 2.0
CRM_API = "/api/data/v9.2"


@dataclass(frozen=True)
class Action:
    channel: str  # sql | api | crm
    operation: Operation
    object: str
    bad: bool = False


# (channel, operation, object) -> weight. Local writes dominate, as in a marketing DB.
WEIGHTS: dict[tuple[str, Operation, str], float] = {
    ("sql", Operation.INSERT, "lead"): 22,
    ("sql", Operation.UPDATE, "lead"): 22,
    ("sql", Operation.INSERT, "contact"): 8,
    ("sql", Operation.UPDATE, "contact"): 10,
    ("sql", Operation.DELETE, "lead"): 1,
    ("api", Operation.INSERT, "lead"): 6,
    ("api", Operation.UPDATE, "lead"): 5,
    ("api", Operation.INSERT, "contact"): 4,
    ("crm", Operation.INSERT, "lead"): 8,
    ("crm", Operation.UPDATE, "lead"): 6,
    ("crm", Operation.INSERT, "contact"): 4,
    ("crm", Operation.INSERT, "account"): 2,
    ("crm", Operation.INSERT, "opportunity"): 2,
}


@dataclass
class TrafficConfig:
    rate: float = 5.0  # changes per second
    bad_share: float = 0.08  # of local inserts and updates
    crm_share: float | None = None  # None: as WEIGHTS says; 0 turns Dynamics writes off
    burst_every_s: float | None = 90.0
    first_burst_s: float = 8.0
    burst_size: tuple[int, int] = (300, 1500)
    seed: int | None = None


def weights(config: TrafficConfig) -> dict[tuple[str, Operation, str], float]:
    if config.crm_share is None:
        return dict(WEIGHTS)
    local = {k: w for k, w in WEIGHTS.items() if k[0] != "crm"}
    crm = {k: w for k, w in WEIGHTS.items() if k[0] == "crm"}
    if config.crm_share <= 0:
        return local
    scale_local = (1 - config.crm_share) / sum(local.values())
    scale_crm = config.crm_share / sum(crm.values())
    return {
        **{k: w * scale_local for k, w in local.items()},
        **{k: w * scale_crm for k, w in crm.items()},
    }


def plan(
    rng: random.Random, table: dict[tuple[str, Operation, str], float], bad_share: float
) -> Action:
    """The next change to make (pure but for the seeded ``rng``)."""
    keys = list(table)
    channel, operation, obj = rng.choices(keys, weights=[table[k] for k in keys])[0]
    bad = channel != "crm" and operation != Operation.DELETE and rng.random() < bad_share
    return Action(channel, operation, obj, bad)


def due(elapsed: float, rate: float, done: int) -> tuple[int, int]:
    """(changes to make now, changes to write off) to stay at ``rate`` after ``elapsed`` s."""
    owed = int(elapsed * rate) - done
    behind = owed - int(MAX_LAG_SECONDS * rate)
    if behind > 0:
        return owed - behind, behind
    return max(0, owed), 0


@dataclass
class CrmUser:
    """An application user of the (emulated) Dynamics, writing through the Web API."""

    base_url: str
    tenant: str
    client_id: str
    client_secret: str
    http: httpx.AsyncClient
    token: str | None = None
    created: dict[str, deque[str]] = field(
        default_factory=lambda: {s: deque(maxlen=2000) for s in ("leads", "contacts", "accounts")}
    )
    emails: deque[str] = field(default_factory=lambda: deque(maxlen=2000))

    async def _token(self) -> str:
        if self.token is None:
            resp = await self.http.post(
                f"{self.base_url}/{self.tenant}/oauth2/v2.0/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": self.client_id,
                    "client_secret": self.client_secret,
                    "scope": f"{self.base_url}/.default",
                },
            )
            resp.raise_for_status()
            self.token = str(resp.json()["access_token"])
        return self.token

    async def call(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> httpx.Response:
        headers = {
            "Authorization": f"Bearer {await self._token()}",
            "OData-Version": "4.0",
            "Accept": "application/json",
        }
        if method == "POST":
            headers["Prefer"] = "return=representation"
        if method == "PATCH":
            headers["If-Match"] = "*"  # update only: never re-create a deleted record
        resp = await self.http.request(
            method, f"{self.base_url}{CRM_API}/{path}", json=body, headers=headers
        )
        if resp.status_code == 401:
            self.token = None
        return resp


LOCAL_TABLES = ("lead", "contact", "account")


def _check_table(table: str) -> None:
    # Table and column names in the SQL below come from this module's own constants,
    # never from input; the check keeps it that way.
    if table not in LOCAL_TABLES:
        raise ValueError(f"not a demo table: {table!r}")


class Traffic:
    def __init__(
        self,
        engine: Engine,
        api: httpx.AsyncClient | None,
        crm: CrmUser | None,
        config: TrafficConfig,
        *,
        tag: str = "",
    ) -> None:
        self.engine = engine
        self.api = api
        self.crm = crm
        self.config = config
        self.rng = random.Random(config.seed)
        self.people = People(self.rng, tag or f"{self.rng.randrange(36**4):x}")
        self.table = weights(config)
        if api is None or crm is None:
            self.table = {
                k: w
                for k, w in self.table.items()
                if (k[0] != "api" or api) and (k[0] != "crm" or crm)
            }
        self.stats: Counter[str] = Counter()
        self.last_failure: str | None = None
        self.stopping = asyncio.Event()

    def stop(self) -> None:
        self.stopping.set()

    # -- the loop -------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        done = 0
        cfg = self.config
        next_burst = start + cfg.first_burst_s if cfg.burst_every_s else None
        while not self.stopping.is_set():
            now = loop.time()
            n, skipped = due(now - start, cfg.rate, done)
            done += n + skipped
            self.stats["skipped"] += skipped
            if n:
                await self.step([plan(self.rng, self.table, cfg.bad_share) for _ in range(n)])
            if next_burst is not None and cfg.burst_every_s and now >= next_burst:
                await self.burst(self.rng.randint(*cfg.burst_size))
                next_burst = now + cfg.burst_every_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=TICK_SECONDS)

    async def step(self, actions: Sequence[Action]) -> None:
        sql = [a for a in actions if a.channel == "sql"]
        calls = [self._http(a) for a in actions if a.channel != "sql"]
        if sql:
            calls.append(asyncio.to_thread(self._sql, sql))
        await asyncio.gather(*calls)

    async def burst(self, size: int) -> None:
        """A list import: ``size`` leads in one transaction, a few of them bad."""
        people = [
            self.people.bad_person()
            if self.rng.random() < self.config.bad_share
            else self.people.person()
            for _ in range(size)
        ]
        try:
            await asyncio.to_thread(self._insert_many, people)
        except sa.exc.SQLAlchemyError as exc:
            self._failed("sql", exc)
            return
        self.stats["burst"] += 1
        self.stats["sql_insert_lead"] += size

    # -- local writers ----------------------------------------------------------------

    def _person(self, action: Action) -> Person:
        if not action.bad:
            return self.people.person()
        emails = self.crm.emails if self.crm is not None else ()
        if emails and action.operation == Operation.INSERT and self.rng.random() < 0.25:
            # The same person entered on both sides: Dynamics' duplicate detection
            # refuses the second create (0x80040333).
            p = self.people.person()
            return Person(
                self.rng.choice(emails), p.first_name, p.last_name, p.company, "crm_duplicate"
            )
        return self.people.bad_person()

    def _sql(self, actions: Sequence[Action]) -> None:
        for action in actions:
            try:
                with write_transaction(self.engine) as conn:
                    hit = self._sql_one(conn, action)
            except sa.exc.SQLAlchemyError as exc:
                self._failed("sql", exc)
                continue
            self._count(action, hit)

    def _sql_one(self, conn: Connection, action: Action) -> bool:
        table = action.object
        if action.operation == Operation.INSERT:
            person = self._person(action)
            if table == "lead":
                conn.execute(
                    sa.text(
                        "INSERT INTO lead (email, first_name, last_name, company) "
                        "VALUES (:email, :first_name, :last_name, :company)"
                    ),
                    person.lead(),
                )
            else:
                conn.execute(
                    sa.text(
                        "INSERT INTO contact (email, first_name, last_name, account_id) "
                        "VALUES (:email, :first_name, :last_name, :account_id)"
                    ),
                    {**person.contact(), "account_id": self._some_id(conn, "account")},
                )
            return True
        record_id = self._some_id(conn, table)
        if record_id is None:
            return False
        _check_table(table)
        if action.operation == Operation.DELETE:
            delete = sa.text(f"DELETE FROM {table} WHERE id = :id")  # noqa: S608
            return bool(conn.execute(delete, {"id": record_id}).rowcount)
        person = self._person(action)
        column, value = self._changed_field(table, person)
        result = conn.execute(
            sa.text(f"UPDATE {table} SET {column} = :v WHERE id = :id"),  # noqa: S608
            {"v": value, "id": record_id},
        )
        return bool(result.rowcount)

    def _changed_field(self, table: str, person: Person) -> tuple[str, str | None]:
        if person.bad in ("long_company",) and table == "lead":
            return "company", person.company
        if person.bad in ("long_last_name",):
            return "last_name", person.last_name
        if person.bad is not None:
            return "email", person.email
        if table == "lead":
            return self.rng.choice((("company", person.company), ("last_name", person.last_name)))
        return "last_name", person.last_name

    def _some_id(self, conn: Connection, table: str) -> int | None:
        """A random existing id of ``table`` (the first at or after a random point)."""
        _check_table(table)
        top = conn.execute(sa.text(f"SELECT max(id) FROM {table}")).scalar()  # noqa: S608
        if not top:
            return None
        start = self.rng.randint(1, int(top))
        found = conn.execute(
            sa.text(f"SELECT id FROM {table} WHERE id >= :s ORDER BY id LIMIT 1"),  # noqa: S608
            {"s": start},
        ).scalar()
        return int(found) if found is not None else None

    def _insert_many(self, people: Sequence[Person]) -> None:
        with write_transaction(self.engine) as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO lead (email, first_name, last_name, company) "
                    "VALUES (:email, :first_name, :last_name, :company)"
                ),
                [p.lead() for p in people],
            )

    # -- HTTP writers -----------------------------------------------------------------

    async def _http(self, action: Action) -> None:
        try:
            if action.channel == "api":
                hit = await self._api(action)
            else:
                hit = await self._crm(action)
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            self._failed(action.channel, exc)
            return
        self._count(action, hit)

    async def _api(self, action: Action) -> bool:
        assert self.api is not None
        person = self._person(action)
        if action.operation == Operation.INSERT:
            body = person.lead() if action.object == "lead" else person.contact()
            resp = await self.api.post(f"/api/v1/records/{action.object}", json=body)
            return self._ok(resp, "api")
        record_id = await asyncio.to_thread(self._random_id, action.object)
        if record_id is None:
            return False
        column, value = self._changed_field(action.object, person)
        resp = await self.api.patch(
            f"/api/v1/records/{action.object}/{record_id}", json={column: value}
        )
        return resp.status_code != 404 and self._ok(resp, "api")

    def _random_id(self, table: str) -> int | None:
        with self.engine.connect() as conn:
            return self._some_id(conn, table)

    async def _crm(self, action: Action) -> bool:
        crm = self.crm
        assert crm is not None
        person = self.people.person()
        if action.operation == Operation.UPDATE:
            ids = crm.created["leads"]
            if not ids:
                return False
            key = self.rng.choice(ids)
            resp = await crm.call("PATCH", f"leads({key})", {"companyname": self.people.company()})
            return self._ok(resp, "crm")
        if action.object == "account":
            body: dict[str, Any] = {"name": self.people.company()}
        elif action.object == "opportunity":
            kind = self.rng.choice(("renewal", "upsell", "pilot"))
            body = {"name": f"{self.people.company()}: {kind}"}
            if crm.created["accounts"]:
                body["parentaccountid@odata.bind"] = (
                    f"/accounts({self.rng.choice(crm.created['accounts'])})"
                )
        elif action.object == "contact":
            body = {
                "emailaddress1": person.email,
                "firstname": person.first_name,
                "lastname": person.last_name,
            }
        else:
            body = {
                "emailaddress1": person.email,
                "firstname": person.first_name,
                "lastname": person.last_name,
                "companyname": person.company,
            }
        entity_set = {
            "lead": "leads",
            "contact": "contacts",
            "account": "accounts",
            "opportunity": "opportunities",
        }[action.object]
        resp = await crm.call("POST", entity_set, body)
        if not self._ok(resp, "crm"):
            return False
        row = resp.json()
        key = row.get(f"{action.object}id")
        if key and entity_set in crm.created:
            crm.created[entity_set].append(str(key))
        if person.email and action.object in ("lead", "contact"):
            crm.emails.append(person.email)
        return True

    def _ok(self, resp: httpx.Response, channel: str) -> bool:
        if resp.is_success:
            return True
        self.stats[f"{channel}_http_{resp.status_code}"] += 1
        return False

    # -- bookkeeping ------------------------------------------------------------------

    def _count(self, action: Action, hit: bool) -> None:
        name = f"{action.channel}_{action.operation}_{action.object}"
        self.stats[name if hit else f"{name}_missed"] += 1
        if hit and action.bad:
            self.stats["bad"] += 1

    def _failed(self, channel: str, exc: Exception) -> None:
        self.stats[f"{channel}_failed"] += 1
        self.last_failure = f"{type(exc).__name__}: {exc}"[:300]
        log.debug(
            "generator write failed",
            extra={"event": "demo.write_failed", "channel": channel, "error": str(exc)},
        )

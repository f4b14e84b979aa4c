"""Realistic traffic on both sides of the sync, at a steady rate with occasional bursts.

Three kinds of writer, as in a real deployment:
- ``sql``: another program writing the local tables with plain SQL over its own
  connection (change capture must see it like any other write);
- ``api``: an application using crmsync's records API with the bearer token;
- ``crm``: people in Dynamics, a separate application user of the emulator writing
  through its Web API, never touching records crmsync created (so that what crmsync
  sent can be checked afterwards).

Each also writes the demo mapping's custom parts when the mapping has them (``Custom``).
``plan`` (pure, seeded) draws what to do next; the writers carry it out. A "list import"
now and then inserts a few hundred leads at once, so the backlog rises and drains. A
failed write (a 429, a record deleted meanwhile) is counted and skipped: the generator
stands for people, who do not retry on the sync's behalf.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from crmsync.demo.people import People, Person, Registration, registration
from crmsync.domain import ObjectSpec
from crmsync.mapping.convert import to_dataverse
from crmsync.store.db import write_transaction
from crmsync.store.types import ExactDecimal, UTCDateTime, utcnow

log = logging.getLogger(__name__)

TICK_SECONDS = 0.1
# Falling further behind than this is not caught up: the rate is a ceiling, not a debt.
MAX_LAG_SECONDS = 2.0
CRM_API = "/api/data/v9.2"


@dataclass(frozen=True)
class Action:
    channel: str  # sql | api | crm
    operation: str  # insert | update | delete
    object: str
    bad: bool = False


# (channel, operation, object) -> weight. Local writes dominate, as in a marketing DB.
WEIGHTS: dict[tuple[str, str, str], float] = {
    ("sql", "insert", "lead"): 22,
    ("sql", "update", "lead"): 22,
    ("sql", "insert", "contact"): 8,
    ("sql", "update", "contact"): 10,
    ("sql", "delete", "lead"): 1,
    ("api", "insert", "lead"): 6,
    ("api", "update", "lead"): 5,
    ("api", "insert", "contact"): 4,
    ("crm", "insert", "lead"): 8,
    ("crm", "update", "lead"): 6,
    ("crm", "insert", "contact"): 4,
    ("crm", "insert", "account"): 2,
    ("crm", "insert", "opportunity"): 2,
    # The demo mapping's custom table.
    ("sql", "insert", "event_registration"): 6,
    ("sql", "update", "event_registration"): 4,
    ("api", "insert", "event_registration"): 2,
    ("crm", "insert", "event_registration"): 2,
    ("crm", "update", "event_registration"): 1,
}
# The custom object and field the generator writes, and the columns it writes them with.
EVENT_REGISTRATION = "event_registration"
EVENT_COLUMNS = frozenset({"name", "attended", "registered", "fee", "contact_id"})
LEAD_SCORE = "lead_score"
# Longer than a few of the demo's polls (CRMSYNC_POLL_SECONDS, 5 s by default).
SETTLED_SECONDS = 30.0


@dataclass(frozen=True)
class Custom:
    """Which of the demo mapping's custom parts the mapping in force has: a lead's
    ``lead_score``, and event registrations linked to contacts, written on every channel.
    A user's mapping without them (or with another shape of them) gets neither."""

    event_registration: bool = False
    lead_score: bool = False

    @classmethod
    def of(cls, specs: Mapping[str, ObjectSpec]) -> Custom:
        events = specs.get(EVENT_REGISTRATION)
        lead = specs.get("lead")
        return cls(
            event_registration=events is not None
            and events.table == EVENT_REGISTRATION
            and set(events.field_specs) >= EVENT_COLUMNS
            and {lk.target for lk in events.lookups} == {"contact"},
            lead_score=lead is not None and LEAD_SCORE in lead.field_specs,
        )


@dataclass
class TrafficConfig:
    rate: float = 5.0  # changes per second
    bad_share: float = 0.08  # of local inserts and updates
    crm_share: float | None = None  # None: as WEIGHTS says; 0 turns Dynamics writes off
    burst_every_s: float | None = 90.0
    first_burst_s: float = 8.0
    burst_size: tuple[int, int] = (300, 1500)
    seed: int | None = None


def weights(config: TrafficConfig) -> dict[tuple[str, str, str], float]:
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


def plan(rng: random.Random, table: dict[tuple[str, str, str], float], bad_share: float) -> Action:
    """The next change to make (pure but for the seeded ``rng``)."""
    keys = list(table)
    channel, operation, obj = rng.choices(keys, weights=[table[k] for k in keys])[0]
    bad = channel != "crm" and operation != "delete" and rng.random() < bad_share
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
    # (when, Dynamics id) of the records this user created, by object.
    created: dict[str, deque[tuple[float, str]]] = field(
        default_factory=lambda: {
            o: deque(maxlen=2000) for o in ("lead", "contact", "account", EVENT_REGISTRATION)
        }
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

    def made(self, obj: str, key: str) -> None:
        if obj in self.created:
            self.created[obj].append((time.monotonic(), key))

    def pick(self, rng: random.Random, obj: str, older_than: float = 0.0) -> str | None:
        """A record of ``obj`` this user created at least ``older_than`` seconds ago."""
        cutoff = time.monotonic() - older_than
        keys = [key for at, key in self.created[obj] if at <= cutoff]
        return rng.choice(keys) if keys else None


LOCAL_TABLES = ("lead", "contact", "account", EVENT_REGISTRATION)
# Typed so that the same statement writes what the column holds on SQLite and PostgreSQL.
_REGISTRATION_TYPES = (
    sa.bindparam("registered", type_=UTCDateTime()),
    sa.bindparam("fee", type_=ExactDecimal(2)),
)


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
        specs: Mapping[str, ObjectSpec],
        tag: str = "",
    ) -> None:
        self.engine = engine
        self.api = api
        self.crm = crm
        self.config = config
        self.specs = dict(specs)
        self.custom = Custom.of(specs)
        self.rng = random.Random(config.seed)
        self.people = People(self.rng, tag or f"{self.rng.randrange(36**4):x}")
        self.table = {
            k: w
            for k, w in weights(config).items()
            if (k[0] != "api" or api)
            and (k[0] != "crm" or crm)
            and k[2] in specs
            and (k[2] != EVENT_REGISTRATION or self.custom.event_registration)
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
        if emails and action.operation == "insert" and self.rng.random() < 0.25:
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
        if table == EVENT_REGISTRATION:
            return self._sql_registration(conn, action)
        if action.operation == "insert":
            person = self._person(action)
            if table == "lead":
                conn.execute(sa.text(self._lead_insert()), self._lead_row(person))
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
        if action.operation == "delete":
            delete = sa.text(f"DELETE FROM {table} WHERE id = :id")  # noqa: S608
            return bool(conn.execute(delete, {"id": record_id}).rowcount)
        person = self._person(action)
        column, value = self._changed_field(table, person)
        result = conn.execute(
            sa.text(f"UPDATE {table} SET {column} = :v WHERE id = :id"),  # noqa: S608
            {"v": value, "id": record_id},
        )
        return bool(result.rowcount)

    def _sql_registration(self, conn: Connection, action: Action) -> bool:
        if action.operation == "insert":
            contact_id, person = self._contact(conn)
            reg = registration(self.rng, person, utcnow(), bad=action.bad)
            conn.execute(
                sa.text(
                    "INSERT INTO event_registration (name, attended, registered, fee, contact_id)"
                    " VALUES (:name, :attended, :registered, :fee, :contact_id)"
                ).bindparams(*_REGISTRATION_TYPES),
                {**reg.row(), "contact_id": contact_id},
            )
            return True
        record_id = self._some_id(conn, EVENT_REGISTRATION)
        if record_id is None:
            return False
        column, value = self._registration_change(action)
        update = sa.text(
            f"UPDATE event_registration SET {column} = :v WHERE id = :id"  # noqa: S608
        )
        if column == "fee":
            update = update.bindparams(sa.bindparam("v", type_=ExactDecimal(2)))
        return bool(conn.execute(update, {"v": value, "id": record_id}).rowcount)

    def _registration_change(self, action: Action) -> tuple[str, Any]:
        if action.bad:
            return "name", registration(self.rng, self.people.person(), utcnow(), bad=True).name
        if self.rng.random() < 0.6:
            return "attended", True  # checked in at the door
        return "fee", registration(self.rng, self.people.person(), utcnow()).fee

    def _contact(self, conn: Connection) -> tuple[int | None, Person]:
        """A random contact already in Dynamics (its id and name) to register: a
        registration form offers the CRM's contacts. A new person when there is none."""
        top = conn.execute(sa.text("SELECT max(id) FROM contact")).scalar()
        pick = sa.text(
            "SELECT id, email, first_name, last_name FROM contact "
            "WHERE crm_id IS NOT NULL AND id >= :s ORDER BY id LIMIT 1"
        )
        row = None
        if top:
            row = conn.execute(pick, {"s": self.rng.randint(1, int(top))}).one_or_none()
            row = row or conn.execute(pick, {"s": 0}).one_or_none()
        if row is None or not (row.first_name and row.last_name):
            return (None if row is None else int(row.id)), self.people.person()
        return int(row.id), Person(row.email, row.first_name, row.last_name, "")

    def _lead_insert(self) -> str:
        if self.custom.lead_score:
            return (
                "INSERT INTO lead (email, first_name, last_name, company, lead_score) "
                "VALUES (:email, :first_name, :last_name, :company, :lead_score)"
            )
        return (
            "INSERT INTO lead (email, first_name, last_name, company) "
            "VALUES (:email, :first_name, :last_name, :company)"
        )

    def _lead_row(self, person: Person) -> dict[str, Any]:
        row: dict[str, Any] = dict(person.lead())
        if self.custom.lead_score:
            row[LEAD_SCORE] = self.rng.randint(0, 100)
        return row

    def _changed_field(self, table: str, person: Person) -> tuple[str, Any]:
        if person.bad in ("long_company",) and table == "lead":
            return "company", person.company
        if person.bad in ("long_last_name",):
            return "last_name", person.last_name
        if person.bad is not None:
            return "email", person.email
        if table == "lead":
            changes: list[tuple[str, Any]] = [
                ("company", person.company),
                ("last_name", person.last_name),
            ]
            if self.custom.lead_score:
                changes.append((LEAD_SCORE, self.rng.randint(0, 100)))
            return self.rng.choice(changes)
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
            conn.execute(sa.text(self._lead_insert()), [self._lead_row(p) for p in people])

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
        if action.object == EVENT_REGISTRATION:
            return await self._api_registration(action)
        person = self._person(action)
        if action.operation == "insert":
            body = self._lead_row(person) if action.object == "lead" else person.contact()
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

    async def _api_registration(self, action: Action) -> bool:
        assert self.api is not None
        contact_id, person = await asyncio.to_thread(self._random_contact)
        reg = registration(self.rng, person, utcnow(), bad=action.bad)
        body = {**_json(reg), "contact_id": contact_id}
        resp = await self.api.post(f"/api/v1/records/{EVENT_REGISTRATION}", json=body)
        return self._ok(resp, "api")

    def _random_id(self, table: str) -> int | None:
        with self.engine.connect() as conn:
            return self._some_id(conn, table)

    def _random_contact(self) -> tuple[int | None, Person]:
        with self.engine.connect() as conn:
            return self._contact(conn)

    async def _crm(self, action: Action) -> bool:
        crm = self.crm
        assert crm is not None
        spec = self.specs[action.object]
        if action.operation == "update":
            return await self._crm_update(crm, action.object)
        person = self.people.person()
        body = self._crm_body(crm, action.object, person)
        resp = await crm.call("POST", spec.entity_set, body)
        if not self._ok(resp, "crm"):
            return False
        key = resp.json().get(spec.primary_key)
        if key:
            crm.made(action.object, str(key))
        if person.email and action.object in ("lead", "contact"):
            crm.emails.append(person.email)
        return True

    def _crm_body(self, crm: CrmUser, obj: str, person: Person) -> dict[str, Any]:
        if obj == "account":
            return {"name": self.people.company()}
        if obj == "opportunity":
            kind = self.rng.choice(("renewal", "upsell", "pilot"))
            body: dict[str, Any] = {"name": f"{self.people.company()}: {kind}"}
            account = crm.pick(self.rng, "account")
            if account is not None:
                body["parentaccountid@odata.bind"] = f"/accounts({account})"
            return body
        if obj == EVENT_REGISTRATION:
            return self._crm_registration(crm, person)
        body = {
            "emailaddress1": person.email,
            "firstname": person.first_name,
            "lastname": person.last_name,
        }
        if obj == "lead":
            body["companyname"] = person.company
            if self.custom.lead_score:
                body[self._attribute("lead", LEAD_SCORE)] = self.rng.randint(0, 100)
        return body

    def _crm_registration(self, crm: CrmUser, person: Person) -> dict[str, Any]:
        spec = self.specs[EVENT_REGISTRATION]
        reg = registration(self.rng, person, utcnow())
        body = {
            spec.field_specs[column].attribute: to_dataverse(spec.field_specs[column], value)
            for column, value in reg.row().items()
        }
        # Registered to a contact this user made, a while ago: crmsync pulls objects one
        # after another, and a registration seen before its brand-new contact would be
        # parked (crmsync.missing_parent) rather than wait for it.
        lookup = next(lk for lk in spec.lookups if lk.target == "contact")
        key = crm.pick(self.rng, "contact", older_than=SETTLED_SECONDS)
        if key is not None:
            contacts = self.specs["contact"].entity_set
            body[f"{lookup.navigation}@odata.bind"] = f"/{contacts}({key})"
        return body

    async def _crm_update(self, crm: CrmUser, obj: str) -> bool:
        key = crm.pick(self.rng, obj)
        if key is None:
            return False
        if obj == EVENT_REGISTRATION:
            body: dict[str, Any] = {self._attribute(obj, "attended"): True}
        elif self.custom.lead_score and self.rng.random() < 0.3:
            body = {self._attribute(obj, LEAD_SCORE): self.rng.randint(0, 100)}
        else:
            body = {"companyname": self.people.company()}
        resp = await crm.call("PATCH", f"{self.specs[obj].entity_set}({key})", body)
        return self._ok(resp, "crm")

    def _attribute(self, obj: str, column: str) -> str:
        return self.specs[obj].field_specs[column].attribute

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


def _json(reg: Registration) -> dict[str, Any]:
    """A registration as the records API takes it (JSON: text for the exact decimal)."""
    registered: datetime = reg.registered
    return {
        "name": reg.name,
        "attended": reg.attended,
        "registered": registered.isoformat(),
        "fee": str(reg.fee),
    }

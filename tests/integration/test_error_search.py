"""The Sync Errors search through SQLite's trigram index (migration 0004) finds exactly
what a scan of the table finds: for any text, with the other filters, through inserts,
updates and deletes, while paging, and after an upgrade from a database with errors.

Each test compares the search (``sync_errors``, as the API, console and CLI run it) with
``error_search.scan`` (the predicate on every row, as before the index). On PostgreSQL
the same tests run over ``ILIKE`` and the ``pg_trgm`` indexes, where both are the same.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from alembic import command
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine
from typer.testing import CliRunner

from crmsync.cli import app
from crmsync.config import load_settings
from crmsync.domain import STANDARD_OBJECTS
from crmsync.store import error_search, migrate, queue, sync_errors
from crmsync.store.db import create_store_engine, write_transaction
from crmsync.store.schema import ERROR_FTS, sync_error, sync_queue
from crmsync.store.sync_errors import conditions, make_filters
from crmsync.web.app import create_app

TOKEN = "search-token"
T0 = datetime.fromisoformat("2026-11-25T08:00:00+00:00")


def row(n: int, message: str, label: str | None = None, **extra: Any) -> dict[str, Any]:
    """Error ``n``: failed ``n`` minutes after T0 (so newest first is highest ``n``)."""
    return {
        "object": "lead",
        "direction": "to_crm",
        "record_key": f"k{n}",
        "record_id": None,
        "crm_id": None,
        "record_label": label,
        "operation": "update",
        "error_code": "E1",
        "error_message": message,
        "first_failed_at": T0,
        "last_failed_at": T0 + timedelta(minutes=n),
        "attempts": 1,
        "status": "open",
        **extra,
    }


def insert(engine: Engine, rows: list[dict[str, Any]]) -> list[int]:
    with engine.begin() as conn:
        return [
            conn.execute(sa.insert(sync_error).values(**r)).inserted_primary_key[0] for r in rows
        ]


def found(conn: Connection, q: str, **given: Any) -> list[int]:
    """Ids the search returns (every page), newest first; checks ``total`` on the way."""
    filters = make_filters(STANDARD_OBJECTS, q=q, **given)
    ids: list[int] = []
    cursor = None
    while True:
        page = sync_errors.list_errors(conn, filters, limit=3, cursor=cursor)
        ids += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            assert page["total"] == len(ids)
            return ids


def scanned(conn: Connection, q: str, **given: Any) -> list[int]:
    """Ids a scan returns: the same filters, the search as a predicate on every row."""
    others = conditions(make_filters(STANDARD_OBJECTS, **given), conn.dialect.name)
    e = sync_error.c
    query = (
        sa.select(e.id)
        .where(*others, error_search.scan(q, conn.dialect.name))
        .order_by(e.last_failed_at.desc(), e.id.desc())
    )
    return list(conn.execute(query).scalars())


def check_index(conn: Connection) -> None:
    """FTS5 compares every row of ``sync_error`` with the index and raises on a difference
    (sqlite.org/fts5.html#the_integrity_check_command, rank 1: against the content)."""
    if conn.dialect.name == "sqlite":
        conn.execute(
            sa.text(f"INSERT INTO {ERROR_FTS} ({ERROR_FTS}, rank) VALUES ('integrity-check', 1)")
        )


def same(engine: Engine, q: str, **given: Any) -> list[int]:
    with engine.connect() as conn:
        ids = found(conn, q, **given)
        assert ids == scanned(conn, q, **given), q
        return ids


# -- hostile and odd input ------------------------------------------------------------------

HOSTILE_ROWS = [
    row(1, 'He said "hello" to NEAR(a b) AND OR NOT'),
    row(2, "prefix* ^start col:value -minus {error_message}: x"),
    row(3, "emoji 😀 here, 👍🏽 there", label="Zoë 😀"),
    row(4, "combining cafe\u0301 (e + U+0301)"),
    row(5, "precomposed CAFÉ", label="Élodie@Example.com"),
    row(6, "100% done, under_score, back\\slash", error_code="local_constraint"),
    row(7, "Robert'); DROP TABLE sync_error;--", record_id=424242, crm_id="abcd-EF01"),
]


@pytest.fixture
async def client(db_url: str, engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    insert(engine, HOSTILE_ROWS)
    app = create_app(load_settings(database_url=db_url, api_token=TOKEN), engine=engine)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://test",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as c:
        yield c


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ('"', [1]),
        ('""', []),
        ('"hello"', [1]),
        ('hello" OR "x', []),
        ("NEAR(", [1]),
        ("NEAR(a b)", [1]),
        ("AND", [1]),
        ("OR NOT", [1]),
        ("*", [2]),
        ("prefix*", [2]),
        ("^start", [2]),
        ("col:value", [2]),
        ("error_message:", []),  # the row has "{error_message}:"
        ("{error_message}: x", [2]),
        ("-minus", [2]),
        ("-", [7, 2]),
        ("😀", [3]),
        ("emoji 😀", [3]),
        ("👍🏽", [3]),
        ("🏽", [3]),  # the skin-tone modifier alone
        ("ë 😀", [3]),
        ("e\u0301", [4]),
        ("CAFE\u0301", [4]),  # ASCII letters fold, the combining mark is itself
        ("\u0301 (", [4]),
        ("café", []),  # precomposed é: CAFÉ differs by a non-ASCII letter (SQLite)
        ("CAFÉ", [5]),
        ("élodie@", []),  # SQLite folds ASCII only; PostgreSQL's ILIKE folds É too
        ("Élodie@EXAMPLE", [5]),
        ("100%", [6]),
        ("%", [6]),
        ("_", [7, 6, 2]),
        ("r_s", [6]),
        ("x%y", []),
        ("\\", [6]),
        ("k\\s", [6]),
        ("'); DROP TABLE sync_error;--", [7]),
        ("' OR '1'='1", []),
        ("4242", [7]),
        ("abcd-ef", [7]),
        ("LOCAL_CONSTRAINT", [6]),
        ("\u202e", []),
        ("\ufeff\ufeff\ufeff", []),
    ],
)
async def test_hostile_and_odd_input(client, engine, q, expected):
    response = await client.get("/api/v1/sync/errors", params={"q": q, "limit": 1000})
    assert response.status_code == 200, response.text
    ids = [item["id"] for item in response.json()["items"]]
    postgres_folds = engine.dialect.name == "postgresql" and q in ("café", "élodie@")
    if not postgres_folds:
        assert ids == expected
    assert ids == same(engine, q)
    with engine.connect() as conn:
        check_index(conn)
        assert conn.execute(sa.select(sa.func.count()).select_from(sync_error)).scalar() == 7


async def test_refused_input_is_422_everywhere(client):
    response = await client.get("/api/v1/sync/errors", params={"q": "a\x00bc"})
    assert response.status_code == 422, response.text
    # A JSON body can carry a lone surrogate that a query string cannot.
    for url in ("/api/v1/sync/errors/retry", "/api/v1/sync/errors/dismiss"):
        response = await client.post(
            url, content=b'{"q": "ab\\ud800c"}', headers={"content-type": "application/json"}
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] == "q"


def test_long_text_asks_the_index_for_some_of_its_trigrams(engine: Engine):
    words = " ".join(f"word{i}" for i in range(120))
    insert(engine, [row(1, words), row(2, words.replace("word3 ", "WORD3! "))])
    assert len(error_search.fts_query(words[40:700]).split(" AND ")) <= 33
    assert same(engine, words[40:700].upper()) == [2, 1]
    assert same(engine, words[:400]) == [1]
    assert same(engine, words[:-1] + "!") == []
    assert same(engine, "x" * 1000) == []


def test_text_after_a_nul_is_not_searched_either_way(sqlite_engine: Engine):
    """SQLite's LIKE and the trigram tokenizer both stop at a NUL in stored text."""
    insert(sqlite_engine, [row(1, "before\x00after"), row(2, "after")])
    assert same(sqlite_engine, "before") == [1]
    assert same(sqlite_engine, "after") == [2]


# -- the same rows as a scan, for any text (property) ------------------------------------------

# Letters whose case folding differs between ASCII-only LIKE, Unicode folding and
# Python's str.upper/lower, marks, invisible and reserved characters, FTS5 and LIKE syntax.
ODD = [
    *"aAbBzZ \u00e9\u00c9\u00e8\u00df\u1e9e\u0130\u0131iIKk\u212a\u0301\u0300",
    *"\u200b\u202e\ufeff\uffff\ufffe\ufffd\x00\U0001f600\U0001f44d\U0001f3fd",
    *"\"'%_\\*:^-(){}",
    *("NEAR", "AND", "OR", "NOT", "error_message:"),
]
odd = st.sampled_from(ODD)
text = st.lists(
    st.one_of(odd, odd, odd, st.characters(codec="utf-8", exclude_categories=["Cs"])), max_size=12
).map("".join)


@st.composite
def search_case(draw: st.DrawFn) -> tuple[list[tuple[str, str | None, str]], str, dict[str, Any]]:
    rows = draw(
        st.lists(
            st.tuples(text, st.none() | text, st.sampled_from(["open", "resolved"])),
            min_size=1,
            max_size=8,
        )
    )
    sources = [t for message, label, _ in rows for t in (message, label) if t]
    if sources and draw(st.integers(0, 3)):  # mostly a piece of the stored text
        source = draw(st.sampled_from(sources))
        start = draw(st.integers(0, len(source)))
        q = source[start : draw(st.integers(start, len(source)))]
        q = draw(st.sampled_from([q, q.upper(), q.lower(), q.swapcase()]))
    else:
        q = draw(text)
    q = q.replace("\x00", "") or "x"  # the API refuses a NUL in q
    given = draw(st.sampled_from([{"status": "all"}, {}, {"status": "resolved"}]))
    return rows, q, given


@pytest.fixture
def sqlite_engine(tmp_path: Path, sqlite_template: Path) -> Iterator[Engine]:
    target = tmp_path / "store.db"
    target.write_bytes(sqlite_template.read_bytes())
    engine = create_store_engine(f"sqlite:///{target}")
    yield engine
    engine.dispose()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(search_case())
@example(([("\u00c9lodie", None, "open")], "\u00e9lodie", {}))  # LIKE folds ASCII only
@example(([("\u212aelvin", "K\u00e9lvin", "open")], "kelvin", {}))  # Kelvin sign folds to k
@example(([('ab"cd', None, "open")], '"cd', {}))
def test_index_finds_what_a_scan_finds(sqlite_engine, case):
    rows, q, given = case
    with sqlite_engine.begin() as conn:
        conn.execute(sa.delete(sync_error))  # the delete trigger empties the index
    insert(
        sqlite_engine,
        [row(n, message, label, status=status) for n, (message, label, status) in enumerate(rows)],
    )
    assert error_search.uses_index(q, "sqlite") == (len(q) >= 3)
    same(sqlite_engine, q, **given)
    with sqlite_engine.connect() as conn:
        check_index(conn)


# -- writes keep the index right --------------------------------------------------------------


def test_updates_and_deletes_keep_the_index_right(engine: Engine):
    ids = insert(
        engine,
        [row(1, "alpha failure"), row(2, "beta FAILURE"), row(3, "gamma", label="g@example.com")],
    )
    assert ids == [1, 2, 3]
    assert same(engine, "failure") == [2, 1]
    with engine.begin() as conn:
        e = sync_error.c
        conn.execute(sa.update(sync_error).where(e.id == 1).values(error_message="alpha fixed"))
        conn.execute(sa.update(sync_error).where(e.id == 3).values(record_label="Failure@x"))
    assert same(engine, "failure") == [3, 2]
    assert same(engine, "fixed") == [1]
    assert same(engine, "alpha") == [1]
    assert same(engine, "g@example") == []
    # Status changes leave the searched columns (and the index) alone.
    with engine.begin() as conn:
        conn.execute(sa.update(sync_error).where(sync_error.c.id == 2).values(status="resolved"))
    assert same(engine, "failure") == [3]
    assert same(engine, "failure", status="all") == [3, 2]
    assert same(engine, "failure", status="resolved") == [2]
    with engine.begin() as conn:
        e = sync_error.c
        conn.execute(
            sa.update(sync_error).where(e.id == 3).values(record_id=987654, crm_id="CRM-77")
        )
        conn.execute(sa.delete(sync_error).where(e.id == 2))
    assert same(engine, "87654") == [3]
    assert same(engine, "crm-77") == [3]
    assert same(engine, "failure", status="all") == [3]
    assert same(engine, "beta", status="all") == []
    if engine.dialect.name == "sqlite":  # a changed id moves its index entry
        with engine.begin() as conn:
            conn.execute(sa.update(sync_error).where(sync_error.c.id == 3).values(id=30))
        assert same(engine, "failure") == [30]
    with engine.connect() as conn:
        check_index(conn)


def test_parking_and_resolving_through_the_queue_keep_the_index_right(engine: Engine):
    """The engine's own writes: a park adds an error, a second failure rewrites its
    message (and the same message again changes nothing), a sync resolves it."""
    now = T0
    with engine.begin() as conn:
        conn.execute(
            sa.insert(sync_queue).values(
                object="lead",
                direction="to_crm",
                record_key="9",
                record_id=9,
                operation="insert",
                label="nine@example.com",
                state="pending",
                first_queued_at=now,
                last_changed_at=now,
                next_attempt_at=now,
            )
        )
    (entry,) = queue.claim(engine, "w", "to_crm", ["lead"], 10, timedelta(seconds=30), now)

    def fail(message: str) -> None:
        queue.record(engine, queue.Outcome(failed=[queue.Failed(entry, "0x1", message)]), now)

    fail("Duplicate record detected")
    assert same(engine, "duplicate") == same(engine, "NINE@") == [1]
    fail("Privilege missing")
    assert same(engine, "duplicate") == []
    assert same(engine, "privilege") == [1]
    fail("Privilege missing")
    assert same(engine, "privilege") == [1]
    queue.record(engine, queue.Outcome(done=[queue.Done(entry=entry, crm_id="c")]), now)
    assert same(engine, "privilege") == []
    assert same(engine, "privilege", status="resolved") == [1]
    with engine.connect() as conn:
        check_index(conn)


def test_paging_a_search_while_rows_are_added_and_changed(engine: Engine):
    base = [
        # Groups of three share a time: the id breaks the tie.
        {**row(i, f"Timeout #{i}"), "last_failed_at": T0 + timedelta(minutes=i // 3)}
        for i in range(25)
    ]
    noise = [row(100 + i, f"unrelated {i}") for i in range(10)]
    original = set(insert(engine, base))
    insert(engine, noise)
    filters = make_filters(STANDARD_OBJECTS, q="TIMEOUT #")
    seen: list[int] = []
    cursor = None
    added = 0
    while True:
        with engine.connect() as conn:
            page = sync_errors.list_errors(conn, filters, limit=7, cursor=cursor)
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        added += 1
        insert(
            engine,
            [
                row(200 + added, "timeout # newest"),  # lands before the cursor
                {**row(300 + added, "TIMEOUT # tie"), "last_failed_at": T0 + timedelta(minutes=8)},
                row(400 + added, "no match"),
            ],
        )
        with engine.begin() as conn:  # a paged row changes wording but still matches
            conn.execute(
                sa.update(sync_error)
                .where(sync_error.c.id == seen[0])
                .values(error_message=f"timeout #{added} again")
            )
    assert len(seen) == len(set(seen)) == 25
    assert set(seen) == original
    assert added == 3
    assert len(same(engine, "TIMEOUT #")) == 25 + 2 * added


# -- everything that takes the filter -------------------------------------------------------


def test_summary_export_retry_and_dismiss_take_the_same_rows(engine: Engine):
    insert(
        engine,
        [
            row(1, "Duplicate detected", object="contact", record_key="c1"),
            row(2, "duplicate DETECTED", error_code="0x2"),
            row(3, "Düplicate detected"),  # a non-ASCII letter in place of u
            row(4, "other"),
            row(5, "Duplicate detected", status="resolved"),
        ],
    )
    with engine.begin() as conn:
        conn.execute(
            sa.insert(sync_queue),
            [
                {
                    "object": obj,
                    "direction": "to_crm",
                    "record_key": key,
                    "operation": "update",
                    "state": "parked",
                    "first_queued_at": T0,
                    "last_changed_at": T0,
                    "next_attempt_at": T0,
                }
                for obj, key in (("contact", "c1"), ("lead", "k2"), ("lead", "k3"))
            ],
        )
    filters = make_filters(STANDARD_OBJECTS, q="DUPLICATE DETECTED")
    assert same(engine, "DUPLICATE DETECTED") == [2, 1]
    with engine.connect() as conn:
        summary = sync_errors.summary(conn, filters)
    assert summary["total"] == 2 and summary["by_code"] == {"E1": 1, "0x2": 1}
    exported = [item["id"] for item in sync_errors.stream_errors(engine, filters)]
    assert exported == [2, 1]
    csv_rows = "".join(sync_errors.export(engine, filters, "csv")).strip().split("\r\n")
    assert [line.split(",")[0] for line in csv_rows[1:]] == ["2", "1"]
    with engine.begin() as conn:
        assert sync_errors.retry_matching(conn, filters) == {"errors": 2, "requeued": 2}
        assert sync_errors.dismiss_matching(conn, filters) == {"errors": 2, "dismissed": 2}
    with engine.connect() as conn:
        states = dict(conn.execute(sa.select(sync_queue.c.record_key, sync_queue.c.state)).all())
        statuses = dict(conn.execute(sa.select(sync_error.c.id, sync_error.c.status)).all())
    assert states == {"c1": "pending", "k2": "pending", "k3": "parked"}
    assert statuses == {1: "dismissed", 2: "dismissed", 3: "open", 4: "open", 5: "resolved"}


def plans(engine: Engine, call: Callable[[Connection], object]) -> list[str]:
    """The query plan of every SELECT that ``call`` runs, as SQLite chose it, but for the
    two reads ``error_search.plan`` makes to choose (the highest id, the sampled share)."""
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        choosing = "max(sync_error.id)" in statement or " BETWEEN " in statement
        if statement.lstrip().upper().startswith("SELECT") and not choosing:
            statements.append((statement, parameters))

    with engine.connect() as conn:
        sa.event.listen(engine, "before_cursor_execute", capture)
        try:
            call(conn)
        finally:
            sa.event.remove(engine, "before_cursor_execute", capture)
        return [
            " / ".join(str(r[3]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {s}", p))
            for s, p in statements
        ]


@pytest.mark.parametrize(
    "given",
    [
        {},
        {"status": "all"},
        {"status": "resolved", "object": "lead", "code": "E1"},
        {"since": "2026-11-25T00:00:00Z"},
    ],
)
def test_sqlite_reads_the_index_then_the_candidates_by_id(sqlite_engine: Engine, given):
    """The plan, not only the rows: a search of 3+ characters reads the trigram index and
    fetches its candidates by id, whatever the other filters (not an index of those
    filters probing the candidates row by row, which grows with the table). A term in
    most errors scans."""
    insert(sqlite_engine, [row(n, f"timeout {n}" if n < 4 else f"other {n}") for n in range(40)])
    filters = make_filters(STANDARD_OBJECTS, q="timeout", **given)
    listed = plans(sqlite_engine, lambda conn: sync_errors.list_errors(conn, filters))
    summed = plans(sqlite_engine, lambda conn: sync_errors.summary(conn, filters))
    assert len(listed) == 2 and len(summed) == 1
    for plan in listed + summed:
        assert f"SCAN {ERROR_FTS} VIRTUAL TABLE" in plan, plan
        assert "SEARCH sync_error USING INTEGER PRIMARY KEY (rowid=?)" in plan, plan
    for q in ("ti", "ther "):  # too short for the index; in 36 of 40 errors
        other = make_filters(STANDARD_OBJECTS, q=q, **given)
        for plan in plans(sqlite_engine, lambda conn: sync_errors.list_errors(conn, other)):
            assert ERROR_FTS not in plan, plan


# -- upgrading a database that has errors ------------------------------------------------------


def test_upgrade_from_0003_indexes_existing_errors(db_url: str, engine: Engine):
    with write_transaction(engine) as conn:
        command.downgrade(migrate.alembic_config(conn), "0003")
    names = set(sa.inspect(engine).get_table_names())
    assert ERROR_FTS not in names
    insert(engine, [row(1, "Old failure before the index"), row(2, "another", label="OLD@x")])
    result = CliRunner().invoke(app, ["db", "upgrade"], env={"CRMSYNC_DATABASE_URL": db_url})
    assert result.exit_code == 0, result.output
    assert migrate.current_revision(engine) == migrate.head_revision()
    assert same(engine, "old ") == [1]
    assert same(engine, "OLD") == [2, 1]
    insert(engine, [row(3, "new and old")])
    assert same(engine, "old") == [3, 2, 1]
    with engine.connect() as conn:
        check_index(conn)


# -- the plan: index or scan, chosen by the index's own counts --------------------------------


def listed(conn: Connection, q: str, indexed: bool, **given: Any) -> tuple[list[int], int]:
    """Ids (one page of 1000) and ``total`` of the search with the plan forced."""
    where = conditions(make_filters(STANDARD_OBJECTS, q=q, **given), conn.dialect.name, indexed)
    e = sync_error.c
    ids = conn.execute(
        sa.select(e.id).where(*where).order_by(e.last_failed_at.desc(), e.id.desc())
    ).scalars()
    total = conn.execute(sa.select(sa.func.count()).select_from(sync_error).where(*where))
    return list(ids), int(total.scalar_one())


def test_a_term_in_most_errors_scans_a_rare_one_uses_the_index(sqlite_engine: Engine):
    rows = [row(n, f"already exists ({n % 10})", label=f"user{n}@x") for n in range(1, 41)]
    insert(sqlite_engine, rows)
    with sqlite_engine.connect() as conn:
        assert error_search.table_size(conn) == 40
        assert error_search.share(conn, "ALREADY") == 1.0
        assert error_search.share(conn, "(3)") == 4 / 40
        assert error_search.share(conn, "user17@") == 1 / 40
        assert error_search.share(conn, "nowhere") == 0.0
        assert not error_search.plan(conn, "already exists")
        assert error_search.plan(conn, "(3)")
        assert error_search.plan(conn, "USER17@")
        assert error_search.plan(conn, "nowhere")
        assert not error_search.plan(conn, "ex")  # two characters: a scan
        assert not error_search.plan(conn, None)
    for q in ("already exists", "(3)", "USER17@", "ser1", "nowhere", "xists (", "@x"):
        assert same(sqlite_engine, q, status="all") == same(sqlite_engine, q)
        with sqlite_engine.connect() as conn:
            for given in ({}, {"status": "all"}, {"status": "resolved"}):
                assert listed(conn, q, True, **given) == listed(conn, q, False, **given), q


def test_a_large_table_is_sampled_over_its_ids(sqlite_engine: Engine):
    """Past ``SAMPLES * SAMPLE_IDS`` errors the share is counted on windows of ids from
    the oldest to the newest, each found through the index by rowid range."""
    assert error_search.windows(0) == []
    assert error_search.windows(3) == [(1, 3)]
    assert error_search.windows(10_000) == [(1, 1000), (3001, 4000), (6001, 7000), (9001, 10000)]
    n = error_search.SAMPLES * error_search.SAMPLE_IDS + 1000
    # "Everywhere" in every error; "Newest" in the last 1000 only (one window of four).
    insert(
        sqlite_engine,
        [row(i, "everywhere" + (" newest" if i > n - 1000 else "")) for i in range(1, n + 1)],
    )
    with sqlite_engine.connect() as conn:
        assert error_search.share(conn, "everywhere") == 1.0
        assert error_search.share(conn, "NEWEST") == 0.25
        assert not error_search.plan(conn, "everywhere")
        assert not error_search.plan(conn, "newest")
        assert error_search.plan(conn, "nowhere")
        for q in ("everywhere", "newest", "where n"):
            assert listed(conn, q, True, status="all") == listed(conn, q, False, status="all")
    assert len(same(sqlite_engine, "newest", status="all")) == 1000


def test_an_empty_store_plans_without_error(engine: Engine):
    with engine.connect() as conn:
        assert error_search.plan(conn, "anything") == (engine.dialect.name == "sqlite")
        assert same(engine, "anything") == []


def test_the_plan_follows_deletes_and_updates(sqlite_engine: Engine):
    """The counts come from the index, kept by the triggers: a term that was everywhere
    and is now rare is looked up in the index again."""
    ids = insert(sqlite_engine, [row(n, "common text") for n in range(1, 21)])
    with sqlite_engine.connect() as conn:
        assert not error_search.plan(conn, "common")
    with sqlite_engine.begin() as conn:
        conn.execute(
            sa.update(sync_error).where(sync_error.c.id != ids[0]).values(error_message="other")
        )
    with sqlite_engine.connect() as conn:
        assert error_search.share(conn, "common") == 1 / 20
        assert error_search.plan(conn, "common")
        check_index(conn)
    assert same(sqlite_engine, "common") == [ids[0]]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(search_case())
def test_both_plans_find_what_a_scan_finds(sqlite_engine, case):
    rows, q, given = case
    with sqlite_engine.begin() as conn:
        conn.execute(sa.delete(sync_error))
    insert(
        sqlite_engine,
        [row(n, message, label, status=status) for n, (message, label, status) in enumerate(rows)],
    )
    with sqlite_engine.connect() as conn:
        expected = scanned(conn, q, **given)
        for indexed in (True, False):
            assert listed(conn, q, indexed, **given) == (expected, len(expected)), (q, indexed)


def test_the_threshold_is_scan_share_of_the_sampled_ids(sqlite_engine: Engine):
    """40 errors: up to int(0.15 * 40) = 6 candidates the index serves, 7 scan."""
    assert error_search.SCAN_SHARE == 0.15
    ids = insert(sqlite_engine, [row(n, "edge case" if n < 6 else "other") for n in range(40)])
    with sqlite_engine.connect() as conn:
        assert error_search.plan(conn, "edge case")
    with sqlite_engine.begin() as conn:
        conn.execute(
            sa.update(sync_error).where(sync_error.c.id == ids[-1]).values(error_message="EDGE")
        )
    with sqlite_engine.connect() as conn:
        assert error_search.share(conn, "edge") == 7 / 40
        assert not error_search.plan(conn, "edge")
        assert error_search.plan(conn, "edge case")
    assert len(same(sqlite_engine, "edge")) == 7

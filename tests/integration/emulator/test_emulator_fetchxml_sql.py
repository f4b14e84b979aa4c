# ruff: noqa: E501  (FetchXML and SQL are easier to read on one line)
"""fetchXml= and sql=: run like Dataverse, never ignored (issue 17, "silent wrong answers").

Documented behaviour checked here: FetchXML rows omit null columns and name linked
columns ``<alias>.<column>`` (use-fetchxml-web-api.md, fetchxml/join-tables.md);
morerecords and the paging cookie come back when ``include-annotations`` asks
(fetchxml/page-results.md). Error codes for malformed queries are not documented; the
emulator's choices (0x80040203, 0x80041103, 0x80041102) are marked inferred in the code.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

import pytest
from dvclient import Dv, error

PAGING = 'odata.include-annotations="Microsoft.Dynamics.CRM.fetchxmlpagingcookie,Microsoft.Dynamics.CRM.morerecords"'


async def fetch(dv: Dv, entity_set: str, xml: str, prefer: str | None = None):
    headers = {"Prefer": prefer} if prefer else {}
    return await dv.req("GET", f"{entity_set}?fetchXml={quote(xml)}", headers)


@pytest.fixture
async def people(dv: Dv) -> dict[str, str]:
    acme = await dv.create("accounts", {"name": "Acme", "accountnumber": "A-1"})
    globex = await dv.create("accounts", {"name": "Globex"})
    ids = {"acme": acme["accountid"], "globex": globex["accountid"]}
    for last, first, account in [
        ("Ames", "Ann", "acme"),
        ("Baker", None, "acme"),
        ("Cole", "Cy", "globex"),
        ("Dunn", "Di", None),
        ("Ames-Smith", "Al", None),
    ]:
        body = {"lastname": last, "firstname": first}
        if account:
            body["parentcustomerid_account@odata.bind"] = f"/accounts({ids[account]})"
        row = await dv.create("contacts", body)
        ids[last] = row["contactid"]
    return ids


async def test_fetchxml_attributes_filter_and_order(dv: Dv, people: dict[str, str]) -> None:
    r = await fetch(
        dv,
        "contacts",
        "<fetch><entity name='contact'><attribute name='lastname'/><attribute name='firstname'/>"
        "<filter type='or'><condition attribute='lastname' operator='begins-with' value='ames'/>"
        "<condition attribute='firstname' operator='null'/></filter>"
        "<order attribute='lastname' descending='true'/></entity></fetch>",
    )
    assert r.status_code == 200, r.text
    rows = r.json()["value"]
    assert [row["lastname"] for row in rows] == ["Baker", "Ames-Smith", "Ames"]
    baker = rows[0]
    assert "firstname" not in baker  # FetchXML omits null columns (use-fetchxml-web-api.md)
    assert baker["contactid"] == people["Baker"] and baker["@odata.etag"].startswith('W/"')
    assert "fullname" not in baker  # only the selected columns come back


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("<condition attribute='lastname' operator='eq' value='AMES'/>", ["Ames"]),
        (
            "<condition attribute='lastname' operator='ne' value='Ames'/>",
            ["Ames-Smith", "Baker", "Cole", "Dunn"],
        ),
        (
            "<condition attribute='lastname' operator='lt' value='C'/>",
            ["Ames", "Ames-Smith", "Baker"],
        ),
        ("<condition attribute='lastname' operator='ge' value='Cole'/>", ["Cole", "Dunn"]),
        ("<condition attribute='lastname' operator='like' value='%s%'/>", ["Ames", "Ames-Smith"]),
        (
            "<condition attribute='lastname' operator='not-like' value='A%'/>",
            ["Baker", "Cole", "Dunn"],
        ),
        ("<condition attribute='lastname' operator='ends-with' value='n'/>", ["Dunn"]),
        (
            "<condition attribute='firstname' operator='not-null'/>",
            ["Ames", "Ames-Smith", "Cole", "Dunn"],
        ),
        (
            "<condition attribute='lastname' operator='in'><value>Cole</value><value>dunn</value></condition>",
            ["Cole", "Dunn"],
        ),
        (
            "<condition attribute='lastname' operator='not-in'><value>Cole</value></condition>",
            ["Ames", "Ames-Smith", "Baker", "Dunn"],
        ),
        (
            "<filter type='and'><condition attribute='firstname' operator='not-null'/><condition attribute='lastname' operator='begins-with' value='A'/></filter>",
            ["Ames", "Ames-Smith"],
        ),
    ],
)
async def test_fetchxml_condition_operators(
    dv: Dv, people: dict[str, str], condition: str, expected: list[str]
) -> None:
    r = await fetch(
        dv,
        "contacts",
        f"<fetch><entity name='contact'><attribute name='lastname'/><filter>{condition}</filter>"
        "<order attribute='lastname'/></entity></fetch>",
    )
    assert r.status_code == 200, r.text
    assert [row["lastname"] for row in r.json()["value"]] == expected


async def test_fetchxml_lookup_condition_and_link_entities(dv: Dv, people: dict[str, str]) -> None:
    acme = people["acme"]
    r = await fetch(
        dv,
        "contacts",
        f"<fetch><entity name='contact'><attribute name='lastname'/><attribute name='parentcustomerid'/>"
        f"<filter><condition attribute='parentcustomerid' operator='eq' value='{{{acme.upper()}}}'/></filter>"
        "<order attribute='lastname'/></entity></fetch>",
    )
    rows = r.json()["value"]
    assert [row["lastname"] for row in rows] == ["Ames", "Baker"]
    assert rows[0]["_parentcustomerid_value"] == acme
    inner = (
        "<fetch><entity name='contact'><attribute name='lastname'/><order attribute='lastname'/>"
        "<link-entity name='account' from='accountid' to='parentcustomerid' link-type='{kind}' alias='a'>"
        "<attribute name='name'/><attribute name='accountnumber' alias='number'/>{extra}</link-entity></entity></fetch>"
    )
    rows = (await fetch(dv, "contacts", inner.format(kind="inner", extra=""))).json()["value"]
    assert [(x["lastname"], x["a.name"]) for x in rows] == [
        ("Ames", "Acme"),
        ("Baker", "Acme"),
        ("Cole", "Globex"),
    ]
    assert rows[0]["number"] == "A-1" and "number" not in rows[2]
    rows = (await fetch(dv, "contacts", inner.format(kind="outer", extra=""))).json()["value"]
    assert [x.get("a.name") for x in rows] == ["Acme", None, "Acme", "Globex", None]
    link_filter = "<filter><condition attribute='name' operator='eq' value='Globex'/></filter>"
    rows = (await fetch(dv, "contacts", inner.format(kind="inner", extra=link_filter))).json()[
        "value"
    ]
    assert [x["lastname"] for x in rows] == ["Cole"]
    rows = (await fetch(dv, "contacts", inner.format(kind="outer", extra=link_filter))).json()[
        "value"
    ]
    assert len(rows) == 5 and [x.get("a.name") for x in rows].count("Globex") == 1
    # One-to-many from the account side, with a condition on the linked alias.
    r = await fetch(
        dv,
        "accounts",
        "<fetch><entity name='account'><attribute name='name'/>"
        "<link-entity name='contact' from='parentcustomerid' to='accountid'><attribute name='lastname'/></link-entity>"
        "<filter><condition entityname='contact1' attribute='lastname' operator='eq' value='Baker'/></filter>"
        "</entity></fetch>",
    )
    assert r.status_code == 200, r.text
    assert r.json()["value"] == [
        {
            "@odata.etag": r.json()["value"][0]["@odata.etag"],
            "name": "Acme",
            "accountid": people["acme"],
            "contact1.lastname": "Baker",
        }
    ]


async def test_fetchxml_top_count_page_and_paging_cookie(dv: Dv, people: dict[str, str]) -> None:
    body = (
        "<entity name='contact'><attribute name='lastname'/><order attribute='lastname'/></entity>"
    )
    rows = (await fetch(dv, "contacts", f"<fetch top='2'>{body}</fetch>")).json()["value"]
    assert [x["lastname"] for x in rows] == ["Ames", "Ames-Smith"]
    first = (
        await fetch(dv, "contacts", f"<fetch count='2' page='1'>{body}</fetch>", PAGING)
    ).json()
    assert [x["lastname"] for x in first["value"]] == ["Ames", "Ames-Smith"]
    assert first["@Microsoft.Dynamics.CRM.morerecords"] is True
    cookie = first["@Microsoft.Dynamics.CRM.fetchxmlpagingcookie"]
    assert cookie.startswith('<cookie pagenumber="2" pagingcookie="%253ccookie')
    inner = unquote(unquote(cookie.split('pagingcookie="')[1].split('"')[0]))
    assert inner.startswith('<cookie page="1"><contactid last="{')
    third = (
        await fetch(dv, "contacts", f"<fetch count='2' page='3'>{body}</fetch>", PAGING)
    ).json()
    assert [x["lastname"] for x in third["value"]] == ["Dunn"]
    assert third["@Microsoft.Dynamics.CRM.morerecords"] is False
    assert "@Microsoft.Dynamics.CRM.fetchxmlpagingcookie" not in third
    plain = (await fetch(dv, "contacts", f"<fetch count='2'>{body}</fetch>")).json()
    assert len(plain["value"]) == 2 and "@Microsoft.Dynamics.CRM.morerecords" not in plain
    counted = await fetch(
        dv,
        "contacts",
        f"<fetch count='1' returntotalrecordcount='true'>{body}</fetch>",
        'odata.include-annotations="*"',
    )
    assert counted.json()["@Microsoft.Dynamics.CRM.totalrecordcount"] == 5


async def test_fetchxml_integers_read_as_the_schema_types_them(
    dv: Dv, people: dict[str, str]
) -> None:
    """Fetch.xsd types count, page and top as xs:integer: a plus sign and surrounding
    whitespace are allowed; anything else (another script's digits, a fraction, a
    doubled sign, an underscore, nothing) stays a 400."""
    body = (
        "<entity name='contact'><attribute name='lastname'/><order attribute='lastname'/></entity>"
    )
    top = (await fetch(dv, "contacts", f"<fetch top=' 2 '>{body}</fetch>")).json()["value"]
    assert [x["lastname"] for x in top] == ["Ames", "Ames-Smith"]
    paged = await fetch(dv, "contacts", f"<fetch count='+2' page='&#9;+3&#10;'>{body}</fetch>")
    assert [x["lastname"] for x in paged.json()["value"]] == ["Dunn"]
    for bad in ("+-2", "-+2", "2.0", "\u0662", "1_0", "", " ", "+"):
        r = await fetch(dv, "contacts", f"<fetch count='{bad}'>{body}</fetch>")
        assert error(r)[:2] == (400, "0x80040203"), bad


async def test_fetchxml_comments_and_cdata_are_fine(dv: Dv, people: dict[str, str]) -> None:
    xml = (
        "<fetch><!-- who --><entity name='contact'><attribute name='lastname'/>"
        "<filter><condition attribute='lastname' operator='in'><value><![CDATA[Cole]]></value>"
        "</condition></filter></entity></fetch>"
    )
    r = await fetch(dv, "contacts", xml)
    assert [x["lastname"] for x in r.json()["value"]] == ["Cole"]
    r = await fetch(dv, "contacts", '<!doctype fetch SYSTEM "file:///etc/passwd"><fetch/>')
    assert error(r)[:2] == (400, "0x80040203")


async def test_fetchxml_distinct(dv: Dv, people: dict[str, str]) -> None:
    r = await fetch(
        dv,
        "contacts",
        "<fetch distinct='true'><entity name='contact'><attribute name='parentcustomerid'/>"
        "<filter><condition attribute='parentcustomerid' operator='not-null'/></filter></entity></fetch>",
    )
    values = sorted(x["_parentcustomerid_value"] for x in r.json()["value"])
    assert values == sorted([people["acme"], people["globex"]])


@pytest.mark.parametrize(
    ("xml", "code", "message"),
    [
        (
            "<fetch><entity name='contact'><attribute name='nope'/></entity></fetch>",
            "0x80041103",
            "'contact' entity doesn't contain attribute with Name = 'nope' and NameMapping = 'Logical'.",
        ),
        (
            "<fetch><entity name='widget'/></fetch>",
            "0x80041102",
            "The entity with a name = 'widget' with namemapping = 'Logical' was not found in the MetadataCache.",
        ),
        (
            "<fetch><entity name='lead'/></fetch>",
            "0x80040203",
            "does not match the entity set 'contacts'",
        ),
        ("<fetch><entity name='contact'>", "0x80040203", "Invalid XML"),
        ("<fetch aggregate='true'><entity name='contact'/></fetch>", "0x80040203", "aggregate"),
        ("<fetch top='1' count='1'><entity name='contact'/></fetch>", "0x80040203", "'top'"),
        (
            "<fetch><entity name='contact'><filter><condition attribute='lastname' operator='under' value='x'/></filter></entity></fetch>",
            "0x80040203",
            "'under'",
        ),
        (
            "<fetch><entity name='contact'><filter><condition attribute='createdon' operator='eq' value='soon'/></filter></entity></fetch>",
            "0x80040203",
            "'soon'",
        ),
        (
            "<fetch><entity name='contact'><link-entity name='account' from='accountid' to='parentcustomerid' link-type='any'/></entity></fetch>",
            "0x80040203",
            "'any'",
        ),
        ("<fetch><entity name='contact'><banana/></entity></fetch>", "0x80040203", "'banana'"),
        ("<fetch><entity name='contact' extra='1'/></fetch>", "0x80040203", "'extra'"),
        (
            '<!DOCTYPE x [<!ENTITY a "aaaa">]><fetch><entity name="contact"><attribute name="&a;"/></entity></fetch>',
            "0x80040203",
            "DTD",
        ),
    ],
)
async def test_fetchxml_refuses_what_it_does_not_run(
    dv: Dv, xml: str, code: str, message: str
) -> None:
    status, got_code, got_message = error(await fetch(dv, "contacts", xml))
    assert (status, got_code) == (400, code)
    assert message in got_message


async def test_unknown_or_mixed_query_options_are_errors_not_ignored(dv: Dv) -> None:
    await dv.create("leads", {"lastname": "x"})
    for url in (
        "leads?fetchxml=<fetch/>",
        "leads?Sql=SELECT lastname FROM lead",
        "leads?foo=bar",
        "leads?$search=x",
    ):
        status, code, message = error(await dv.req("GET", url))
        assert (status, code) == (400, "0x80060888") and "is not supported" in message
    xml = quote("<fetch><entity name='lead'/></fetch>")
    status, _, message = error(await dv.req("GET", f"leads?fetchXml={xml}&$select=lastname"))
    assert status == 400 and "$select" in message


async def test_sql_subset(dv: Dv, people: dict[str, str]) -> None:
    async def sql(text: str, entity_set: str = "contacts"):
        return await dv.req("GET", f"{entity_set}?sql={quote(text, safe='')}")

    r = await sql(
        "SELECT TOP 2 lastname, firstname AS given FROM contact WHERE lastname LIKE 'A%' OR firstname IS NULL ORDER BY lastname DESC"
    )
    assert r.status_code == 200, r.text
    assert r.json()["value"] == [
        {"lastname": "Baker", "given": None},
        {"lastname": "Ames-Smith", "given": "Al"},
    ]
    r = await sql(
        f"SELECT c.lastname FROM contact c WHERE c.parentcustomerid = '{people['acme']}' AND NOT c.lastname = 'Baker'"
    )
    assert r.json()["value"] == [{"lastname": "Ames"}]
    r = await sql(
        "SELECT lastname FROM contact WHERE lastname IN ('cole', 'Dunn') AND (firstname <> 'Di' OR firstname IS NULL)"
    )
    assert r.json()["value"] == [{"lastname": "Cole"}]
    r = await sql(
        "SELECT DISTINCT parentcustomerid FROM contact WHERE parentcustomerid IS NOT NULL"
    )
    assert sorted(x["parentcustomerid"] for x in r.json()["value"]) == sorted(
        [people["acme"], people["globex"]]
    )
    r = await sql("SELECT name FROM account WHERE name = 'It''s'", "accounts")
    assert r.json()["value"] == []


async def test_sql_between_not_in_and_offset_fetch(dv: Dv, people: dict[str, str]) -> None:
    """The clauses Microsoft's SDK (1.1.0) lists for ``query.sql`` beside the docs' subset."""

    async def names(text: str) -> list[str]:
        r = await dv.req("GET", f"contacts?sql={quote(text, safe='')}")
        assert r.status_code == 200, r.text
        return [x["lastname"] for x in r.json()["value"]]

    base = "SELECT lastname FROM contact"
    assert await names(f"{base} WHERE lastname BETWEEN 'b' AND 'Cole' ORDER BY lastname") == [
        "Baker",
        "Cole",
    ]
    assert await names(f"{base} WHERE lastname NOT BETWEEN 'B' AND 'Czz' ORDER BY lastname") == [
        "Ames",
        "Ames-Smith",
        "Dunn",
    ]
    assert await names(f"{base} WHERE lastname NOT IN ('Ames', 'dunn') ORDER BY lastname") == [
        "Ames-Smith",
        "Baker",
        "Cole",
    ]
    page = f"{base} ORDER BY lastname OFFSET 1 ROWS FETCH NEXT 2 ROWS ONLY"
    assert await names(page) == ["Ames-Smith", "Baker"]
    assert await names(f"{base} ORDER BY lastname DESC OFFSET 3 ROWS") == ["Ames-Smith", "Ames"]
    assert await names(f"{base} ORDER BY lastname OFFSET 9 ROWS") == []


async def test_sql_group_by_and_aggregates(dv: Dv, people: dict[str, str]) -> None:
    """GROUP BY and COUNT/SUM/AVG/MIN/MAX, which Microsoft's SDK lists for query.sql,
    with T-SQL's rules (see ``crmsync.emulator.sqlagg``)."""

    async def sql(text: str, entity_set: str = "contacts") -> list[dict[str, object]]:
        r = await dv.req("GET", f"{entity_set}?sql={quote(text, safe='')}")
        assert r.status_code == 200, r.text
        return r.json()["value"]

    assert await sql(
        "SELECT parentcustomerid, COUNT(*) AS n, COUNT(firstname) AS named, MIN(lastname) AS first "
        "FROM contact WHERE parentcustomerid IS NOT NULL GROUP BY parentcustomerid ORDER BY n DESC"
    ) == [
        {"parentcustomerid": people["acme"], "n": 2, "named": 1, "first": "Ames"},
        {"parentcustomerid": people["globex"], "n": 1, "named": 1, "first": "Cole"},
    ]
    assert await sql("SELECT COUNT(*) AS n, MAX(lastname) AS last FROM contact") == [
        {"n": 5, "last": "Dunn"}
    ]
    assert await sql(
        "SELECT COUNT(*) AS n, MAX(lastname) AS last FROM contact WHERE lastname = 'x'"
    ) == [{"n": 0, "last": None}]
    for i, quality in enumerate((1, 2, 2, None)):
        await dv.create(
            "leads",
            {
                "lastname": f"Q{i}",
                "companyname": "Co" if i % 2 else "co",
                "leadqualitycode": quality,
            },
        )
    assert await sql(
        "SELECT companyname, SUM(leadqualitycode) AS total, AVG(leadqualitycode) AS mean, "
        "COUNT(DISTINCT leadqualitycode) AS kinds FROM lead GROUP BY companyname",
        "leads",
    ) == [{"companyname": "co", "total": 5, "mean": 1, "kinds": 2}]  # one group: case-insensitive
    assert await sql(
        "SELECT TOP 1 leadqualitycode, COUNT(*) AS n FROM lead GROUP BY leadqualitycode ORDER BY leadqualitycode DESC",
        "leads",
    ) == [{"leadqualitycode": 2, "n": 2}]


async def test_sql_joins(dv: Dv, people: dict[str, str]) -> None:
    """INNER and LEFT JOIN on one equality, with GROUP BY across the joined rows."""

    async def sql(text: str) -> list[dict[str, object]]:
        r = await dv.req("GET", f"contacts?sql={quote(text, safe='')}")
        assert r.status_code == 200, r.text
        return r.json()["value"]

    joined = "FROM contact c JOIN account a ON a.accountid = c.parentcustomerid"
    assert await sql(f"SELECT c.lastname, a.name {joined} ORDER BY c.lastname") == [
        {"lastname": "Ames", "name": "Acme"},
        {"lastname": "Baker", "name": "Acme"},
        {"lastname": "Cole", "name": "Globex"},
    ]
    assert await sql(
        "SELECT c.lastname, a.name AS account FROM contact c LEFT OUTER JOIN account a "
        "ON c.parentcustomerid = a.accountid WHERE a.name IS NULL OR a.name = 'globex' "
        "ORDER BY lastname"
    ) == [
        {"lastname": "Ames-Smith", "account": None},
        {"lastname": "Cole", "account": "Globex"},
        {"lastname": "Dunn", "account": None},
    ]
    assert await sql(
        f"SELECT a.name, COUNT(c.contactid) AS n {joined} GROUP BY a.name ORDER BY n DESC"
    ) == [{"name": "Acme", "n": 2}, {"name": "Globex", "n": 1}]
    assert await sql(
        f"SELECT c.lastname {joined} WHERE a.accountnumber = 'A-1' AND c.firstname IS NULL"
    ) == [{"lastname": "Baker"}]


async def test_sql_refuses_conditions_on_a_choices_column(dv: Dv) -> None:
    """Inferred: Dataverse's SQL names no operator for a choices column (FetchXML has
    contain-values, $filter ContainValues), so none is guessed at; IS NULL is plain."""
    await dv.create("contacts", {"lastname": "Out", "sample_outdooractivities": "1,9"})
    await dv.create("contacts", {"lastname": "In"})
    for condition in (
        "sample_outdooractivities = '1,9'",
        "sample_outdooractivities IN ('1')",
        "sample_outdooractivities LIKE '%9%'",
        "NOT sample_outdooractivities = '1'",
    ):
        text = f"SELECT lastname FROM contact WHERE {condition}"
        status, code, message = error(await dv.req("GET", f"contacts?sql={quote(text, safe='')}"))
        assert (status, code) == (400, "0x80040203"), condition
        assert "ContainValues" in message and "sample_outdooractivities" in message
    text = "SELECT lastname, sample_outdooractivities FROM contact WHERE sample_outdooractivities IS NOT NULL"
    r = await dv.req("GET", f"contacts?sql={quote(text, safe='')}")
    assert r.json()["value"] == [{"lastname": "Out", "sample_outdooractivities": "1,9"}]


@pytest.mark.parametrize(
    "condition",
    [
        "ContainValues(sample_outdooractivities, '1')",
        "Microsoft.Dynamics.CRM.ContainValues(PropertyName='sample_outdooractivities', PropertyValues='1')",
        "NOT DoesNotContainValues(sample_outdooractivities, 9)",
        "CONTAINS(sample_outdooractivities, '1')",
        "lastname = 'Out' AND FREETEXT(lastname, 'Out')",
    ],
)
async def test_sql_has_no_containvalues(dv: Dv, condition: str) -> None:
    """Dataverse's SQL has no containment test for choices columns (its documented subset
    lists none; ContainValues is a $filter function, contain-values a FetchXML operator),
    so each spelling is refused, never run as a guess, and the answer names the two
    queries that do it. The wording is inferred; both alternatives answer the row."""
    await dv.create("contacts", {"lastname": "Out", "sample_outdooractivities": "1,9"})
    await dv.create("contacts", {"lastname": "In", "sample_outdooractivities": "2"})
    text = f"SELECT lastname FROM contact WHERE {condition}"
    status, code, message = error(await dv.req("GET", f"contacts?sql={quote(text, safe='')}"))
    assert (status, code) == (400, "0x80040203")
    assert "not part of Dataverse's SQL" in message
    assert "Microsoft.Dynamics.CRM.ContainValues" in message and "contain-values" in message
    by_filter = await dv.get(
        "contacts?$select=lastname&$filter=Microsoft.Dynamics.CRM.ContainValues("
        "PropertyName='sample_outdooractivities',PropertyValues=['1'])"
    )
    assert [r["lastname"] for r in by_filter.json()["value"]] == ["Out"]
    by_fetch = await fetch(
        dv,
        "contacts",
        "<fetch><entity name='contact'><attribute name='lastname'/><filter>"
        "<condition attribute='sample_outdooractivities' operator='contain-values'>"
        "<value>1</value></condition></filter></entity></fetch>",
    )
    assert [r["lastname"] for r in by_fetch.json()["value"]] == ["Out"]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("SELECT * FROM contact", "SELECT *"),
        ("SELECT nope FROM contact", "Invalid column name 'nope'"),
        ("SELECT lastname FROM account", "'account'"),
        (
            "SELECT c.lastname FROM contact c RIGHT JOIN account a ON a.accountid = c.parentcustomerid",
            "only INNER JOIN and LEFT JOIN",
        ),
        (
            "SELECT name FROM contact c JOIN account a ON a.accountid = c.parentcustomerid AND a.name = 'x'",
            "one equality",
        ),
        (
            "SELECT createdon FROM contact c JOIN account a ON a.accountid = c.parentcustomerid",
            "Ambiguous column name 'createdon'",
        ),
        (
            "SELECT c.lastname, a.createdon, c.createdon FROM contact c JOIN account a ON a.accountid = c.parentcustomerid",
            "two result columns are named 'createdon'",
        ),
        ("SELECT x.lastname FROM contact c", 'multi-part identifier "x.lastname"'),
        (
            "SELECT lastname FROM contact c JOIN widget w ON w.id = c.id",
            "Invalid object name 'widget'",
        ),
        (
            "SELECT lastname FROM contact c JOIN account c ON c.accountid = c.parentcustomerid",
            "correlation name 'c'",
        ),
        ("SELECT UPPER(lastname) FROM contact", "functions"),
        ("SELECT COUNT(lastname) FROM contact", "needs an alias"),
        ("SELECT COUNT(*) AS FROM contact", "needs an alias"),
        ("SELECT SUM(*) AS n FROM contact", "SUM(*)"),
        ("SELECT lastname, COUNT(*) AS n FROM contact", "not contained in either"),
        ("SELECT lastname FROM contact GROUP BY firstname", "not contained in either"),
        ("SELECT SUM(lastname) AS n FROM contact", "nvarchar is invalid for sum"),
        (
            "SELECT firstname FROM contact GROUP BY firstname ORDER BY lastname",
            "ORDER BY clause",
        ),
        ("SELECT firstname FROM contact GROUP BY firstname HAVING COUNT(*) > 1", "'having'"),
        ("SELECT lastname FROM contact; DELETE FROM contact", "';'"),
        ("DELETE FROM contact", "'SELECT'"),
        ("SELECT TOP x lastname FROM contact", "TOP"),
        ("SELECT lastname FROM contact WHERE createdon > 'later'", "'later'"),
        ("SELECT TOP 2 lastname FROM contact ORDER BY lastname OFFSET 1 ROWS", "TOP can not"),
        ("SELECT lastname FROM contact ORDER BY lastname OFFSET 1", "'ROWS'"),
        ("SELECT lastname FROM contact ORDER BY lastname OFFSET 1 ROWS FETCH 2", "'NEXT'"),
        ("SELECT lastname FROM contact ORDER BY lastname OFFSET x ROWS", "OFFSET takes"),
        ("SELECT lastname FROM contact OFFSET 1 ROWS", "'offset'"),
        ("SELECT lastname FROM contact WHERE lastname BETWEEN 'a'", "'AND'"),
    ],
)
async def test_sql_refuses_the_rest(dv: Dv, text: str, fragment: str) -> None:
    status, code, message = error(await dv.req("GET", f"contacts?sql={quote(text, safe='')}"))
    assert (status, code) == (400, "0x80040203")
    assert fragment in message

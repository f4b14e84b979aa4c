"""Made-up people and companies for the demo, bad data included. No I/O.

The bad data is the kind a marketing database really accumulates, each with what
Dataverse does about it:

- ``long_last_name``, ``long_company``, ``long_email``: a pasted title, address or list
  of addresses, longer than the attribute (lastname 50, companyname 100, emailaddress1
  100): Dataverse refuses the write with ``0x80044331``.
- ``placeholder_email``: ``noemail@example.com`` typed into every form that demanded
  an address: with duplicate detection on, the second such lead fails with
  ``0x80040333``.
- ``malformed_email``: ``jane.doe@example`` or a space inside: Dataverse does not check
  the format of ``emailaddress1`` on the Web API, so these sync (and show how little a
  sync can promise about data quality).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

FIRST = [
    "Ada",
    "Alan",
    "Grace",
    "Linus",
    "Margaret",
    "Ken",
    "Barbara",
    "Dennis",
    "Frances",
    "Edsger",
    "Hedy",
    "Donald",
    "Radia",
    "Tim",
    "Katherine",
    "John",
    "Sophie",
    "Annie",
    "Claude",
    "Mary",
    "Niklaus",
    "Joan",
    "Guido",
    "Shafi",
    "Yukihiro",
    "Anders",
]
LAST = [
    "Lovelace",
    "Turing",
    "Hopper",
    "Torvalds",
    "Hamilton",
    "Thompson",
    "Liskov",
    "Ritchie",
    "Allen",
    "Dijkstra",
    "Lamarr",
    "Knuth",
    "Perlman",
    "Berners-Lee",
    "Johnson",
    "McCarthy",
    "Wilson",
    "Easley",
    "Shannon",
    "Keller",
    "Wirth",
    "Clarke",
    "Rossum",
    "Goldwasser",
    "Matsumoto",
    "Hejlsberg",
]
COMPANY = [
    "Contoso",
    "Fabrikam",
    "Northwind Traders",
    "Adventure Works",
    "Tailspin Toys",
    "Wide World Importers",
    "Litware",
    "Proseware",
    "Fourth Coffee",
    "Alpine Ski House",
    "Coho Winery",
    "Trey Research",
    "Woodgrove Bank",
]
DOMAIN = ("example.com", "example.org", "example.net", "mail.example", "corp.example")
PLACEHOLDER_EMAILS = (
    "noemail@example.com",
    "none@example.com",
    "test@test.example",
    "na@na.example",
)
EVENTS = (
    "Dynamics Summit",
    "Marketing Automation Day",
    "Partner Kickoff",
    "Customer Advisory Board",
    "Data Quality Webinar",
    "Spring Roadshow",
)
SESSIONS = ("Keynote", "Workshop A", "Workshop B", "Partner lunch", "Evening reception")
FEES = (Decimal("0.00"), Decimal("49.00"), Decimal("99.50"), Decimal("250.00"))
EVENT_NAME_LENGTH = 100  # the demo mapping's new_name
BAD_KINDS = ("long_last_name", "long_company", "long_email", "placeholder_email", "malformed_email")


@dataclass(frozen=True)
class Person:
    email: str | None
    first_name: str
    last_name: str
    company: str
    bad: str | None = None  # which kind of bad data, if any

    def lead(self) -> dict[str, str | None]:
        return {
            "email": self.email,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "company": self.company,
        }

    def contact(self) -> dict[str, str | None]:
        return {"email": self.email, "first_name": self.first_name, "last_name": self.last_name}


class People:
    """Unique, plausible people; ``tag`` keeps emails unique across demo runs."""

    def __init__(self, rng: random.Random, tag: str) -> None:
        self.rng = rng
        self.tag = tag
        self.serial = 0

    def person(self) -> Person:
        self.serial += 1
        first = self.rng.choice(FIRST)
        last = self.rng.choice(LAST)
        domain = self.rng.choice(DOMAIN)
        email = f"{first}.{last}.{self.tag}{self.serial}@{domain}".lower()
        return Person(email, first, last, self.rng.choice(COMPANY))

    def company(self) -> str:
        return f"{self.rng.choice(COMPANY)} {self.rng.choice(('Ltd', 'Inc', 'GmbH', 'SA', 'BV'))}"

    def bad_person(self, kind: str | None = None) -> Person:
        """A person carrying one kind of bad data (``BAD_KINDS``; random when None)."""
        kind = kind or self.rng.choice(BAD_KINDS)
        p = self.person()
        assert p.email is not None
        if kind == "long_last_name":
            last = (
                f"{p.last_name}-{self.rng.choice(LAST)}, Head of Regional Partnerships EMEA & APAC"
            )
            return Person(p.email, p.first_name, last, p.company, kind)
        if kind == "long_company":
            company = (
                f"{p.company} Holdings International, Building 4, 1200 Harbour Boulevard, "
                f"Suite {self.rng.randint(100, 999)}, Redmond WA 98052, United States"
            )
            return Person(p.email, p.first_name, p.last_name, company, kind)
        if kind == "long_email":
            local = p.email.split("@")[0]
            domain = "marketing-department.newsletter-subscriptions." * 2
            email = f"{local}@{domain}example.com"
            return Person(email, p.first_name, p.last_name, p.company, kind)
        if kind == "placeholder_email":
            email = self.rng.choice(PLACEHOLDER_EMAILS)
            return Person(email, p.first_name, p.last_name, p.company, kind)
        if kind == "malformed_email":
            local, _, domain = p.email.partition("@")
            email = self.rng.choice(
                (f"{local}@{domain.split('.')[0]}", f"{local.replace('.', ' ')}@{domain}")
            )
            return Person(email, p.first_name, p.last_name, p.company, kind)
        raise ValueError(f"unknown kind of bad data {kind!r}; one of {', '.join(BAD_KINDS)}")


@dataclass(frozen=True)
class Registration:
    """A person registered for an event (the demo's custom table, ``event_registration``)."""

    name: str
    attended: bool
    registered: datetime
    fee: Decimal
    bad: str | None = None

    def row(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "attended": self.attended,
            "registered": self.registered,
            "fee": self.fee,
        }


def registration(
    rng: random.Random, person: Person, now: datetime, bad: bool = False
) -> Registration:
    """``person``'s registration for an event, made some time in the last weeks. A bad one
    (``long_event_name``) has every session of the event pasted into its name, longer than
    the table's 100 characters: Dataverse refuses it with ``0x80044331``."""
    event = f"{rng.choice(EVENTS)} {now.year}"
    name = f"{event}: {person.first_name} {person.last_name}"
    if bad:  # always past 100 characters: the sessions alone take 65
        name = f"{event} ({', '.join(SESSIONS)}, day 2 repeat): {person.email}"
    # Dataverse keeps date and time columns to the second.
    registered = (now - timedelta(minutes=rng.randint(5, 60 * 24 * 30))).replace(microsecond=0)
    return Registration(
        name,
        rng.random() < 0.4,
        registered,
        rng.choice(FEES),
        "long_event_name" if bad else None,
    )

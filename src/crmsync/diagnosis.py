"""What a sync error is about and what to do: its category, its field and its fix. No I/O.

``category_of`` reads an error's code (Dataverse's hex code, ``http_<status>``, a
transport exception's name or crmsync's own ``crmsync.*`` code) and, where one code
covers several causes, its message. ``field_of`` finds the local column the message
names: Dataverse names attributes by their logical name, mapped back to the local
column through the object's mapping; crmsync's own messages name the column.

``FIXES`` is the one table the ERROR ``fix`` texts and the error table of
``docs/troubleshooting.md`` come from (``docs/generate.py`` writes the doc from it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from crmsync.domain import ErrorCategory, ObjectSpec

C = ErrorCategory


@dataclass(frozen=True)
class Fix:
    """One row of the table: a code (None: any code of the category) and what to do."""

    category: ErrorCategory
    code: str | None
    meaning: str
    fix: str


# Dataverse's codes (shared/reference/dataverse-web-api.md section 5) and crmsync's own.
FIXES: tuple[Fix, ...] = (
    Fix(C.DATA_TOO_LONG, "0x80044331", "A text value is longer than the Dynamics column allows.",
        "Shorten the value in the local row (or lengthen the column in Dynamics); the "
        "changed row is sent again by itself."),
    Fix(C.INVALID_VALUE, "0x8004431a", "A choice or number is outside what Dynamics accepts.",
        "Correct the value in the local row to one Dynamics accepts (or add the option in "
        "Dynamics), then retry."),
    Fix(C.INVALID_VALUE, "0x80048d19", "Dynamics could not read a value of the request.",
        "Correct the value's type in the local row (or the field's type in the mapping), "
        "then retry."),
    Fix(C.INVALID_VALUE, "crmsync.invalid_value", "A local value does not fit its field.",
        "Correct the local value of the field named; the changed row is sent by itself."),
    Fix(C.INVALID_VALUE, "crmsync.invalid_crm_id", "A row's crm_id is not a Dynamics id.",
        "Set the row's crm_id to the record's Dynamics id (a GUID) or clear it, then retry."),
    Fix(C.INVALID_VALUE, "crmsync.unmappable_value",
        "A Dynamics value does not fit the local column.",
        "Widen the local column (or correct the value in Dynamics); then retry."),
    Fix(C.INVALID_VALUE, "crmsync.local_constraint", "The local database refused the write.",
        "Read the constraint in the message and correct the local table or the Dynamics "
        "record, then retry."),
    Fix(C.DUPLICATE, "0x80040333", "A Dynamics duplicate detection rule matched a record.",
        "Merge or delete the duplicate in Dynamics (or turn duplicate detection off), then "
        "retry."),
    Fix(C.DUPLICATE, None, "The record would duplicate a key in Dynamics.",
        "Find the other record with the same key, merge or change one of them, then retry."),
    Fix(C.MISSING_REFERENCE, "crmsync.missing_parent",
        "A pulled record refers to a parent crmsync does not have yet.",
        "Nothing, usually: it is retried by itself once the parent arrives; if the parent "
        "is excluded or deleted, fix that in Dynamics."),
    Fix(C.MISSING_REFERENCE, "crmsync.missing_reference",
        "A local record refers to a parent that is not in Dynamics.",
        "Nothing, usually: it is retried by itself once the parent reaches Dynamics; check "
        "the parent's own error if it stays."),
    Fix(C.MISSING_REFERENCE, None, "The record or a record it refers to is not in Dynamics.",
        "Check that the referred record exists in Dynamics (restore it or clear the "
        "reference); it is retried by itself meanwhile."),
    Fix(C.PERMISSION, None, "The application user lacks a privilege in Dynamics.",
        "Give crmsync's application user the privilege named (security role in Dynamics); "
        "it is retried by itself meanwhile."),
    Fix(C.MAPPING, "crmsync.mapping_mismatch", "Dynamics no longer matches the mapping.",
        "Run crmsync mapping check, fix the mapping or Dynamics, then resume the object."),
    Fix(C.MAPPING, None, "Dynamics does not know a table, column or key of the mapping.",
        "Correct the name in the mapping (crmsync mapping check lists mismatches), then "
        "retry."),
    Fix(C.THROTTLED, None, "Dynamics' service protection limits refused the request.",
        "Nothing: it is retried by itself; lower CRMSYNC_MAX_CONCURRENCY if it keeps "
        "happening."),
    Fix(C.UNAVAILABLE, None, "Dynamics could not be reached or answered with a server error.",
        "Nothing: it is retried by itself once Dynamics answers; check its service health "
        "if it lasts."),
    Fix(C.OTHER, "crmsync.record_gone", "The local row was deleted before it was sent.",
        "Nothing to send: dismiss the error."),
    Fix(C.OTHER, None, "A failure crmsync has no advice for.",
        "Read the message; correct the record or the configuration, then retry (or "
        "dismiss)."),
)  # fmt: skip

_BY_CODE: dict[str, ErrorCategory] = {f.code: f.category for f in FIXES if f.code}
_BY_CODE.update(
    {
        "0x80040237": C.DUPLICATE,  # duplicate key
        "0x80060892": C.DUPLICATE,  # alternate key violated
        "0x80040220": C.PERMISSION,  # missing privilege
        "0x80048306": C.PERMISSION,  # no access right on the record
        "0x80040217": C.MISSING_REFERENCE,  # record not found
        "0x80060891": C.MAPPING,  # alternate key not defined / not found by it
        "0x8006088a": C.MAPPING,  # unknown entity set
        "0x80041102": C.MAPPING,  # query names an unknown entity
        "0x80041103": C.MAPPING,  # query names an unknown attribute
        "0x80072322": C.THROTTLED,  # requests over the limit
        "0x80072321": C.THROTTLED,  # execution time over the limit
        "0x80072326": C.THROTTLED,  # concurrent requests over the limit
    }
)
# Codes that cover several causes: (code, words in the message, category), first match.
_BY_MESSAGE: tuple[tuple[str, str, ErrorCategory], ...] = (
    ("0x80048d19", "Cannot convert", C.INVALID_VALUE),  # else a malformed request
    ("0x80040217", "Could not find", C.MAPPING),  # an entity or attribute, not a record
    ("0x80060891", "does not exist", C.MISSING_REFERENCE),  # no record with the key values
)
# Transport failures (no HTTP answer) are named by their exception class.
_TRANSPORT = re.compile(r"(Timeout|Connect|Network|Transport|Protocol|ReadError|OSError)")
_UNKNOWN_PROPERTY = re.compile(
    r"Could not find a property named '([^']+)'|Invalid property '([^']+)' was found"
    r"|doesn't contain attribute with Name = '([^']+)'"
)
_NAMED_ATTRIBUTE = re.compile(
    r"[Tt]he length of the '([^']+)' attribute|of '([^']+)' on record of type"
    r"|Could not find attribute with key (\w+)|The key attribute '([^']+)' is not defined"
)
_NOT_FOUND = re.compile(r"^(\w+) With Id = \S+ Does Not Exist")
# crmsync's own messages: "lead 7: email: ...", "parent_id refers to ...", "email: ...".
_OWN_COLUMN = re.compile(r"^(?:\w+ \d+: )?([a-z_][a-z0-9_]*)(?:: | refers to )")


def category_of(code: str, message: str = "") -> ErrorCategory:
    """The category of an error with ``code`` and ``message`` (``other`` if unknown)."""
    key = code.lower()
    if key == "crmsync.local_constraint":
        return _local_constraint(message)
    for known, words, category in _BY_MESSAGE:
        if key == known and words in message:
            return category
    if key == "0x80048d19":
        return C.OTHER  # a malformed request rather than a value
    if key in _BY_CODE:
        return _BY_CODE[key]
    if key in ("", "0x0") or key.startswith("http_"):
        # Dataverse's code "is frequently empty": crmsync stores ``http_<status>`` then.
        if _UNKNOWN_PROPERTY.search(message) or "No HTTP resource" in message:
            return C.MAPPING
        if "matching key values already exists" in message:
            return C.DUPLICATE
        return _by_status(key.removeprefix("http_"), message) if key else C.OTHER
    if _TRANSPORT.search(code):
        return C.UNAVAILABLE
    return C.OTHER


def codes_of(category: ErrorCategory) -> frozenset[str]:
    """The codes (lower case) an error of a passing kind (``PASSING``) may have: those
    of the tables, ``http_<status>`` for the statuses of the kind and the local
    constraint's; not the transport failures (named by their exception's class). Not
    for the kinds some words of a message give whatever the status (mapping, duplicate,
    invalid value). ``category_of`` decides: this only narrows a search (a code listed
    may be of another category by its message)."""
    codes = {f.code.lower() for f in FIXES if f.code and f.category == category}
    codes |= {code for code, found in _BY_CODE.items() if found == category}
    codes |= {code for code, _, found in _BY_MESSAGE if found == category}
    codes |= {f"http_{s}" for s in range(400, 600) if _by_status(str(s), "") == category}
    constraints = ("unique", "foreign key", "too long", "")
    if category in {_local_constraint(m) for m in constraints}:
        codes.add("crmsync.local_constraint")
    return frozenset(codes)


def _by_status(status: str, message: str) -> ErrorCategory:
    if "Cannot convert the literal" in message:
        return C.INVALID_VALUE
    if status == "429":
        return C.THROTTLED
    if status in ("401", "403"):
        return C.PERMISSION
    if status in ("408", "425") or (status.isdigit() and int(status) >= 500):
        return C.UNAVAILABLE
    if status == "404":
        return C.MISSING_REFERENCE
    return C.OTHER


def _local_constraint(message: str) -> ErrorCategory:
    text = message.lower()
    if "unique" in text or "duplicate key" in text:
        return C.DUPLICATE
    if "foreign key" in text:
        return C.MISSING_REFERENCE
    if "too long" in text:
        return C.DATA_TOO_LONG
    return C.INVALID_VALUE


def field_of(obj: str, code: str, message: str, specs: Mapping[str, ObjectSpec]) -> str | None:
    """The local column of ``obj`` that the error's message names, or None.

    Dataverse's attribute names and navigation properties are mapped back through the
    mapping ``specs``; a "record of <entity> does not exist" names the lookup to that
    entity when ``obj`` has exactly one. A name the mapping does not hold gives None.
    """
    spec = specs.get(obj)
    if spec is None:
        return None
    if code.lower().startswith("crmsync."):
        own = _OWN_COLUMN.match(message)
        column = own.group(1) if own else None
        known = set(spec.fields) | {lk.column for lk in spec.lookups}
        return column if column in known else None
    named = _NAMED_ATTRIBUTE.search(message) or _UNKNOWN_PROPERTY.search(message)
    if named is not None:
        return column_of(spec, next(g for g in named.groups() if g))
    missing = _NOT_FOUND.match(message)
    if missing is not None:
        logical = missing.group(1).lower()
        columns = [
            lk.column
            for lk in spec.lookups
            if lk.target in specs and specs[lk.target].logical_name.lower() == logical
        ]
        return columns[0] if len(columns) == 1 else None
    return None


def column_of(spec: ObjectSpec, attribute: str) -> str | None:
    """The local column mapped to Dataverse's ``attribute`` (a logical name, a lookup's
    navigation property or its ``_x_value``), or None."""
    name = attribute.split("@", 1)[0].lower()
    for column, mapped in spec.fields.items():
        if mapped.lower() == name:
            return column
    for lk in spec.lookups:
        if name in (lk.navigation.lower(), lk.value_attribute.lower()):
            return lk.column
    return None


def fix_for(category: str, code: str) -> str:
    """The one sentence for the operator: the row of the code in that category, else the
    category's general row."""
    key = code.lower()
    for f in FIXES:
        if f.code is not None and f.code.lower() == key and f.category == category:
            return f.fix
    return _CATEGORY_FIX.get(category, _CATEGORY_FIX[C.OTHER])


def code_fixes() -> dict[tuple[str, str], str]:
    """(code, category) -> fix for every code with its own row (the SQL's CASE)."""
    return {(f.code, f.category.value): f.fix for f in FIXES if f.code is not None}


def category_fixes() -> dict[str, str]:
    """category -> fix of its general row (the first row of the category without a code,
    else its first row)."""
    return dict(_CATEGORY_FIX)


def _category_fix() -> dict[str, str]:
    out: dict[str, str] = {}
    for f in FIXES:
        if f.code is None:
            out.setdefault(f.category, f.fix)
    for f in FIXES:
        out.setdefault(f.category, f.fix)
    return out


_CATEGORY_FIX = _category_fix()

# Kinds of failure that pass by themselves: retried automatically (engine.auto_retry).
PASSING = frozenset({C.THROTTLED, C.UNAVAILABLE, C.PERMISSION, C.MISSING_REFERENCE})

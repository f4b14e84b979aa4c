"""Values between a local row and Dataverse JSON: the identity both ways, for every type;
a value that does not fit raises DoesNotFit naming the field, never rounds or truncates."""

from __future__ import annotations

import functools
import json
import re
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmsync.domain import FieldSpec, FieldType
from crmsync.mapping.convert import (
    DoesNotFit,
    canonical,
    decoder,
    encoder,
    from_dataverse,
    from_input,
    to_dataverse,
)

INT32 = (-(2**31), 2**31 - 1)


def spec(kind: FieldType, **extra: Any) -> FieldSpec:
    defaults: dict[str, Any] = {}
    if kind is FieldType.INTEGER:
        defaults = {"minimum": INT32[0], "maximum": INT32[1]}
    if kind is FieldType.DECIMAL:
        defaults = {"precision": 2, "minimum": -(10**11), "maximum": 10**11}
    if kind is FieldType.MONEY:
        defaults = {"precision": 4, "minimum": -922_337_203_685_477, "maximum": 922_337_203_685_477}
    return FieldSpec("col", "new_col", kind, **{**defaults, **extra})


def through_json(field: FieldSpec, value: Any) -> Any:
    """Local value -> the JSON Dataverse receives and returns -> local value."""
    wire = json.loads(json.dumps(to_dataverse(field, value)))
    return from_dataverse(field, wire)


CHOICE = spec(FieldType.CHOICE, choices=(("hot", 1), ("warm", 2), ("cold", 3)))
STRATEGIES: dict[FieldType, tuple[FieldSpec, st.SearchStrategy[Any]]] = {
    FieldType.STRING: (spec(FieldType.STRING, max_length=100), st.text()),
    FieldType.MEMO: (spec(FieldType.MEMO), st.text()),
    FieldType.INTEGER: (spec(FieldType.INTEGER), st.integers(*INT32)),
    FieldType.DECIMAL: (
        spec(FieldType.DECIMAL),
        st.decimals(min_value=-(10**11), max_value=10**11, places=2).filter(
            lambda d: len(d.as_tuple().digits) <= 15
        ),
    ),
    FieldType.MONEY: (
        spec(FieldType.MONEY),
        st.decimals(min_value=-(10**10), max_value=10**10, places=4).filter(
            lambda d: len(d.as_tuple().digits) <= 15
        ),
    ),
    FieldType.BOOLEAN: (spec(FieldType.BOOLEAN), st.booleans()),
    FieldType.DATETIME: (
        spec(FieldType.DATETIME),
        st.datetimes(
            min_value=datetime(1753, 1, 1), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
        ).map(lambda d: d.replace(microsecond=0)),
    ),
    FieldType.DATE: (spec(FieldType.DATE), st.dates(min_value=date(1753, 1, 1))),
    FieldType.CHOICE: (CHOICE, st.sampled_from(["hot", "warm", "cold"])),
}


@pytest.mark.parametrize("kind", list(STRATEGIES), ids=str)
def test_local_to_dataverse_to_local_is_the_identity(kind: FieldType) -> None:
    field, values = STRATEGIES[kind]

    @given(values)
    def check(value: Any) -> None:
        back = through_json(field, value)
        assert back == value
        assert type(back) is type(value)
        assert through_json(field, None) is None

    check()


def test_every_type_is_covered() -> None:
    assert set(STRATEGIES) | {FieldType.LOOKUP} == set(FieldType)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (spec(FieldType.INTEGER), 2**31, "is outside"),
        (spec(FieldType.INTEGER, maximum=100), 101, "101 is outside"),
        (spec(FieldType.INTEGER), "12a", "is not a whole number"),
        (spec(FieldType.INTEGER), Decimal("1.5"), "is not a whole number"),
        (spec(FieldType.INTEGER), True, "is not a whole number"),
        (spec(FieldType.DECIMAL), Decimal("1.005"), "more than 2 decimal places"),
        (spec(FieldType.DECIMAL), Decimal("100000000000.01"), "is outside"),
        (spec(FieldType.DECIMAL), "abc", "is not a number"),
        (spec(FieldType.DECIMAL), Decimal("NaN"), "is not a number"),
        (spec(FieldType.DECIMAL, precision=10), Decimal("12345678.1234567891"), "exactly"),
        (spec(FieldType.BOOLEAN), "yes", "is not a yes/no value"),
        (spec(FieldType.BOOLEAN), 2, "is not a yes/no value"),
        (spec(FieldType.DATETIME), "tomorrow", "is not a date and time"),
        (spec(FieldType.DATE), datetime(2026, 1, 1, 12, tzinfo=UTC), "has a time"),
        (spec(FieldType.DATE), "01/02/2026", "is not a date"),
        (CHOICE, "lukewarm", "is not one of the choices ('hot', 'warm', 'cold')"),
        (spec(FieldType.CHOICE, labels=False), "x", "is not a whole number"),
    ],
)
def test_a_value_that_does_not_fit_is_named(field: FieldSpec, value: Any, message: str) -> None:
    with pytest.raises(DoesNotFit, match=re.escape(message)) as info:
        to_dataverse(field, value)
    assert str(info.value).startswith("col: ")
    assert info.value.code == "crmsync.invalid_value"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (CHOICE, 4, "option 4 has no local choice"),
        (spec(FieldType.STRING), 5, "not text"),
        (spec(FieldType.BOOLEAN), "true", "not a yes/no value"),
        (spec(FieldType.DECIMAL), 0.001, "more than 2 decimal places"),
    ],
)
def test_what_dynamics_returns_that_does_not_fit_is_named(
    field: FieldSpec, value: Any, message: str
) -> None:
    with pytest.raises(DoesNotFit, match=re.escape(message)):
        from_dataverse(field, value)


def test_one_json_form_for_equal_values() -> None:
    price = spec(FieldType.DECIMAL)
    assert canonical(price, 1.5) == canonical(price, 1.50) == to_dataverse(price, Decimal("1.50"))
    at = spec(FieldType.DATETIME)
    assert canonical(at, "2026-01-02T03:04:05.000Z") == canonical(at, "2026-01-02T04:04:05+01:00")
    assert to_dataverse(at, datetime(2026, 1, 2, 3, 4, 5, 999_999, tzinfo=UTC)) == (
        "2026-01-02T03:04:05Z"
    )
    # Text a local column holds as a number (SQLite is loosely typed) is sent as text.
    assert to_dataverse(spec(FieldType.STRING), 42) == "42"
    assert to_dataverse(spec(FieldType.BOOLEAN), 1) is True


@pytest.mark.parametrize("kind", list(STRATEGIES), ids=str)
def test_the_fast_encoder_answers_as_to_dataverse(kind: FieldType) -> None:
    field, values = STRATEGIES[kind]
    check = _encodes_as_to_dataverse(field, values)

    check()


# A choice without declared choices: its options' labels, as a worker read them.
READ = spec(
    FieldType.CHOICE,
    choices=(("Hot", 1), ("Warm", 2), ("Cold", 3), ("Très chaud ✓", 100_000_000)),
    options_read=True,
)
UNREAD = spec(FieldType.CHOICE)
LABELS = st.sampled_from([label for label, _ in READ.choices])
READ_OPTIONS = [option for _, option in READ.choices]


@given(LABELS)
def test_a_label_read_from_dynamics_goes_as_its_option_and_comes_back(label: str) -> None:
    assert through_json(READ, label) == label
    assert to_dataverse(READ, label) == dict(READ.choices)[label]
    assert encoder(READ)(label) == to_dataverse(READ, label)


@given(st.sampled_from(READ_OPTIONS))
def test_an_option_from_dynamics_comes_as_its_label_and_goes_back(option: int) -> None:
    assert to_dataverse(READ, from_dataverse(READ, option)) == option
    assert canonical(READ, option) == option


@given(st.integers(*INT32))
def test_a_choice_kept_as_option_values_is_the_identity(option: int) -> None:
    values = spec(FieldType.CHOICE, labels=False)
    assert through_json(values, option) == option
    assert from_input(values, str(option)) == option


def test_a_local_value_that_is_no_option_is_named_with_the_options() -> None:
    with pytest.raises(DoesNotFit) as info:
        to_dataverse(READ, "hot")  # labels match exactly: case counts
    assert str(info.value) == (
        "col: 'hot' is not one of new_col's options in Dynamics (1 'Hot', 2 'Warm', "
        "3 'Cold', 100000000 'Très chaud ✓')"
    )
    with pytest.raises(DoesNotFit, match="is not one of new_col's options"):
        encoder(READ)("hot")
    with pytest.raises(DoesNotFit, match=re.escape("options in Dynamics (none)")):
        to_dataverse(spec(FieldType.CHOICE, options_read=True), "Hot")


def test_an_option_dynamics_added_since_the_start_is_named() -> None:
    with pytest.raises(DoesNotFit) as info:
        from_dataverse(READ, 4)
    message = str(info.value)
    assert message.startswith("col: Dynamics' option 4 is not among new_col's options")
    assert "retried when the workers read a change" in message
    assert info.value.code == "crmsync.invalid_value"


def test_a_label_two_options_share_is_refused_both_ways_it_would_guess() -> None:
    twice = spec(FieldType.CHOICE, choices=(("Hot", 1), ("Hot", 7), ("Cold", 3)), options_read=True)
    assert from_dataverse(twice, 7) == "Hot"  # what Dynamics shows
    for encode in (functools.partial(to_dataverse, twice), encoder(twice)):
        with pytest.raises(
            DoesNotFit, match=r"'Hot' is the label of 2 options of new_col \(1, 7\)"
        ):
            encode("Hot")
    assert encoder(twice)("Cold") == 3


def test_a_label_longer_than_the_local_column_is_refused() -> None:
    long = spec(FieldType.CHOICE, choices=(("x" * 101, 1), ("y" * 100, 2)), options_read=True)
    assert from_dataverse(long, 2) == "y" * 100
    with pytest.raises(DoesNotFit, match="longer than the 100 characters"):
        from_dataverse(long, 1)


def test_a_choice_whose_options_were_not_read_converts_nothing() -> None:
    assert UNREAD.needs_options and not READ.needs_options
    for convert in (to_dataverse, from_dataverse, lambda f, v: encoder(f)(v)):
        with pytest.raises(DoesNotFit, match="options of new_col were not read"):
            convert(UNREAD, "Hot" if convert is not from_dataverse else 1)


@pytest.mark.parametrize(
    ("value", "ok"),
    [("Hot", True), ("x" * 100, True), ("", False), ("x" * 101, False), (1, False), (None, True)],
)
def test_input_for_a_choice_whose_options_the_workers_read_is_a_label(value: Any, ok: bool) -> None:
    """The records API and a CSV import do not read Dynamics: they take text a label can
    be; the workers refuse one that is no option."""
    if ok:
        assert from_input(UNREAD, value) == value
    else:
        with pytest.raises(DoesNotFit, match="is not an option's label"):
            from_input(UNREAD, value)
    assert from_input(READ, "Warm") == "Warm"
    with pytest.raises(DoesNotFit, match="is not one of new_col's options"):
        from_input(READ, "Tepid")


@pytest.mark.parametrize(
    "field",
    [
        READ,
        spec(FieldType.CHOICE, choices=(("Hot", 1), ("Hot", 7)), options_read=True),
        spec(FieldType.CHOICE, labels=False),
    ],
    ids=["read", "shared-label", "option-values"],
)
def test_the_fast_encoder_answers_as_to_dataverse_for_choices_read(field: FieldSpec) -> None:
    check = _encodes_as_to_dataverse(field, LABELS)

    check()


def _json_shapes(field: FieldSpec, locals_: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """What Dataverse returns for ``field``: the JSON of local values, through a JSON
    parser (a decimal arrives as a float or an int), and values near those shapes."""
    wire = locals_.map(lambda v: json.loads(json.dumps(to_dataverse(field, v))))
    near = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=22),
        st.sampled_from(
            [
                "2026-W10-1T08:30:15Z",  # an ISO week date: parsed, but not Dataverse's
                "0999-01-01T00:00:00Z",
                "2026-02-30T00:00:00Z",
                "2026-03-04T08:30:15+01:00",
                "2026-03-04",
                "2026-W10-1",
                "0999-12-31",
                "\uff12\uff10\uff12\uff16-03-04",  # full-width digits
                "2026-03-04T08:30:1\uff15Z",
                1,
                3,
                7,
                9,
                100_000_000,
                1e-05,
                12.345,
                0.30000000000000004,
                2**31,
            ]
        ),
    )
    return st.one_of(wire, near)


DECODED = {
    **{kind: STRATEGIES[kind] for kind in STRATEGIES if kind not in (FieldType.STRING,)},
    "choice-read": (READ, LABELS),
    "choice-shared": (
        spec(FieldType.CHOICE, choices=(("Hot", 1), ("Hot", 7), ("x" * 101, 9)), options_read=True),
        st.nothing(),  # its options come as the values below
    ),
    "choice-values": (spec(FieldType.CHOICE, labels=False), st.integers(*INT32)),
    "integer-range": (spec(FieldType.INTEGER, minimum=0, maximum=100), st.integers(0, 100)),
    "money-0": (spec(FieldType.MONEY, precision=0), st.integers(-(10**14), 10**14).map(Decimal)),
}


@pytest.mark.parametrize("kind", list(DECODED), ids=str)
def test_the_fast_decoder_answers_as_from_and_to_dataverse(kind: Any) -> None:
    """The initial load's decoder: for what Dataverse sends, the local value and the
    JSON form applying it gives (the same type too), or the same error."""
    field, values = DECODED[kind]
    decode = decoder(field)

    @given(_json_shapes(field, values))
    def check(value: Any) -> None:
        try:
            local = from_dataverse(field, value)
            kept = to_dataverse(field, local)
        except DoesNotFit as exc:
            with pytest.raises(DoesNotFit, match=re.escape(str(exc))):
                decode(value)
            return
        got_local, got_kept = decode(value)
        assert (got_local, got_kept) == (local, kept)
        assert type(got_local) is type(local) and type(got_kept) is type(kept)
        if isinstance(local, Decimal):
            assert got_local.as_tuple() == local.as_tuple()  # 12.50 stays 12.50
        if isinstance(local, datetime):
            assert got_local.tzinfo is local.tzinfo

    check()


def _encodes_as_to_dataverse(field: FieldSpec, values: Any) -> Any:
    """A property check: ``encoder(field)`` answers as ``to_dataverse`` (value and type,
    or the same refusal) for ``values`` and near misses of every kind."""
    encode = encoder(field)

    @given(st.one_of(values, st.none(), st.integers(), st.text(max_size=5), st.booleans()))
    def check(value: Any) -> None:
        try:
            expected: Any = to_dataverse(field, value)
        except DoesNotFit as exc:
            with pytest.raises(DoesNotFit, match=re.escape(str(exc))):
                encode(value)
            return
        got = encode(value)
        assert got == expected and type(got) is type(expected)

    return check

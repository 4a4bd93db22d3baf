"""Mapping rows to changes: coercions, absent vs null, constants, required fields, keys, refused rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncengine.config import FieldMapping, KeyConfig, SourceConfig, StreamConfig
from syncengine.mapping import compile_mapping, to_change
from syncengine.model import JSON, Change, Operation, Outcome, Status, Target
from syncengine.readers import BadRow, SourceRow, open_reader

BY_EXTERNAL = KeyConfig(column="erp_id", field="External_Contact_ID")
BY_ID = KeyConfig(column="crm_id", field=None)


def make_stream(
    *fields: FieldMapping,
    match: KeyConfig = BY_EXTERNAL,
    parent: KeyConfig | None = None,
    operation: Operation = Operation.UPDATE,
    source: SourceConfig | None = None,
) -> StreamConfig:
    related = operation in (Operation.UPDATE_RELATED, Operation.DELETE_RELATED)
    return StreamConfig(
        name="contacts",
        source=source or SourceConfig(kind="csv", path=Path("contacts.csv")),
        target=Target(
            operation=operation,
            module="Contacts",
            match_field=match.field,
            related_list="Deals" if related else None,
            related_module="Deals" if related else None,
            parent_match_field=parent.field if parent else None,
        ),
        match=match,
        parent=parent,
        fields=fields,
        batch_size=100,
        linger=0.2,
    )


def column(field: str, name: str, type: str = "string", *, required: bool = False) -> FieldMapping:
    return FieldMapping(field=field, column=name, type=type, required=required)


def change(stream: StreamConfig, values: dict[str, JSON], seq: int = 7) -> Change:
    result = to_change(stream, SourceRow(seq=seq, values=values))
    assert isinstance(result, Change), result
    return result


def refused(stream: StreamConfig, row: SourceRow | BadRow) -> Outcome:
    result = to_change(stream, row)
    assert isinstance(result, Outcome), result
    assert result.status is Status.INVALID
    assert result.change.fields == {}
    return result


def test_good_row_becomes_a_change() -> None:
    """A good row carries stream, seq, target, stripped key, mapped fields and the row itself."""
    stream = make_stream(column("Last_Name", "last"), column("Email", "email"))
    values: dict[str, JSON] = {
        "erp_id": "  C-1 ",
        "last": "Lovelace",
        "email": "ada@example.com",
        "extra": "x",
    }
    assert change(stream, values) == Change(
        stream="contacts",
        seq=7,
        target=stream.target,
        key="C-1",
        parent=None,
        fields={"Last_Name": "Lovelace", "Email": "ada@example.com"},
        source_row=values,
    )


def test_compiled_mapping_matches_to_change() -> None:
    """compile_mapping gives the same result as to_change."""
    stream = make_stream(column("Last_Name", "last"))
    row = SourceRow(seq=1, values={"erp_id": "C-1", "last": "Hopper"})
    assert compile_mapping(stream)(row) == to_change(stream, row)


@pytest.mark.parametrize(
    ("type_", "cell", "sent"),
    [
        ("string", "  padded  ", "  padded  "),
        ("string", 12, "12"),
        ("string", True, "true"),
        ("integer", "12", 12),
        ("integer", " -7 ", -7),
        ("integer", 12, 12),
        ("integer", 12.0, 12),
        ("float", "12.5", 12.5),
        ("float", "-1e3", -1000.0),
        ("float", ".5", 0.5),
        ("float", 3, 3.0),
        ("float", 2.25, 2.25),
        ("boolean", "TRUE", True),
        ("boolean", "yes", True),
        ("boolean", "1", True),
        ("boolean", " No ", False),
        ("boolean", "false", False),
        ("boolean", "0", False),
        ("boolean", True, True),
        ("boolean", 0, False),
        ("date", "2024-02-29", "2024-02-29"),
        ("datetime", "2024-05-10T14:30:00+02:00", "2024-05-10T14:30:00+02:00"),
        ("datetime", "2024-05-10T14:30:00Z", "2024-05-10T14:30:00+00:00"),
        ("datetime", "2024-05-10T14:30+0530", "2024-05-10T14:30:00+05:30"),
        ("datetime", "2024-05-10T14:30:00.750-07:00", "2024-05-10T14:30:00-07:00"),
        ("json", '{"a": [1, null]}', {"a": [1, None]}),
        ("json", "[]", []),
        ("json", {"already": "json"}, {"already": "json"}),
    ],
    ids=lambda v: repr(v) if not isinstance(v, str) or v else "empty",
)
def test_coercions_accept(type_: str, cell: JSON, sent: JSON) -> None:
    """Each type accepts its valid inputs and sends the coerced value."""
    stream = make_stream(column("Value", "v", type_))
    result = change(stream, {"erp_id": "C-1", "v": cell})
    assert result.fields == {"Value": sent}
    assert type(result.fields["Value"]) is type(sent)


@pytest.mark.parametrize(
    ("type_", "cell", "noun"),
    [
        ("string", {"a": 1}, "a string"),
        ("string", [1], "a string"),
        ("integer", "12.5", "an integer"),
        ("integer", "12,5", "an integer"),
        ("integer", "", "an integer"),
        ("integer", "1_000", "an integer"),
        ("integer", 12.5, "an integer"),
        ("integer", True, "an integer"),
        ("float", "12,5x", "a float"),
        ("float", "nan", "a float"),
        ("float", "inf", "a float"),
        ("float", "1e999", "a float"),
        ("float", "1_0", "a float"),
        ("float", False, "a float"),
        ("boolean", "maybe", "a boolean"),
        ("boolean", "2", "a boolean"),
        ("boolean", 2, "a boolean"),
        ("date", "2024-02-30", "a date (YYYY-MM-DD)"),
        ("date", "10/05/2024", "a date (YYYY-MM-DD)"),
        ("date", "20240510", "a date (YYYY-MM-DD)"),
        ("date", "2024-05-10T10:00:00Z", "a date (YYYY-MM-DD)"),
        ("datetime", "2024-05-10T14:30:00", "an ISO 8601 datetime with an offset"),
        ("datetime", "2024-05-10", "an ISO 8601 datetime with an offset"),
        ("datetime", "2024-13-10T14:30:00Z", "an ISO 8601 datetime with an offset"),
        ("datetime", "yesterday", "an ISO 8601 datetime with an offset"),
        ("json", "{not json", "valid JSON"),
    ],
    ids=lambda v: repr(v) if not isinstance(v, str) or v else "empty",
)
def test_coercions_refuse(type_: str, cell: JSON, noun: str) -> None:
    """A value that does not fit its type makes the row INVALID with BAD_VALUE naming column and value."""
    stream = make_stream(column("Value", "revenue", type_))
    outcome = refused(stream, SourceRow(seq=3, values={"erp_id": "C-1", "revenue": cell}))
    assert outcome.code == "BAD_VALUE"
    assert outcome.message is not None
    assert outcome.message.startswith(f"column 'revenue': {cell!r}" if isinstance(cell, str) else "column")
    assert f"is not {noun}" in outcome.message
    assert outcome.change.key == "C-1"


def test_bad_value_message_reads_well() -> None:
    """The message is short and names the column, the value and the type."""
    stream = make_stream(column("Annual_Revenue", "revenue", "float"))
    outcome = refused(stream, SourceRow(seq=1, values={"erp_id": "C-1", "revenue": "12,5x"}))
    assert outcome.message == "column 'revenue': '12,5x' is not a float"


@pytest.mark.parametrize("type_", ["string", "integer", "date", "json"])
def test_absent_is_not_sent_and_null_is_sent(type_: str) -> None:
    """A missing column sends nothing; a present null sends JSON null, whatever the type."""
    stream = make_stream(column("A", "a", type_), column("B", "b", type_))
    assert change(stream, {"erp_id": "C-1", "b": None}).fields == {"B": None}


@pytest.mark.parametrize(
    ("empty", "fields"),
    [("absent", {"Last_Name": "Hopper"}), ("null", {"Last_Name": "Hopper", "Email": None, "Age": None})],
    ids=["empty-absent", "empty-null"],
)
async def test_empty_csv_cells_follow_the_source_setting(tmp_path: Path, empty: str, fields: dict[str, JSON]) -> None:
    """An empty CSV cell is not sent (absent) or clears the field (null), read from a real file."""
    path = tmp_path / "contacts.csv"
    path.write_text("erp_id,last,email,age\nC-1,Hopper,,\n")
    source = SourceConfig(kind="csv", path=path, empty=empty)
    stream = make_stream(
        column("Last_Name", "last"), column("Email", "email"), column("Age", "age", "integer"), source=source
    )
    async with open_reader(source) as reader:
        rows = [row async for row in reader]
    assert change(stream, rows[0].values if isinstance(rows[0], SourceRow) else {}).fields == fields


def test_empty_string_from_jsonl_is_sent_for_strings() -> None:
    """An explicit "" in JSON is a value for a string field (only CSV cells are ambiguous)."""
    stream = make_stream(column("Title", "title"))
    assert change(stream, {"erp_id": "C-1", "title": ""}).fields == {"Title": ""}


def test_constants_are_always_sent() -> None:
    """A constant is sent on every row, whatever the row holds."""
    stream = make_stream(
        FieldMapping(field="Lead_Source", column=None, value="ERP", type="json"),
        FieldMapping(field="Tags", column=None, value=["a"], type="json"),
        column("Last_Name", "last"),
    )
    assert change(stream, {"erp_id": "C-1", "Lead_Source": "ignored"}).fields == {
        "Lead_Source": "ERP",
        "Tags": ["a"],
    }


def test_unknown_columns_stay_in_the_source_row() -> None:
    """Columns without a mapping are not sent, but are kept for the report."""
    stream = make_stream(column("Last_Name", "last"))
    values: dict[str, JSON] = {"erp_id": "C-1", "last": "Knuth", "internal_note": "vip"}
    result = change(stream, values)
    assert result.fields == {"Last_Name": "Knuth"}
    assert result.source_row == values


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "column 'email' is required but missing"),
        ({"email": None}, "column 'email' is required but null"),
        ({"email": ""}, "column 'email' is required but empty"),
        ({"email": "   "}, "column 'email' is required but empty"),
    ],
    ids=["absent", "null", "empty", "blank"],
)
def test_required_field_missing(values: dict[str, JSON], message: str) -> None:
    """A required column that is absent, null or blank makes the row INVALID with MISSING_FIELD."""
    stream = make_stream(column("Email", "email", required=True))
    outcome = refused(stream, SourceRow(seq=4, values={"erp_id": "C-1", **values}))
    assert (outcome.code, outcome.message) == ("MISSING_FIELD", message)
    assert outcome.change.key == "C-1"
    assert outcome.change.seq == 4


def test_required_field_present() -> None:
    """A required column with a value passes."""
    stream = make_stream(column("Email", "email", required=True))
    assert change(stream, {"erp_id": "C-1", "email": "a@b.c"}).fields == {"Email": "a@b.c"}


@pytest.mark.parametrize(
    ("cell", "key"),
    [("C-1", "C-1"), (" C-1\t", "C-1"), (42, "42")],
    ids=["string", "padded", "integer"],
)
def test_external_keys(cell: JSON, key: str) -> None:
    """An external key is the match column's value, stripped; integers are stringified."""
    assert change(make_stream(column("A", "a")), {"erp_id": cell}).key == key


@pytest.mark.parametrize(
    ("values", "code", "message"),
    [
        ({}, "MISSING_KEY", "column 'erp_id' is empty or missing"),
        ({"erp_id": None}, "MISSING_KEY", "column 'erp_id' is empty or missing"),
        ({"erp_id": "  "}, "MISSING_KEY", "column 'erp_id' is empty or missing"),
        ({"erp_id": 1.5}, "BAD_KEY", "column 'erp_id': 1.5 is not a key (a string or an integer)"),
        ({"erp_id": True}, "BAD_KEY", "column 'erp_id': true is not a key (a string or an integer)"),
    ],
    ids=["absent", "null", "blank", "float", "boolean"],
)
def test_bad_external_keys(values: dict[str, JSON], code: str, message: str) -> None:
    """A missing or unusable key makes the row INVALID; the key of the refused change is empty."""
    outcome = refused(make_stream(column("A", "a")), SourceRow(seq=1, values=values))
    assert (outcome.code, outcome.message) == (code, message)
    assert outcome.change.key == ""
    assert outcome.change.source_row == values


@pytest.mark.parametrize(
    ("cell", "key"),
    [
        ("5725767000000524157", "5725767000000524157"),
        (" 123 ", "123"),
        (5725767000000524157, "5725767000000524157"),
    ],
    ids=["string", "padded", "integer"],
)
def test_record_id_keys(cell: JSON, key: str) -> None:
    """A record id is digits, given as text or as a number."""
    assert change(make_stream(column("A", "a"), match=BY_ID), {"crm_id": cell}).key == key


@pytest.mark.parametrize("cell", ["C-1", "12a", "-5", -5, "1 2", "١٢٣"], ids=repr)
def test_record_id_must_be_digits(cell: JSON) -> None:
    """A record id that is not all ASCII digits is refused with BAD_KEY."""
    outcome = refused(make_stream(column("A", "a"), match=BY_ID), SourceRow(seq=1, values={"crm_id": cell}))
    assert outcome.code == "BAD_KEY"
    assert outcome.message is not None and "is not a record id" in outcome.message


def related_stream(parent: KeyConfig) -> StreamConfig:
    return make_stream(
        column("Contact_Role", "role"),
        match=KeyConfig(column="deal_id", field="External_Deal_ID"),
        parent=parent,
        operation=Operation.UPDATE_RELATED,
    )


def test_related_keys() -> None:
    """A related change carries the parent key and the related record's key."""
    stream = related_stream(KeyConfig(column="contact_id", field=None))
    result = change(stream, {"contact_id": 111, "deal_id": "D-9", "role": "Buyer"})
    assert (result.parent, result.key, result.fields) == ("111", "D-9", {"Contact_Role": "Buyer"})
    assert result.order_key == ("Contacts", "111", "D-9")


@pytest.mark.parametrize(
    ("values", "code", "message"),
    [
        ({"deal_id": "D-9"}, "MISSING_PARENT", "column 'contact_id' is empty or missing"),
        ({"deal_id": "D-9", "contact_id": "abc"}, "BAD_KEY", "column 'contact_id': 'abc' is not a record id"),
    ],
    ids=["missing-parent", "parent-not-an-id"],
)
def test_bad_parent_keys(values: dict[str, JSON], code: str, message: str) -> None:
    """A missing or malformed parent key makes the row INVALID, keeping the good related key."""
    outcome = refused(related_stream(KeyConfig(column="contact_id", field=None)), SourceRow(seq=1, values=values))
    assert outcome.code == code
    assert outcome.message is not None and outcome.message.startswith(message)
    assert outcome.change.key == "D-9"
    assert outcome.change.parent is None


def test_delete_related_needs_no_fields() -> None:
    """A delink change has keys and no fields."""
    stream = make_stream(
        match=BY_ID, parent=KeyConfig(column="product_id", field=None), operation=Operation.DELETE_RELATED
    )
    result = change(stream, {"product_id": "1", "crm_id": "2", "note": "n"})
    assert (result.parent, result.key, result.fields) == ("1", "2", {})


def test_bad_row_from_reader() -> None:
    """A reader's BadRow becomes INVALID/BAD_ROW with its reason, and its raw text as the source row."""
    stream = make_stream(column("A", "a"))
    outcome = refused(stream, BadRow(seq=9, raw="1,2,3", reason="row has 3 cells, header has 2"))
    assert (outcome.code, outcome.message) == ("BAD_ROW", "row has 3 cells, header has 2")
    assert outcome.change.seq == 9
    assert outcome.change.key == ""
    assert outcome.change.source_row == {"_raw": "1,2,3"}
    assert outcome.change.stream == "contacts"
    assert outcome.change.target == stream.target


def test_every_problem_is_reported_once() -> None:
    """Several problems give one outcome: the first problem's code, every problem in the message."""
    stream = make_stream(column("Age", "age", "integer"), column("Email", "email", required=True))
    outcome = refused(stream, SourceRow(seq=1, values={"age": "old"}))
    assert outcome.code == "MISSING_KEY"
    assert outcome.message == (
        "column 'erp_id' is empty or missing; column 'age': 'old' is not an integer; "
        "column 'email' is required but missing"
    )


def test_long_values_are_shortened_in_messages() -> None:
    """A huge bad cell does not flood the message."""
    stream = make_stream(column("Age", "age", "integer"))
    outcome = refused(stream, SourceRow(seq=1, values={"erp_id": "C-1", "age": "x" * 10_000}))
    assert outcome.message is not None and len(outcome.message) < 120

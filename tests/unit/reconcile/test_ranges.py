"""The reconciliation's pure core: canonical row hashing, key-range planning and predicates, mismatch reports."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pyarrow as pa
import pytest

from airflow_pg_replication.reconcile.hashing import (
    HASH_MASK,
    ColumnCanon,
    RangeDigest,
    canonical_json,
    canonical_number,
    row_hash,
)
from airflow_pg_replication.reconcile.ranges import (
    SHOWN_KEYS,
    KeyRange,
    KeySpace,
    format_key,
    mismatch_message,
    plan_ranges,
    public_result,
    range_result,
    range_step,
)
from airflow_pg_replication.source.catalog import TableInfo
from airflow_pg_replication.source.type_map import PgColumn, PgType, text_to_arrow


def pg(name: str, **kw) -> PgType:
    return PgType(0, name, **kw)


def arr(name: str) -> PgType:
    return PgType(0, "_" + name, element=pg(name))


NUMERIC_10_2 = ((10 << 16) | 2) + 4
COLUMNS = [
    PgColumn("id", pg("int4")),
    PgColumn("amount", pg("numeric"), NUMERIC_10_2),
    PgColumn("at", pg("timestamptz")),
    PgColumn("doc", pg("jsonb")),
    PgColumn("tags", arr("int4")),
    PgColumn("seen", arr("timestamptz")),
    PgColumn("name", pg("text")),
]
CANON = [ColumnCanon(c) for c in COLUMNS]
PLUS2 = timezone(timedelta(hours=2))


def source_batch(rows: list[tuple]) -> list[pa.Array]:
    """Columns as the source side streams them: PostgreSQL text output through the snapshot type map."""
    return [text_to_arrow([r[j] for r in rows], c) for j, c in enumerate(COLUMNS)]


def digest(arrays: list, limit: int = 100, key_idx: tuple = (0,)) -> RangeDigest:
    side = RangeDigest(limit)
    side.feed(arrays, CANON, list(key_idx))
    return side


SOURCE_ROWS = [
    (
        "1",
        "1.50",
        "2024-03-01 12:00:00+00",
        '{"b": [1, 2.50], "a": {"y": 1.0, "x": "s"}}',
        "{1,2,3}",
        '{"2024-03-01 12:00:00+00"}',
        "alpha",
    ),
    ("2", "-0.00", "2024-03-02 00:30:00+00", '{"k": null}', "{}", None, "beta"),
]


def destination_batch() -> list[pa.Array]:
    """The same two rows as a destination might hand them back: other scales, zones, key order, widths."""
    return [
        pa.array([1, 2], pa.int64()),
        pa.array([Decimal("1.5"), Decimal("0")], pa.decimal128(18, 4)),
        pa.array(
            [datetime(2024, 3, 1, 14, 0, tzinfo=PLUS2), datetime(2024, 3, 2, 2, 30, tzinfo=PLUS2)],
            pa.timestamp("us", tz="+02:00"),
        ),
        pa.array(['{"a":{"x":"s","y":1},"b":[1,2.5]}', '{"k":null}']),
        pa.array([[1, 2, 3], []], pa.list_(pa.int64())),
        pa.array([[datetime(2024, 3, 1, 12, 0)], None], pa.list_(pa.timestamp("us"))),
        pa.array(["alpha", "beta"], pa.large_string()).cast(pa.string()),
    ]


# -- canonical values and hashing ---------------------------------------------------------------------


def test_canonical_number_and_json() -> None:
    assert canonical_number(Decimal("1.500")) == canonical_number("1.5") == canonical_number(1.5) == "1.5"
    assert canonical_number(Decimal("-0.00")) == "0"
    assert canonical_number(Decimal("1E+2")) == canonical_number(100) == "1E+2"
    assert canonical_number(Decimal("NaN")) == "NaN"
    parsed_by_a_driver = {"a": [2.5, "x"], "b": 1}
    assert canonical_json('{"b": 1.0, "a": [2.50, "x"]}') == canonical_json(parsed_by_a_driver)
    assert canonical_json(b'{"a": 1}') == canonical_json('{ "a" : 1 }') == '{"a":1}'
    assert canonical_json('{"a": 1.5}') != canonical_json('{"a": "1.5"}')  # a number never equals a string


def test_equal_rows_hash_equal_across_representations() -> None:
    src, dst = digest(source_batch(SOURCE_ROWS)), digest(destination_batch())
    assert (src.rows, src.digest) == (dst.rows, dst.digest) == (2, src.digest)
    assert src.keys == dst.keys
    assert src.keys[(1,)][1] == 1 and src.keys[(1,)][2] == 1  # display key, count


def test_per_value_path_matches_the_vectorised_path() -> None:
    at, doc, tags, amount = CANON[2], CANON[3], CANON[4], CANON[1]
    col = at.column(text_to_arrow(["2024-03-01 12:00:00+00"], COLUMNS[2]))[0]
    assert at.value(datetime(2024, 3, 1, 14, 0, tzinfo=PLUS2)) == at.value("2024-03-01 12:00:00+00") == col
    assert at.display(col) == "2024-03-01T12:00:00+00:00"
    assert doc.value({"b": 1, "a": 2}) == doc.value('{"a":2,"b":1.0}')
    assert tags.value("[1,2,3]") == tags.value([1, 2, 3]) == ("[", (1, 2, 3))
    assert amount.value(Decimal("1.50")) == amount.value("1.5")
    date_col = ColumnCanon(PgColumn("d", pg("date")))
    assert date_col.value(date(1970, 1, 11)) == date_col.value(datetime(1970, 1, 11, 5)) == 10
    assert date_col.display(10) == "1970-01-11"
    assert ColumnCanon(PgColumn("b", pg("bytea"))).value("\\x0aff") == b"\n\xff"


@pytest.mark.parametrize(
    "column, value",
    [
        (1, "1.51"),
        (2, "2024-03-01 12:00:01+00"),
        (3, '{"b": [1, 2.50], "a": {"y": 1.0, "x": 1}}'),
        (4, "{1,3,2}"),
        (5, '{"2024-03-01 12:00:00+01"}'),
        (6, "Alpha"),
        (6, None),
    ],
)
def test_a_changed_value_changes_the_hash(column: int, value: str | None) -> None:
    changed = [list(r) for r in SOURCE_ROWS]
    changed[0][column] = value
    a, b = digest(source_batch(SOURCE_ROWS)), digest(source_batch([tuple(r) for r in changed]))
    assert a.rows == b.rows and a.digest != b.digest
    assert a.keys[(2,)] == b.keys[(2,)] and a.keys[(1,)][0] != b.keys[(1,)][0]


def test_the_sum_is_order_independent_and_duplicates_do_not_cancel() -> None:
    one, two = SOURCE_ROWS
    assert digest(source_batch([one, two])).digest == digest(source_batch([two, one])).digest
    dup = digest(source_batch([one, one, two]), key_idx=())
    assert dup.digest != digest(source_batch([two])).digest  # XOR would have cancelled the pair
    assert (
        dup.digest
        == (
            2 * row_hash(tuple(c.column(a)[0] for c, a in zip(CANON, source_batch([one]))))
            + digest(source_batch([two])).digest
        )
        & HASH_MASK
    )
    assert sorted(entry[2] for entry in dup.keys.values()) == [1, 2]  # no key: rows counted by content


def test_key_detail_is_dropped_past_the_limit() -> None:
    side = digest(source_batch(SOURCE_ROWS), limit=1)
    assert side.rows == 2 and side.keys is None


# -- key ranges -----------------------------------------------------------------------------------------


def table(*key: str, columns=None) -> TableInfo:
    columns = columns or (PgColumn("region", pg("text")), PgColumn("n", pg("int8")), PgColumn("v", pg("text")))
    return TableInfo("public", "t", 1, "r", "d", tuple(columns), tuple(key))


class FakeClient:
    @staticmethod
    def escape_column_name(n: str) -> str:
        return f'"{n}"'


def test_range_step_and_plan() -> None:
    assert [range_step(rows, 4) for rows in (1, 4, 5, 10, 16)] == [1, 1, 2, 3, 4]
    assert plan_ranges([], False) == [KeyRange(None, None)]
    b1, b2 = (("b", "1"), ("b", 1)), (("c", "7"), ("c", 7))
    assert plan_ranges([b1, b2], True) == [
        KeyRange(None, b1),
        KeyRange(b1, b2),
        KeyRange(b2, None),
        KeyRange(None, None, nulls=True),
    ]


def test_typed_bounds_and_queries() -> None:
    keys = KeySpace(table("region", "n"), nullable=False)
    assert keys.typed_bounds([]) == []
    assert keys.typed_bounds([("b", "10"), ("c", "-2")]) == [(("b", "10"), ("b", 10)), (("c", "-2"), ("c", -2))]
    query = keys.bounds_query().as_string(None)
    assert 'ORDER BY "region" COLLATE "C", "n"' in query and "(rn - 1) %% %s = 0" in query
    assert "IS NOT NULL" not in query
    assert "IS NOT NULL" in KeySpace(table("region"), nullable=True).bounds_query().as_string(None)
    assert keys.count_query().as_string(None) == 'SELECT count(*) FROM "public"."t"'


def test_predicates_select_the_same_range_on_both_sides() -> None:
    keys = KeySpace(table("region", "n"), nullable=False)
    lower, upper = (("b", "10"), ("b", 10)), (("c", "-2"), ("c", -2))
    pg_sql = keys.pg_predicate(KeyRange(lower, upper)).as_string(None)
    assert pg_sql == (
        '("region" COLLATE "C", "n") >= (\'b\', \'10\') AND ("region" COLLATE "C", "n") < (\'c\', \'-2\')'
    )
    where, params = keys.dest_predicate(FakeClient, KeyRange(lower, upper))
    assert where == (
        '(("region" > %s) OR ("region" = %s AND "n" >= %s)) AND (("region" < %s) OR ("region" = %s AND "n" < %s))'
    )
    assert params == ["b", "b", 10, "c", "c", -2]
    assert keys.pg_predicate(KeyRange(None, None)) is None
    assert keys.dest_predicate(FakeClient, KeyRange(None, None)) == (None, [])
    nullable = KeySpace(table("region"), nullable=True)
    assert nullable.dest_predicate(FakeClient, KeyRange(None, None)) == ('"region" IS NOT NULL', [])
    assert nullable.dest_predicate(FakeClient, KeyRange(None, None, nulls=True)) == ('("region" IS NULL)', [])
    assert nullable.pg_predicate(KeyRange(None, None, nulls=True)).as_string(None) == '"region" IS NULL'
    uuid_key = KeySpace(table("u", columns=[PgColumn("u", pg("uuid"))]), nullable=False)
    assert (
        uuid_key.pg_predicate(KeyRange(None, (("x",), ("x",)))).as_string(None) == '(("u"::text COLLATE "C")) < (\'x\')'
    )
    assert KeySpace(table(), nullable=False).pg_predicate(KeyRange(None, None)) is None


# -- comparing and reporting ------------------------------------------------------------------------------


def rows(*specs: tuple) -> RangeDigest:
    """A digest of (id, name) rows keyed by id."""
    cols = [PgColumn("id", pg("int4")), PgColumn("name", pg("text"))]
    side = RangeDigest(100)
    side.feed(
        [pa.array([s[0] for s in specs], pa.int32()), pa.array([s[1] for s in specs], pa.string())],
        [ColumnCanon(c) for c in cols],
        [0],
    )
    return side


def test_range_result_names_the_range_and_differing_keys() -> None:
    rng = KeyRange(((("4",), (4,))), (("8",), (8,)))
    src = rows((4, "a"), (5, "b"), (6, "c"), (7, "d"))
    dst = rows((4, "a"), (6, "C"), (7, "d"), (7, "d"), (9, "x"))
    res = range_result(1, 3, rng, ["id"], src, dst)
    assert res["label"] == "range 2/3 [id=4 .. id=8)"
    assert (res["ok"], res["detail"], res["lower"], res["upper"]) == (False, True, 4, 8)
    assert (res["missing"], res["extra"], res["changed"]) == ([5], [7, 9], [6])
    assert (res["source_rows"], res["destination_rows"]) == (4, 5)
    assert "ok" not in public_result(res)
    assert (
        range_result(
            0,
            1,
            KeyRange(None, None),
            ["id"],
            src,
            rows(*[(i, n) for i, n in [(7, "d"), (6, "c"), (5, "b"), (4, "a")]]),
        )["ok"]
        is True
    )

    out = {"lsn": "0/16B3748", "ranges": 3, "rows": 4, "destination_rows": 5}
    message = mismatch_message("public.t", out, [res], ["id"])
    assert message.splitlines()[0] == (
        "public.t: destination differs from the source at LSN 0/16B3748: "
        "1 of 3 range(s) differ (source 4 rows, destination 5 rows)"
    )
    assert (
        "range 2/3 [id=4 .. id=8): source 4 rows, destination 5 rows; missing in destination: id=5; "
        "extra in destination: id=7, id=9; changed: id=6"
    ) in message
    assert message.endswith("Fix: trigger the table's DAG with full_refresh=true to reload it.")


def test_mismatch_message_without_detail_and_long_lists() -> None:
    small, big = rows((1, "a")), RangeDigest(1, rows=3, digest=1, keys=None)
    res = range_result(2, 3, KeyRange((("b", "1"), ("b", 1)), None), ["region", "n"], small, big)
    assert res["label"] == "range 3/3 [(region='b', n=1) .. end)" and res["detail"] is False
    out = {"lsn": "0/1", "ranges": 3, "rows": 1, "destination_rows": 3}
    assert "too many rows to list the keys" in mismatch_message("public.t", out, [res], ["region", "n"])
    many = {
        "label": "range 1/1 (whole table: no key)",
        "source_rows": 0,
        "destination_rows": 12,
        "detail": True,
        "missing": [],
        "extra": [[i, "x"] for i in range(SHOWN_KEYS + 2)],
        "changed": [],
    }
    text = mismatch_message("public.t", {**out, "ranges": 1}, [many], [])
    assert "extra in destination: [0, 'x'], [1, 'x']" in text and "and 2 more" in text
    assert format_key([1, "a"], ["a", "b"]) == "(a=1, b='a')" and format_key(5, []) == "5"
    assert (
        range_result(0, 2, KeyRange(None, None, nulls=True), ["id"], small, small)["label"]
        == "range 1/2 (keys with NULLs)"
    )

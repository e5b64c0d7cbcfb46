"""Unit tests for the PostgreSQL TEXT -> Arrow type mapping (typemap / textparse)."""

from __future__ import annotations

import math
from datetime import date, datetime, time, timezone
from decimal import Decimal

import pyarrow as pa
import pytest

from airflow_pg_replication.source import text_values as textparse
from airflow_pg_replication.source.type_map import (
    TYPE_CATALOG_SQL,
    PgColumn,
    PgType,
    TextParseError,
    arrow_type,
    dlt_column_hints,
    numeric_precision_scale,
    resolve_types,
    text_to_arrow,
    text_to_table,
)

UTC = timezone.utc
I64_INF = 2**63 - 1
I32_INF = 2**31 - 1


def pg(name: str, **kw) -> PgType:
    return PgType(0, name, **kw)


def arr(name: str, **kw) -> PgType:
    return PgType(0, "_" + name, element=PgType(0, name, **kw), delimiter=kw.get("delimiter", ","))


def numeric_typmod(p: int, s: int) -> int:
    return ((p << 16) | (s & 0x7FF)) + 4


def col(t: PgType | str, typmod: int = -1, name: str = "c") -> PgColumn:
    return PgColumn(name, pg(t) if isinstance(t, str) else t, typmod)


def conv(t: PgType | str, values, typmod: int = -1) -> pa.Array:
    result = text_to_arrow(values, col(t, typmod))
    result.validate(full=True)
    return result


# --------------------------------------------------------------------------- catalog


# (oid, nspname, typname, typtype, typcategory, typbasetype, typtypmod, typelem, typdelim)
CATALOG_ROWS = [
    (20, "pg_catalog", "int8", "b", "N", 0, -1, 0, ","),
    (603, "pg_catalog", "box", "b", "G", 0, -1, 0, ";"),
    (1007, "pg_catalog", "_int4", "b", "A", 0, -1, 23, ","),
    (23, "pg_catalog", "int4", "b", "N", 0, -1, 0, ","),
    (1020, "pg_catalog", "_box", "b", "A", 0, -1, 603, ";"),
    (1700, "pg_catalog", "numeric", "b", "N", 0, -1, 0, ","),
    (16388, "public", "_mood", "b", "A", 0, -1, 16389, ","),
    (16389, "public", "mood", "e", "E", 0, -1, 0, ","),
    (16394, "public", "money2", "d", "N", 1700, 655366, 0, ","),
    (16395, "public", "_m3", "b", "A", 0, -1, 16396, ","),
    (16396, "public", "m3", "d", "N", 16394, -1, 0, ","),
    (16399, "public", "ia", "d", "A", 1007, -1, 0, ","),
    (16400, "public", "citext", "b", "S", 0, -1, 0, ","),
]


def test_catalog_sql_shape():
    assert TYPE_CATALOG_SQL.count("%s") == 1
    assert "WITH RECURSIVE" in TYPE_CATALOG_SQL
    for name in (
        "oid",
        "nspname",
        "typname",
        "typtype",
        "typcategory",
        "typbasetype",
        "typtypmod",
        "typelem",
        "typdelim",
    ):
        assert f"AS {name}" in TYPE_CATALOG_SQL


def test_resolve_types_domains_arrays_enums():
    types = resolve_types(CATALOG_ROWS)
    assert types[20] == PgType(20, "int8")
    money2, m3 = types[16394], types[16396]
    assert (money2.name, money2.typmod, money2.element) == ("numeric", 655366, None)
    assert (m3.oid, m3.name, m3.typmod) == (16396, "numeric", 655366)  # domain over domain
    assert types[16395].element == m3
    assert arrow_type(PgColumn("x", types[16395])) == pa.list_(pa.decimal128(10, 2))
    assert types[16389].is_enum and types[16388].element.is_enum
    assert types[16399].name == "_int4" and types[16399].element == types[23]
    assert types[1020].delimiter == ";"
    assert types[16400].schema == "public"
    assert arrow_type(PgColumn("x", types[16400])) == pa.string()


def test_resolve_types_dict_rows_and_missing():
    names = ("oid", "nspname", "typname", "typtype", "typcategory", "typbasetype", "typtypmod", "typelem", "typdelim")
    types = resolve_types([dict(zip(names, row)) for row in CATALOG_ROWS])
    assert types[16396].typmod == 655366
    with pytest.raises(KeyError, match="1700"):
        resolve_types([r for r in CATALOG_ROWS if r[0] != 1700])


def test_numeric_typmod():
    assert numeric_precision_scale(-1) is None
    assert numeric_precision_scale(655366) == (10, 2)
    assert numeric_precision_scale(198658) == (3, -2)  # numeric(3,-2), from PostgreSQL 15
    assert numeric_precision_scale(numeric_typmod(2, 5)) == (2, 5)


# --------------------------------------------------------------------------- types / hints

ARROW_TYPES = [
    ("int2", -1, pa.int16()),
    ("int4", -1, pa.int32()),
    ("int8", -1, pa.int64()),
    ("float4", -1, pa.float32()),
    ("float8", -1, pa.float64()),
    ("bool", -1, pa.bool_()),
    ("numeric", numeric_typmod(10, 2), pa.decimal128(10, 2)),
    ("numeric", numeric_typmod(38, 0), pa.decimal128(38, 0)),
    ("numeric", numeric_typmod(50, 10), pa.decimal256(50, 10)),
    ("numeric", numeric_typmod(3, -2), pa.decimal128(5, 0)),
    ("numeric", numeric_typmod(2, 5), pa.decimal128(5, 5)),
    ("numeric", -1, pa.decimal128(38, 9)),
    ("text", -1, pa.string()),
    ("varchar", 9, pa.string()),
    ("bpchar", 8, pa.string()),
    ("name", -1, pa.string()),
    ("uuid", -1, pa.string()),
    ("interval", -1, pa.string()),
    ("timetz", -1, pa.string()),
    ("inet", -1, pa.string()),
    ("json", -1, pa.string()),
    ("jsonb", -1, pa.string()),
    ("xml", -1, pa.string()),
    ("money", -1, pa.string()),
    ("bytea", -1, pa.binary()),
    ("date", -1, pa.date32()),
    ("time", -1, pa.time64("us")),
    ("timestamp", -1, pa.timestamp("us")),
    ("timestamptz", -1, pa.timestamp("us", "UTC")),
]


@pytest.mark.parametrize(("name", "typmod", "expected"), ARROW_TYPES)
def test_arrow_type(name, typmod, expected):
    assert arrow_type(col(name, typmod)) == expected
    assert conv(name, [None], typmod).type == expected


def test_arrow_type_enum_array_and_foreign_schema():
    assert arrow_type(col(pg("mood", is_enum=True))) == pa.string()
    assert arrow_type(col(pg("int8", schema="myschema"))) == pa.string()
    assert arrow_type(col(arr("int8"))) == pa.list_(pa.int64())
    assert arrow_type(col(arr("numeric"), numeric_typmod(10, 2))) == pa.list_(pa.decimal128(10, 2))


@pytest.mark.parametrize(
    ("name", "typmod", "hints"),
    [
        ("int2", -1, {"data_type": "bigint", "precision": 16}),
        ("int4", -1, {"data_type": "bigint", "precision": 32}),
        ("int8", -1, {"data_type": "bigint"}),
        ("float4", -1, {"data_type": "double"}),
        ("numeric", numeric_typmod(12, 3), {"data_type": "decimal", "precision": 12, "scale": 3}),
        ("numeric", -1, {"data_type": "decimal", "precision": 38, "scale": 9}),
        ("bool", -1, {"data_type": "bool"}),
        ("text", -1, {"data_type": "text"}),
        ("interval", -1, {"data_type": "text"}),
        ("json", -1, {"data_type": "json"}),
        ("jsonb", -1, {"data_type": "json"}),
        ("bytea", -1, {"data_type": "binary"}),
        ("date", -1, {"data_type": "date"}),
        ("time", -1, {"data_type": "time", "precision": 6}),
        ("timestamp", -1, {"data_type": "timestamp", "precision": 6, "timezone": False}),
        ("timestamptz", -1, {"data_type": "timestamp", "precision": 6, "timezone": True}),
    ],
)
def test_dlt_column_hints(name, typmod, hints):
    assert dlt_column_hints(col(name, typmod)) == {"name": "c", "nullable": True, **hints}


def test_dlt_column_hints_array_and_not_null():
    assert dlt_column_hints(col(arr("int4")))["data_type"] == "json"
    hints = dlt_column_hints(PgColumn("k", pg("int8"), -1, nullable=False))
    assert hints == {"name": "k", "nullable": False, "data_type": "bigint"}


# --------------------------------------------------------------------------- scalars


def test_integers():
    assert conv("int2", ["-32768", "32767", None, "0"]).to_pylist() == [-32768, 32767, None, 0]
    big = ["9223372036854775807", "-9223372036854775808"]
    assert conv("int8", big).to_pylist() == [2**63 - 1, -(2**63)]
    assert conv("oid", ["4294967295"]).to_pylist() == [4294967295]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("int2", "32768"),
        ("int4", "1.5"),
        ("int8", ""),
        ("int4", " 1"),
        ("int8", "9223372036854775808"),
    ],
)
def test_integer_errors_name_column_and_value(name, value):
    with pytest.raises(TextParseError) as err:
        text_to_arrow(["1", value], col(name, name="qty"))
    assert "'qty'" in str(err.value) and repr(value) in str(err.value)
    assert err.value.column == "qty" and err.value.value == value


def test_floats_keep_nan_and_infinity():
    values = conv("float8", ["1.5", "-0", "NaN", "Infinity", "-Infinity", "1e+300", "4.9e-324", None])
    out = values.to_pylist()
    assert out[0] == 1.5 and math.copysign(1, out[1]) == -1 and math.isnan(out[2])
    assert out[3:7] == [math.inf, -math.inf, 1e300, 5e-324] and out[7] is None
    f4 = conv("float4", ["0.1", "3.4028235e+38", "1e-45", "NaN"])
    assert f4.type == pa.float32()
    assert f4.to_pylist()[:3] == pa.array([0.1, 3.4028235e38, 1e-45], pa.float32()).to_pylist()
    assert math.isnan(f4.to_pylist()[3])


def test_numeric_with_typmod():
    out = conv("numeric", ["12345678.90", "-0.01", "0.00", None], numeric_typmod(10, 2))
    assert out.to_pylist() == [Decimal("12345678.90"), Decimal("-0.01"), Decimal("0.00"), None]
    nines = "9" * 38
    out = conv("numeric", [nines, "-" + nines], numeric_typmod(38, 0))
    assert out.to_pylist() == [Decimal(nines), Decimal("-" + nines)]
    wide = "1234567890" * 4 + ".0123456789"
    out = conv("numeric", [wide], numeric_typmod(50, 10))
    assert out.type == pa.decimal256(50, 10) and out.to_pylist() == [Decimal(wide)]
    assert conv("numeric", ["12300", "-99900"], numeric_typmod(3, -2)).to_pylist() == [
        Decimal("12300"),
        Decimal("-99900"),
    ]
    assert conv("numeric", ["0.00012"], numeric_typmod(2, 5)).to_pylist() == [Decimal("0.00012")]


def test_numeric_unbounded_is_exact_decimal_38_9():
    values = ["0.000000001", "1" * 29, "-" + "1" * 29 + ".123456789", "1.50000000000000000000", "0", "00.10", None]
    out = conv("numeric", values)
    assert out.type == pa.decimal128(38, 9)
    assert out.to_pylist() == [
        Decimal("1E-9"),
        Decimal("1" * 29),
        Decimal("-" + "1" * 29 + ".123456789"),
        Decimal("1.5"),
        Decimal(0),
        Decimal("0.1"),
        None,
    ]


@pytest.mark.parametrize(
    ("value", "typmod", "reason"),
    [
        ("0.0000000001", -1, "fractional digits"),
        ("1" * 30, -1, "integer digits"),
        ("9" * 39, numeric_typmod(38, 0), "integer digits"),  # Arrow's own cast would wrap around
        ("123456789.12", numeric_typmod(10, 2), "integer digits"),
        ("NaN", -1, "NaN/Infinity"),
        ("Infinity", numeric_typmod(10, 2), "NaN/Infinity"),
        ("-Infinity", -1, "NaN/Infinity"),
        ("1e5", -1, "not a plain numeric"),
        ("", -1, "not a plain numeric"),
    ],
)
def test_numeric_errors(value, typmod, reason):
    with pytest.raises(TextParseError, match=reason) as err:
        text_to_arrow(["1", None, value], col("numeric", typmod, name="amount"))
    assert err.value.column == "amount" and err.value.value == value


def test_bool():
    assert conv("bool", ["t", "f", None]).to_pylist() == [True, False, None]
    with pytest.raises(TextParseError, match="'true'"):
        conv("bool", ["t", "true"])


def test_text_like_types_pass_through():
    values = ["", None, "é😀 ünïcode", "  padded  ", "NULL", "line\nbreak", '"quoted"']
    assert conv("text", values).to_pylist() == values
    assert conv("bpchar", ["ab  ", "    "], 8).to_pylist() == ["ab  ", "    "]
    assert conv(pg("mood", is_enum=True), ["happy"]).to_pylist() == ["happy"]
    iso = ["P1Y2M3DT4H5M6.789S", "P-1D", "PT0S", "P-1Y-2M3DT-4H-5M-6.789S"]
    assert conv("interval", iso).to_pylist() == iso
    uuid = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert conv("uuid", [uuid, None]).to_pylist() == [uuid, None]
    assert conv("timetz", ["12:34:56.5+02"]).to_pylist() == ["12:34:56.5+02"]


def test_json_null_is_not_sql_null():
    values = ['{"a": null}', "null", None, '[1, "x"]', '"é"']
    out = conv("jsonb", values)
    assert out.type == pa.string() and out.to_pylist() == values


def test_bytea():
    values = ["\\x", "\\x00ff", "\\x0041004200", None, "\\xDEADbeef"]
    out = conv("bytea", values)
    assert out.to_pylist() == [b"", b"\x00\xff", b"\x00A\x00B\x00", None, b"\xde\xad\xbe\xef"]
    sliced = text_to_arrow(pa.array(values).slice(1, 3), col("bytea"))
    sliced.validate(full=True)
    assert sliced.to_pylist() == [b"\x00\xff", b"\x00A\x00B\x00", None]
    assert conv("bytea", pa.array([], pa.string())).to_pylist() == []
    for bad in ["\\000", "\\x0", "\\xzz", "00ff"]:
        with pytest.raises(TextParseError, match="hex format"):
            conv("bytea", ["\\x00", bad])


# --------------------------------------------------------------------------- dates / times


def ints(a: pa.Array, bits: int = 64) -> list:
    return a.view(pa.int32() if bits == 32 else pa.int64()).to_pylist()


def test_date():
    values = [
        "2019-01-01",
        "1970-01-01",
        "4713-01-01 BC",
        "0001-01-01 BC",
        "0001-02-29 BC",
        "0400-02-29",
        "12345-06-07",
        "5874897-12-31",
        "infinity",
        "-infinity",
        None,
    ]
    out = conv("date", values)
    assert ints(out, 32) == [
        17897,
        0,
        -2440550,
        -719528,
        -719469,
        -573372,
        3789548,
        2145042905,
        I32_INF,
        -I32_INF,
        None,
    ]  # days, from PostgreSQL
    assert conv("date", ["2019-01-01", None]).to_pylist() == [date(2019, 1, 1), None]


def test_time():
    values = ["00:00:00", "12:34:56.5", "23:59:59.999999", "24:00:00", "01:02:03.04", None]
    out = conv("time", values)
    assert ints(out) == [0, 45296500000, 86399999999, 86399999999, 3723040000, None]
    assert out.to_pylist()[1] == time(12, 34, 56, 500000)


def test_timestamp_fraction_digits():
    values = ["2019-01-01 00:00:00"] + [f"2019-01-01 00:00:00.{'123456'[:n]}" for n in range(1, 7)]
    out = conv("timestamp", [*values, None])
    base = 1546300800 * 10**6
    assert ints(out) == [
        base,
        base + 100000,
        base + 120000,
        base + 123000,
        base + 123400,
        base + 123450,
        base + 123456,
        None,
    ]
    assert out.to_pylist()[6] == datetime(2019, 1, 1, 0, 0, 0, 123456)


def test_timestamp_special_values_keep_row_order():
    values = [
        "2019-01-01 00:00:00",
        "infinity",
        "12345-01-01 01:02:03.5",
        "4713-11-24 00:00:00 BC",
        None,
        "-infinity",
        "1999-12-31 23:59:59.999999",
    ]
    assert ints(conv("timestamp", values)) == [
        1546300800 * 10**6,
        I64_INF,
        327403386123500000,
        -210835180800 * 10**6,
        None,
        -I64_INF,
        946684799999999,
    ]


def test_timestamptz_offsets_and_specials():
    values = [
        "2019-01-01 00:00:00.123456+00",
        "2019-01-01 05:30:00+05:30",
        "2018-12-31 16:00:00-08",
        "2019-06-01 00:00:00+05:53:28",
        "0001-01-01 00:00:00+00 BC",
        "infinity",
        None,
    ]
    out = conv("timestamptz", values)
    assert out.type == pa.timestamp("us", tz="UTC")
    assert ints(out) == [
        1546300800123456,
        1546300800000000,
        1546300800000000,
        1559325992000000,
        -62167219200000000,
        I64_INF,
        None,
    ]
    assert out[0].as_py() == datetime(2019, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)


def test_exact_path_agrees_with_arrow_parser():
    stamps = [
        f"{y:04d}-{m:02d}-{d:02d} {h:02d}:{m:02d}:{d:02d}.{f}"
        for y, m, d, h, f in [
            (1, 1, 1, 0, "0"),
            (1582, 10, 15, 13, "5"),
            (1900, 2, 28, 23, "999999"),
            (2000, 2, 29, 12, "000001"),
            (2024, 12, 31, 1, "25"),
            (9999, 12, 31, 23, "999999"),
        ]
    ]
    for tz, suffix in [(False, ""), (True, "+00"), (True, "-03:30")]:
        values = pa.array([s + suffix for s in stamps])
        fast = pa.compute.cast(values, pa.timestamp("us", "UTC" if tz else None))
        assert textparse.exact_timestamp(values, "c", tz=tz).equals(fast)
    days = pa.array([s[:10] for s in stamps])
    assert textparse.exact_date(days, "c").equals(pa.compute.cast(days, pa.date32()))
    times = pa.array([s[11:] for s in stamps])
    assert textparse.exact_time(times, "c").equals(textparse._fast_time(times))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("timestamp", "294276-12-31 23:59:59.999999"),  # valid in PostgreSQL, beyond Arrow's us
        ("timestamp", "2019-01-01 00:00:00+00"),
        ("timestamptz", "2019-01-01 00:00:00"),
        ("date", "2019-01-01 00:00:00"),
        ("date", "01/02/2019"),
        ("time", "25:00:00"),
        ("timestamptz", "Infinity"),
    ],
)
def test_datetime_errors(name, value):
    with pytest.raises(TextParseError) as err:
        conv(name, ["infinity" if name != "time" else "00:00:00", value])
    assert err.value.value == value


# --------------------------------------------------------------------------- arrays


def test_int_array():
    values = ["{1,NULL,3}", "{}", None, "[0:1]={7,8}", "{-5}"]
    out = conv(arr("int4"), values)
    assert out.type == pa.list_(pa.int32())
    assert out.to_pylist() == [[1, None, 3], [], None, [7, 8], [-5]]


def test_text_array_quoting_and_escapes():
    values = [
        '{a,"b c",NULL,"NULL","x\\"y",""}',
        '{""}',
        "{}",
        '{"a\nb","back\\\\slash",","}',
        '{"{",],[,null}',
        None,
        "{plain,words}",
    ]
    out = conv(arr("text"), values)
    assert out.to_pylist() == [
        ["a", "b c", None, "NULL", 'x"y', ""],
        [""],
        [],
        ["a\nb", "back\\slash", ","],
        ["{", "]", "[", None],
        None,
        ["plain", "words"],
    ]


def test_text_array_split_fast_path_and_regex_rows_mixed():
    # quoted elements without delimiters or escapes split directly; the rest need the tokeniser
    values = ['{"x y",z}', '{"a,b",c}', None, '{"q \\" r",s}', "{}", '{"1","2"}', '{"{,}"}', '{u,"NULL",NULL}']
    assert conv(arr("text"), values).to_pylist() == [
        ["x y", "z"],
        ["a,b", "c"],
        None,
        ['q " r', "s"],
        [],
        ["1", "2"],
        ["{,}"],
        ["u", "NULL", None],
    ]
    assert conv(arr("text"), ['{"x y"}', '{"a b",c}']).to_pylist() == [["x y"], ["a b", "c"]]  # no regex row


def test_arrays_of_typed_elements():
    assert conv(arr("numeric"), ["{1.50,NULL,-2.00}"], numeric_typmod(10, 2)).to_pylist() == [
        [Decimal("1.50"), None, Decimal("-2.00")]
    ]
    tstz = conv(arr("timestamptz"), ['{"2019-01-01 00:00:00.5+00",infinity}'])
    assert ints(tstz.flatten()) == [1546300800500000, I64_INF]
    assert conv(arr("bytea"), ['{"\\\\x00ff",NULL}']).to_pylist() == [[b"\x00\xff", None]]
    assert conv(arr("bpchar"), ['{"ab  ",cd}'], 8).to_pylist() == [["ab  ", "cd"]]
    assert conv(arr("jsonb"), ['{"null",NULL,"{\\"a\\": 1}"}']).to_pylist() == [["null", None, '{"a": 1}']]
    assert conv(arr("bool"), ["{t,f,NULL}"]).to_pylist() == [[True, False, None]]
    box = conv(arr("box", delimiter=";"), ["{(3,4),(1,2);(1,1),(0,0)}"])
    assert box.to_pylist() == [["(3,4),(1,2)", "(1,1),(0,0)"]]


def test_array_of_domain_uses_domain_typmod():
    types = resolve_types(CATALOG_ROWS)
    out = text_to_arrow(["{1.50,NULL}", None], PgColumn("m", types[16395], -1))
    assert out.type == pa.list_(pa.decimal128(10, 2))
    assert out.to_pylist() == [[Decimal("1.50"), None], None]


def test_array_sliced_and_chunked_input():
    values = pa.chunked_array([["{9}", '{"x y"}'], [None, "{1,2}"]])
    assert conv(arr("text"), values).to_pylist() == [["9"], ["x y"], None, ["1", "2"]]
    sliced = pa.array(["{0}", '{"a",b}', "{}", "{c}"]).slice(1, 2)
    assert conv(arr("text"), sliced).to_pylist() == [["a", "b"], []]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("{{1,2},{3,4}}", "multi-dimensional"),
        ("[1:2][1:2]={{1,2},{3,4}}", "multi-dimensional"),
        ("{{}}", "multi-dimensional"),
        ("{1,2", "malformed"),
        ('{"a}', "malformed"),
        ("{1,,2}", "malformed"),
        ("1,2", "malformed"),
    ],
)
def test_array_errors(value, reason):
    with pytest.raises(TextParseError, match=reason) as err:
        text_to_arrow(["{1}", value], col(arr("int4"), name="tags"))
    assert err.value.column == "tags" and err.value.value == value


def test_array_element_errors_name_the_column():
    with pytest.raises(TextParseError, match=r"'c\[\]'.*'x'"):
        conv(arr("int4"), ["{1,x}"])
    with pytest.raises(TextParseError, match="NaN"):
        text_to_arrow(["{NaN}"], PgColumn("tags", arr("numeric"), -1))


# --------------------------------------------------------------------------- tables / dlt


def test_text_to_table():
    pg_columns = [
        PgColumn("id", pg("int8"), -1, nullable=False),
        PgColumn("name", pg("text")),
        PgColumn("tags", arr("int4")),
    ]
    table = text_to_table(
        {"tags": pa.array(["{1}", None]), "id": ["1", "2"], "name": pa.chunked_array([["a"], [None]])}, pg_columns
    )
    assert table.column_names == ["id", "name", "tags"]
    assert table.schema.field("id").type == pa.int64() and not table.schema.field("id").nullable
    assert table.to_pylist() == [{"id": 1, "name": "a", "tags": [1]}, {"id": 2, "name": None, "tags": None}]
    with pytest.raises(ValueError, match="missing \\['tags'\\], extra \\['other'\\]"):
        text_to_table({"id": [], "name": [], "other": []}, pg_columns)


def test_table_loads_through_dlt_into_duckdb(tmp_path, monkeypatch):
    dlt = pytest.importorskip("dlt")
    duckdb = pytest.importorskip("duckdb")
    monkeypatch.setenv("RUNTIME__DLTHUB_TELEMETRY", "false")
    specs = [  # name, type, typmod, values, expected DuckDB type
        ("id", pg("int4"), -1, ["1", "2", "3"], "INTEGER"),
        ("i2", pg("int2"), -1, ["-32768", None, "7"], "SMALLINT"),
        ("i8", pg("int8"), -1, ["9223372036854775807", "0", None], "BIGINT"),
        ("f8", pg("float8"), -1, ["1.5", "NaN", "-Infinity"], "DOUBLE"),
        ("n", pg("numeric"), numeric_typmod(10, 2), ["12345678.90", "-0.01", None], "DECIMAL(10,2)"),
        ("nu", pg("numeric"), -1, ["1" * 29 + ".000000001", "0", None], "DECIMAL(38,9)"),
        ("b", pg("bool"), -1, ["t", "f", None], "BOOLEAN"),
        ("t", pg("text"), -1, ["é😀", "", None], "VARCHAR"),
        ("by", pg("bytea"), -1, ["\\x00ff", "\\x", None], "BLOB"),
        ("d", pg("date"), -1, ["2019-01-01", "infinity", "4713-01-01 BC"], "DATE"),
        ("tm", pg("time"), -1, ["12:34:56.5", "24:00:00", None], "TIME"),
        ("ts", pg("timestamp"), -1, ["2019-01-01 00:00:00.5", "-infinity", "12345-01-01 00:00:00"], "TIMESTAMP"),
        (
            "tz",
            pg("timestamptz"),
            -1,
            ["2019-01-01 05:30:00.123456+05:30", "infinity", None],
            "TIMESTAMP WITH TIME ZONE",
        ),
        ("j", pg("jsonb"), -1, ['{"a": null}', "null", None], "JSON"),
        ("a", arr("int4"), -1, ["{1,NULL}", "{}", None], "JSON"),
        ("at", arr("text"), -1, ['{"b c",NULL,"NULL"}', None, '{""}'], "JSON"),
        ("iv", pg("interval"), -1, ["P1Y2M3DT4H5M6.789S", None, "PT0S"], "VARCHAR"),
        ("u", pg("uuid"), -1, ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", None, None], "VARCHAR"),
    ]
    pg_columns = [PgColumn(name, t, typmod) for name, t, typmod, _, _ in specs]
    table = text_to_table({name: values for name, _, _, values, _ in specs}, pg_columns)
    hints = {c.name: dlt_column_hints(c) for c in pg_columns}
    pipeline = dlt.pipeline(
        pipeline_name="typemap_test",
        pipelines_dir=str(tmp_path / "p"),
        destination=dlt.destinations.duckdb(str(tmp_path / "x.duckdb")),
        dataset_name="t",
    )
    pipeline.run(dlt.resource(table, name="t", columns=hints))

    con = duckdb.connect(str(tmp_path / "x.duckdb"), read_only=True)
    try:
        db_types = dict(
            con.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 't' AND table_name = 't'"
            ).fetchall()
        )
        assert {name: db_types[name] for name, *_ in specs} == {name: expected for name, _, _, _, expected in specs}
        rows = con.execute(
            'SELECT i2, i8, f8::varchar, n, nu, b, t, "by", d::varchar, tm::varchar, '
            "ts::varchar, CASE WHEN isinf(tz) THEN NULL ELSE epoch_us(tz) END, isinf(tz), "
            "j::varchar, j IS NULL, "
            'a::varchar, "at"::varchar, iv, u FROM t.t ORDER BY id'
        ).fetchall()
    finally:
        con.close()
    assert rows == [
        (
            -32768,
            2**63 - 1,
            "1.5",
            Decimal("12345678.90"),
            Decimal("1" * 29 + ".000000001"),
            True,
            "é😀",
            b"\x00\xff",
            "2019-01-01",
            "12:34:56.5",
            "2019-01-01 00:00:00.5",
            1546300800123456,
            False,
            '{"a": null}',
            False,
            "[1,null]",
            '["b c",null,"NULL"]',
            "P1Y2M3DT4H5M6.789S",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        ),
        (
            None,
            0,
            "nan",
            Decimal("-0.01"),
            Decimal("0E-9"),
            False,
            "",
            b"",
            "infinity",
            "23:59:59.999999",
            "-infinity",
            None,
            True,
            "null",
            False,
            "[]",
            None,
            None,
            None,
        ),
        (
            7,
            None,
            "-inf",
            None,
            None,
            None,
            None,
            None,
            "4713-01-01 (BC)",
            None,
            "12345-01-01 00:00:00",
            None,
            None,
            None,
            True,
            None,
            '[""]',
            "PT0S",
            None,
        ),
    ]

"""Arrow values as PostgreSQL input text, and Arrow tables as CSV for ``COPY … FROM STDIN (FORMAT csv)``.

Every value arrives exactly: decimals as their digits, floats as their shortest exact form (``nan``,
``inf``), timestamps and dates with the type map's ±infinity sentinels as ``infinity``/``-infinity``
and years outside 1..9999 in PostgreSQL's own form (``0044-03-15 BC``), bytea as ``\\x`` hex, lists as
array literals (elements quoted and escaped, ``NULL`` for null elements). Text (the text transport
of numeric, time and arrays included) goes as it is. Vectorised with ``pyarrow.compute``; only
dates and timestamps outside years 1..9999 are formatted one by one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_pg_replication.source.text_values import (
    DATE_INFINITY,
    DATE_NEG_INFINITY,
    TIMESTAMP_INFINITY,
    TIMESTAMP_NEG_INFINITY,
)

if TYPE_CHECKING:
    import pyarrow as pa

_US_PER_DAY = 86_400_000_000
_FIRST_DAY = -719_162  # 0001-01-01, days since 1970-01-01
_AFTER_LAST_DAY = 2_932_897  # 10000-01-01
_FIRST_US = _FIRST_DAY * _US_PER_DAY
_AFTER_LAST_US = _AFTER_LAST_DAY * _US_PER_DAY


class UnsupportedValue(TypeError):
    """An Arrow type with no PostgreSQL input text here."""


def pg_text(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``values`` as a ``string`` array of PostgreSQL input text (null stays null)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], values.type)
    typ = values.type
    if isinstance(typ, pa.ExtensionType):
        return pg_text(values.storage)
    if pa.types.is_dictionary(typ):
        return pg_text(values.dictionary_decode())
    if pa.types.is_null(typ):
        return pa.nulls(len(values), pa.string())
    if pa.types.is_string(typ):
        return values
    if pa.types.is_large_string(typ) or pa.types.is_string_view(typ):
        return values.cast(pa.string())
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        return _array_literals(values)
    if pa.types.is_binary(typ) or pa.types.is_large_binary(typ) or pa.types.is_fixed_size_binary(typ):
        return _bytea(values if pa.types.is_binary(typ) else values.cast(pa.binary()))
    if pa.types.is_date(typ):
        return _dates(values.cast(pa.date32()))
    if pa.types.is_timestamp(typ):
        return _timestamps(values.cast(pa.timestamp("us", tz=typ.tz)) if typ.unit != "us" else values)
    if pa.types.is_time(typ):
        return pc.cast(values.cast(pa.time64("us")), pa.string())
    if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ) or pa.types.is_boolean(typ):
        return pc.cast(values, pa.string())  # floats: shortest exact form, nan / inf / -inf
    raise UnsupportedValue(f"no PostgreSQL input text for Arrow type {typ}")


def _array_literals(values: pa.Array) -> pa.Array:
    """1-D (or nested) lists as PostgreSQL array literals: ``{"a","b c",NULL}``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    inner = pg_text(values.values)  # every element of the child array (the offsets pick them)
    if pa.types.is_list(values.type.value_type) or pa.types.is_large_list(values.type.value_type):
        elements = inner  # a sub-array literal goes as it is
    else:
        escaped = pc.replace_substring(pc.replace_substring(inner, "\\", "\\\\"), '"', '\\"')
        elements = pc.binary_join_element_wise('"', escaped, '"', "")
    elements = pc.fill_null(elements, "NULL")
    kind = pa.LargeListArray if pa.types.is_large_list(values.type) else pa.ListArray
    lists = kind.from_arrays(values.offsets, elements)  # null lists come back below
    literals = pc.binary_join_element_wise("{", pc.binary_join(lists, ","), "}", "")
    return pc.if_else(values.is_valid(), literals, pa.nulls(len(values), pa.string()))


def _bytea(values: pa.Array) -> pa.Array:
    """``\\x`` followed by two lower-case hex digits per byte, in one pass over the data buffer."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(values)
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int32)[values.offset : values.offset + n + 1]
    first, last = int(offsets[0]), int(offsets[-1])
    data = values.buffers()[2]
    body = np.frombuffer(data, dtype=np.uint8)[first:last] if data is not None else np.zeros(0, np.uint8)
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    hexed = np.empty(2 * len(body), dtype=np.uint8)
    hexed[0::2] = digits[body >> 4]
    hexed[1::2] = digits[body & 15]
    new_offsets = ((offsets - first) * 2).astype(np.int32)
    validity = pc.is_valid(values).buffers()[1] if values.null_count else None
    hexes = pa.Array.from_buffers(
        pa.string(),
        n,
        [validity, pa.py_buffer(new_offsets.tobytes()), pa.py_buffer(hexed.tobytes())],
        values.null_count,
    )
    return pc.binary_join_element_wise("\\x", hexes, "")


def _civil(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a day count since 1970-01-01, proleptic Gregorian (year 0 = 1 BC)."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


def _date_part(days: int) -> tuple[str, bool]:
    year, month, day = _civil(days)
    bc = year <= 0
    return f"{1 - year if bc else year:04d}-{month:02d}-{day:02d}", bc


def _date_text(days: int) -> str:
    if days == DATE_INFINITY:
        return "infinity"
    if days == DATE_NEG_INFINITY:
        return "-infinity"
    text, bc = _date_part(days)
    return text + (" BC" if bc else "")


def _timestamp_text(us: int, tz: bool) -> str:
    if us == TIMESTAMP_INFINITY:
        return "infinity"
    if us == TIMESTAMP_NEG_INFINITY:
        return "-infinity"
    days, of_day = divmod(us, _US_PER_DAY)
    date, bc = _date_part(days)
    seconds, micros = divmod(of_day, 1_000_000)
    text = f"{date} {seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{micros:06d}"
    return text + ("+00" if tz else "") + (" BC" if bc else "")


def _dates(values: pa.Array) -> pa.Array:
    import pyarrow as pa

    raw = values.view(pa.int32())
    return _with_outliers(values, raw, _FIRST_DAY, _AFTER_LAST_DAY, _date_text)


def _timestamps(values: pa.Array) -> pa.Array:
    import pyarrow as pa

    raw = values.view(pa.int64())
    tz = values.type.tz is not None
    suffix = ""
    if values.type.tz in _UTC_NAMES:  # Arrow's time zone aware cast to text is ~10x slower: UTC wall time + "Z"
        values, suffix = values.cast(pa.timestamp(values.type.unit)), "Z"
    return _with_outliers(values, raw, _FIRST_US, _AFTER_LAST_US, lambda v: _timestamp_text(v, tz), suffix)


#: Time zone names of UTC as Arrow types carry them.
_UTC_NAMES = frozenset({"UTC", "utc", "Etc/UTC", "+00:00", "Z"})


def _with_outliers(values: pa.Array, raw: pa.Array, low: int, high: int, one: object, suffix: str = "") -> pa.Array:
    """Arrow's ISO text for values in years 1..9999 (then ``suffix``), ``one(raw)`` for the others."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def as_text(arr: pa.Array) -> pa.Array:
        text = pc.cast(arr, pa.string())
        return pc.binary_join_element_wise(text, suffix, "") if suffix else text

    ordinary = pc.and_(pc.greater_equal(raw, low), pc.less(raw, high))
    if pc.all(pc.fill_null(ordinary, True)).as_py():
        return as_text(values)
    inside = pc.if_else(ordinary, values, pa.nulls(len(values), values.type))
    outside = pc.invert(pc.fill_null(ordinary, True))  # only the outliers take Python, one by one
    texts = [one(v) for v in raw.filter(outside).to_pylist()]  # type: ignore[operator]
    return pc.replace_with_mask(as_text(inside), outside, pa.array(texts, pa.string()))


def to_csv(data: pa.Table | pa.RecordBatch) -> pa.Buffer:
    """``data`` as CSV rows for ``COPY … (FORMAT csv)``: every value quoted, null an empty unquoted field."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    texts = pa.Table.from_arrays(
        [pg_text(data.column(i)) for i in range(data.num_columns)], names=[f"c{i}" for i in range(data.num_columns)]
    )
    sink = pa.BufferOutputStream()
    pacsv.write_csv(texts, sink, pacsv.WriteOptions(include_header=False, quoting_style="all_valid"))
    return sink.getvalue()

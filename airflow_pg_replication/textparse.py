"""Vectorised parsers from PostgreSQL TEXT output (Arrow string arrays) to typed Arrow arrays."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

# Sentinels DuckDB (and PostgreSQL internally) use for +/-infinity; see "Rules" in typemap.
TIMESTAMP_INFINITY = 2**63 - 1
TIMESTAMP_NEG_INFINITY = -(2**63 - 1)
DATE_INFINITY = 2**31 - 1
DATE_NEG_INFINITY = -(2**31 - 1)

_US_PER_DAY = 86_400_000_000
_DATE = r"(?P<y>\d{4,})-(?P<mo>\d\d)-(?P<d>\d\d)"
_TIME = r"(?P<h>\d\d):(?P<mi>\d\d):(?P<s>\d\d)(?:\.(?P<f>\d{1,6}))?"
_TZ = r"(?P<zs>[+-])(?P<zh>\d\d)(?::(?P<zm>\d\d))?(?::(?P<zsec>\d\d))?"
_BC = r"(?P<bc> BC)?"
_DATE_RE = f"^{_DATE}{_BC}$"
_TIME_RE = f"^{_TIME}$"
_TIMESTAMP_RE = f"^{_DATE} {_TIME}{_BC}$"
_TIMESTAMPTZ_RE = f"^{_DATE} {_TIME}{_TZ}{_BC}$"
_INT_RE = r"^-?\d+$"
_NUMERIC_RE = r"^(?P<sign>-?)(?P<int>\d+)(?:\.(?P<frac>\d+))?$"
_BYTEA_RE = r"^\\x(?:[0-9a-fA-F]{2})*$"


class TextParseError(ValueError):
    """A PostgreSQL text value that cannot be converted to the column's Arrow type."""

    def __init__(self, column: str, value: object, reason: str) -> None:
        self.column, self.value = column, value
        super().__init__(f"column {column!r}: cannot convert value {value!r}: {reason}")


def as_string_array(values: pa.Array | pa.ChunkedArray | Sequence[str | None]) -> pa.Array:
    """Return ``values`` as a single-chunk Arrow ``string`` array."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], pa.string())
    elif not isinstance(values, pa.Array):
        values = pa.array(list(values), pa.string())
    if values.type != pa.string():
        values = values.cast(pa.string())
    return values


def _check(values: pa.Array, ok: pa.Array, column: str, reason: str) -> None:
    """Raise TextParseError for the first non-null value whose ``ok`` flag is false/null."""
    bad = pc.and_kleene(pc.is_valid(values), pc.invert(pc.fill_null(ok, False)))
    idx = pc.index(bad, True).as_py()
    if idx >= 0:
        raise TextParseError(column, values[idx].as_py(), reason)


def _cast(values: pa.Array, to: pa.DataType, column: str) -> pa.Array:
    try:
        return pc.cast(values, to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        for value in values.to_pylist():  # error path only: find the culprit
            try:
                pc.cast(pa.array([value], pa.string()), to)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise TextParseError(column, value, f"not a valid {to}") from exc
        raise TextParseError(column, None, str(exc)) from exc


def parse_int(values: pa.Array, to: pa.DataType, column: str) -> pa.Array:
    _check(values, pc.match_substring_regex(values, _INT_RE), column, "not an integer")
    return _cast(values, to, column)


def parse_float(values: pa.Array, to: pa.DataType, column: str) -> pa.Array:
    return _cast(values, to, column)  # Arrow accepts NaN, Infinity, -Infinity, 1e+300


def parse_bool(values: pa.Array, column: str) -> pa.Array:
    _check(values, pc.is_in(values, pa.array(["t", "f"])), column, "boolean must be 't' or 'f'")
    return pc.equal(values, "t")


def parse_decimal(values: pa.Array, to: pa.DataType, column: str) -> pa.Array:
    """Exact decimal conversion; raises instead of rounding, overflowing or dropping NaN."""
    special = pc.is_in(values, pa.array(["NaN", "Infinity", "-Infinity"]))
    _check(values, pc.invert(special), column,
           "numeric NaN/Infinity has no decimal representation; declare the column float8"
           " or keep such values out of replicated tables")
    parts = pc.extract_regex(values, _NUMERIC_RE)
    _check(values, pc.is_valid(parts), column, "not a plain numeric literal")
    digits = pc.utf8_ltrim(pc.struct_field(parts, "int"), characters="0")
    frac = pc.utf8_rtrim(pc.struct_field(parts, "frac"), characters="0")
    max_int = to.precision - to.scale
    _check(values, pc.less_equal(pc.utf8_length(digits), max_int), column,
           f"more than {max_int} integer digits do not fit {to}; declare numeric(p,s) on the column")
    _check(values, pc.less_equal(pc.utf8_length(frac), to.scale), column,
           f"more than {to.scale} fractional digits do not fit {to} exactly;"
           " declare numeric(p,s) on the column")
    digits = pc.if_else(pc.equal(digits, ""), "0", digits)
    frac = pc.if_else(pc.equal(frac, ""), "0", frac)
    text = pc.binary_join_element_wise(pc.struct_field(parts, "sign"), digits, ".", frac, "")
    return _cast(text, to, column)


def parse_bytea(values: pa.Array, column: str) -> pa.Array:
    """Decode ``\\x``-hex bytea output; one ``bytes.fromhex`` over the whole buffer."""
    _check(values, pc.match_substring_regex(values, _BYTEA_RE), column,
           "bytea must be in hex format (set bytea_output=hex)")
    hexes = pc.utf8_slice_codeunits(pc.fill_null(values, "\\x"), 2)
    n = len(hexes)
    offsets = pa.Array.from_buffers(pa.int32(), n + 1, [None, hexes.buffers()[1]], 0, hexes.offset)
    first, last = offsets[0].as_py(), offsets[n].as_py()
    data = hexes.buffers()[2]
    raw = bytes.fromhex(data[first:last].to_pybytes().decode("ascii")) if last > first else b""
    new_offsets = pc.cast(pc.divide(pc.subtract(offsets, first), 2), pa.int32())
    validity = pc.is_valid(values).buffers()[1] if values.null_count else None
    return pa.Array.from_buffers(
        pa.binary(), n, [validity, new_offsets.buffers()[1], pa.py_buffer(raw)], values.null_count
    )


def _int(parts: pa.Array, field: str, default: str = "0") -> pa.Array:
    text = pc.struct_field(parts, field)
    return pc.cast(pc.if_else(pc.equal(text, ""), default, text), pa.int64())


def _days(parts: pa.Array) -> pa.Array:
    """Days since 1970-01-01 (proleptic Gregorian, as PostgreSQL) from y/mo/d/bc groups."""
    year, month, day = _int(parts, "y"), _int(parts, "mo"), _int(parts, "d")
    year = pc.if_else(pc.equal(pc.struct_field(parts, "bc"), " BC"), pc.subtract(1, year), year)
    # H. Hinnant's days_from_civil, shifted by 12 eras so that integer division == floor.
    y = pc.add(pc.subtract(year, pc.cast(pc.less_equal(month, 2), pa.int64())), 4800)
    era = pc.divide(y, 400)
    yoe = pc.subtract(y, pc.multiply(era, 400))
    mp = pc.if_else(pc.greater(month, 2), pc.subtract(month, 3), pc.add(month, 9))
    doy = pc.add(pc.divide(pc.add(pc.multiply(mp, 153), 2), 5), pc.subtract(day, 1))
    doe = pc.add(pc.subtract(pc.add(pc.multiply(yoe, 365), pc.divide(yoe, 4)),
                             pc.divide(yoe, 100)), doy)
    return pc.subtract(pc.add(pc.multiply(era, 146097), doe), 719468 + 12 * 146097)


def _micros_of_day(parts: pa.Array) -> pa.Array:
    frac = pc.utf8_rpad(pc.struct_field(parts, "f"), width=6, padding="0")
    seconds = pc.add(pc.add(pc.multiply(_int(parts, "h"), 3600),
                            pc.multiply(_int(parts, "mi"), 60)), _int(parts, "s"))
    return pc.add(pc.multiply(seconds, 1_000_000), pc.cast(frac, pa.int64()))


def _infinities(values: pa.Array, result: pa.Array, pos: int, neg: int) -> pa.Array:
    result = pc.if_else(pc.equal(values, "infinity"), pa.scalar(pos, result.type), result)
    return pc.if_else(pc.equal(values, "-infinity"), pa.scalar(neg, result.type), result)


def _extract(values: pa.Array, pattern: str, column: str, what: str) -> pa.Array:
    parts = pc.extract_regex(values, pattern)
    ok = pc.is_valid(parts)
    if what != "time":  # date/timestamp also accept 'infinity' and '-infinity'
        ok = pc.or_(ok, pc.is_in(values, pa.array(["infinity", "-infinity"])))
    _check(values, ok, column, f"not a PostgreSQL ISO {what}")
    return parts


def parse_date(values: pa.Array, column: str) -> pa.Array:
    days = _days(_extract(values, _DATE_RE, column, "date"))
    days = _infinities(values, days, DATE_INFINITY, DATE_NEG_INFINITY)
    try:
        return pc.cast(days, pa.int32()).cast(pa.date32())
    except pa.ArrowInvalid as exc:  # pragma: no cover - PostgreSQL dates always fit date32
        raise TextParseError(column, None, f"date out of range: {exc}") from exc


def parse_time(values: pa.Array, column: str) -> pa.Array:
    """``time`` -> time64[us]; PostgreSQL's '24:00:00' stays 86400000000 us (DuckDB accepts it)."""
    micros = _micros_of_day(_extract(values, _TIME_RE, column, "time"))
    return pc.cast(micros, pa.time64("us"))


def parse_timestamp(values: pa.Array, column: str, *, tz: bool) -> pa.Array:
    """``timestamp``/``timestamptz`` -> timestamp[us] (UTC if ``tz``), exact, BC and year > 9999."""
    parts = _extract(values, _TIMESTAMPTZ_RE if tz else _TIMESTAMP_RE, column, "timestamp")
    micros = _micros_of_day(parts)
    if tz:
        offset = pc.add(pc.add(pc.multiply(_int(parts, "zh"), 3600),
                               pc.multiply(_int(parts, "zm"), 60)), _int(parts, "zsec"))
        offset = pc.if_else(pc.equal(pc.struct_field(parts, "zs"), "-"), pc.negate(offset), offset)
        micros = pc.subtract(micros, pc.multiply(offset, 1_000_000))
    try:
        micros = pc.add_checked(pc.multiply_checked(_days(parts), _US_PER_DAY), micros)
    except pa.ArrowInvalid as exc:
        overflow = pc.greater(pc.abs(_days(parts)), 106_751_990)  # ~ +/-292k years from 1970
        _check(values, pc.invert(overflow), column, "beyond the Arrow timestamp[us] range")
        raise TextParseError(column, None, str(exc)) from exc
    micros = _infinities(values, micros, TIMESTAMP_INFINITY, TIMESTAMP_NEG_INFINITY)
    return pc.cast(micros, pa.timestamp("us", tz="UTC" if tz else None))


_DIMS_RE = re.compile(r"^((?:\[-?\d+:-?\d+\])+)=")


def _split_array(text: str, delim: str, token: re.Pattern[str], column: str) -> list[str | None]:
    """Split one 1-D PostgreSQL array literal into element texts (None = NULL element)."""
    if text.startswith("["):
        dims = _DIMS_RE.match(text)
        if dims is None:
            raise TextParseError(column, text, "malformed array literal")
        if dims.group(1).count("[") > 1:
            raise TextParseError(column, text, "multi-dimensional arrays are not supported")
        text = text[dims.end():]
    if len(text) < 2 or text[0] != "{" or text[-1] != "}":
        raise TextParseError(column, text, "malformed array literal")
    inner = text[1:-1]
    if not inner:
        return []
    if inner[0] == "{":
        raise TextParseError(column, text, "multi-dimensional arrays are not supported")
    if '"' not in inner:
        return [None if len(e) == 4 and e.upper() == "NULL" else e for e in inner.split(delim)]
    out: list[str | None] = []
    pos, end = 0, len(inner)
    while True:
        m = token.match(inner, pos)
        quoted, bare = m.group(1), m.group(2)
        if quoted is not None:
            out.append(re.sub(r"\\(.)", r"\1", quoted, flags=re.S) if "\\" in quoted else quoted)
        elif "{" in bare or "}" in bare:
            raise TextParseError(column, text, "multi-dimensional arrays are not supported")
        else:
            out.append(None if len(bare) == 4 and bare.upper() == "NULL" else bare)
        pos = m.end()
        if pos == end:
            return out
        if inner[pos] != delim:
            raise TextParseError(column, text, "malformed array literal")
        pos += 1


def parse_array(
    values: pa.Array,
    to: pa.ListType,
    parse_elements: Callable[[pa.Array], pa.Array],
    column: str,
    delimiter: str = ",",
) -> pa.Array:
    """1-D array literals -> list<element>; elements are parsed in one vectorised call."""
    token = re.compile(r'"((?:[^"\\]|\\.)*)"|([^"%s]*)' % re.escape(delimiter), re.S)
    flat: list[str | None] = []
    offsets = [0]
    for text in values.to_pylist():
        if text is not None:
            flat.extend(_split_array(text, delimiter, token, column))
        offsets.append(len(flat))
    elements = parse_elements(pa.array(flat, pa.string()))
    mask = pc.is_null(values) if values.null_count else None
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), elements, type=to, mask=mask)

"""Vectorised parsers from PostgreSQL TEXT output (Arrow string arrays) to typed Arrow arrays."""

from __future__ import annotations

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


def _cast(values: pa.Array, to: pa.DataType, column: str, originals: pa.Array | None = None) -> pa.Array:
    try:
        return pc.cast(values, to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        originals = values if originals is None else originals
        for value, original in zip(values.to_pylist(), originals.to_pylist()):  # error path
            try:
                pc.cast(pa.array([value], pa.string()), to)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise TextParseError(column, original, f"not a valid {to}") from exc
        raise TextParseError(column, None, str(exc)) from exc


def parse_int(values: pa.Array, to: pa.DataType, column: str) -> pa.Array:
    _check(values, pc.match_substring_regex(values, _INT_RE), column, "not an integer")
    return _cast(values, to, column)


def parse_float(values: pa.Array, to: pa.DataType, column: str) -> pa.Array:
    return _cast(values, to, column)  # Arrow accepts NaN, Infinity, -Infinity, 1e+300


def parse_bool(values: pa.Array, column: str) -> pa.Array:
    _check(values, pc.is_in(values, pa.array(["t", "f"])), column, "boolean must be 't' or 'f'")
    return pc.equal(values, "t")


def _most_digits(values: pa.Array) -> int:
    """An upper bound on the digits of any value: its length less a sign and a point it has."""
    longest = pc.max(pc.binary_length(values)).as_py() or 0
    if longest == 0:
        return 0
    marks = pc.add(
        pc.cast(pc.starts_with(values, "-"), pa.int32()), pc.cast(pc.match_substring(values, "."), pa.int32())
    )
    return pc.max(pc.subtract(pc.binary_length(values), marks)).as_py() or 0


def parse_decimal(values: pa.Array, to: pa.DataType, column: str, *, fits: bool = False) -> pa.Array:
    """Exact decimal conversion; raises instead of rounding, overflowing or dropping NaN.

    ``fits``: the column's declared numeric(p,s) is ``to`` itself, so PostgreSQL already holds every
    value to it and a plain cast is exact (only NaN needs catching).
    """
    special = pc.is_in(values, pa.array(["NaN", "Infinity", "-Infinity"]))
    _check(
        values,
        pc.invert(special),
        column,
        "numeric NaN/Infinity has no decimal representation; declare the column float8"
        " or keep such values out of replicated tables",
    )
    if fits and _most_digits(values) <= to.precision:  # guard: Arrow's cast wraps past 38 digits
        return _cast(values, to, column)
    parts = pc.extract_regex(values, _NUMERIC_RE)
    _check(values, pc.is_valid(parts), column, "not a plain numeric literal")
    digits = pc.utf8_ltrim(pc.struct_field(parts, "int"), characters="0")
    frac = pc.utf8_rtrim(pc.struct_field(parts, "frac"), characters="0")
    max_int = to.precision - to.scale
    _check(
        values,
        pc.less_equal(pc.utf8_length(digits), max_int),
        column,
        f"more than {max_int} integer digits do not fit {to}; declare numeric(p,s) on the column",
    )
    _check(
        values,
        pc.less_equal(pc.utf8_length(frac), to.scale),
        column,
        f"more than {to.scale} fractional digits do not fit {to} exactly; declare numeric(p,s) on the column",
    )
    digits = pc.if_else(pc.equal(digits, ""), "0", digits)
    frac = pc.if_else(pc.equal(frac, ""), "", pc.binary_join_element_wise(".", frac, ""))
    text = pc.binary_join_element_wise(pc.struct_field(parts, "sign"), digits, frac, "")
    return _cast(text, to, column, values)


def parse_bytea(values: pa.Array, column: str) -> pa.Array:
    """Decode ``\\x``-hex bytea output; one ``bytes.fromhex`` over the whole buffer."""
    _check(
        values,
        pc.match_substring_regex(values, _BYTEA_RE),
        column,
        "bytea must be in hex format (set bytea_output=hex)",
    )
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
    doe = pc.add(pc.subtract(pc.add(pc.multiply(yoe, 365), pc.divide(yoe, 4)), pc.divide(yoe, 100)), doy)
    return pc.subtract(pc.add(pc.multiply(era, 146097), doe), 719468 + 12 * 146097)


def _micros_of_day(parts: pa.Array) -> pa.Array:
    frac = pc.utf8_rpad(pc.struct_field(parts, "f"), width=6, padding="0")
    seconds = pc.add(pc.add(pc.multiply(_int(parts, "h"), 3600), pc.multiply(_int(parts, "mi"), 60)), _int(parts, "s"))
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


def _fast_or_exact(
    values: pa.Array, ordinary_re: str, fast: Callable[[pa.Array], pa.Array], exact: Callable[[pa.Array], pa.Array]
) -> pa.Array:
    """Arrow's C++ parser (``fast``) for ordinary values, ``exact`` (regex + arithmetic) else.

    Arrow's parser is strict, so it either agrees with ``exact`` or fails; rows not matching
    ``ordinary_re`` (infinity, BC, 5+ digit years, '24:00:00') are converted by ``exact``,
    which also reports malformed values.
    """
    try:
        return fast(values)
    except pa.ArrowInvalid:
        pass
    ordinary = pc.fill_null(pc.match_substring_regex(values, ordinary_re), True)
    try:
        converted = fast(pc.if_else(ordinary, values, pa.scalar(None, pa.string())))
    except pa.ArrowInvalid:
        return exact(values)
    special = pc.invert(ordinary)
    return pc.replace_with_mask(converted, special, exact(values.filter(special)))


def parse_date(values: pa.Array, column: str) -> pa.Array:
    return _fast_or_exact(
        values, r"^\d{4}-\d\d-\d\d$", lambda v: pc.cast(v, pa.date32()), lambda v: exact_date(v, column)
    )


def _fast_time(values: pa.Array) -> pa.Array:
    stamps = pc.cast(pc.binary_join_element_wise("1970-01-01 ", values, ""), pa.timestamp("us"))
    return pc.cast(stamps, pa.time64("us"))


def parse_time(values: pa.Array, column: str) -> pa.Array:
    """``time`` -> time64[us]; PostgreSQL's '24:00:00' becomes 23:59:59.999999."""
    return _fast_or_exact(values, r"^(?:[01]\d|2[0-3]):", _fast_time, lambda v: exact_time(v, column))


def parse_timestamp(values: pa.Array, column: str, *, tz: bool) -> pa.Array:
    """``timestamp``/``timestamptz`` -> timestamp[us] (UTC if ``tz``)."""
    to = pa.timestamp("us", tz="UTC" if tz else None)
    return _fast_or_exact(
        values, r"^\d{4}-.*\d$", lambda v: pc.cast(v, to), lambda v: exact_timestamp(v, column, tz=tz)
    )


def exact_date(values: pa.Array, column: str) -> pa.Array:
    days = _days(_extract(values, _DATE_RE, column, "date"))
    days = _infinities(values, days, DATE_INFINITY, DATE_NEG_INFINITY)
    return pc.cast(days, pa.int32()).cast(pa.date32())  # PostgreSQL dates always fit


def exact_time(values: pa.Array, column: str) -> pa.Array:
    micros = _micros_of_day(_extract(values, _TIME_RE, column, "time"))
    _check(values, pc.less_equal(micros, _US_PER_DAY), column, "time beyond 24:00:00")
    # Arrow's time64 ends before 24:00:00: PostgreSQL's '24:00:00' becomes 23:59:59.999999
    return pc.cast(pc.min_element_wise(micros, _US_PER_DAY - 1), pa.time64("us"))


def exact_timestamp(values: pa.Array, column: str, *, tz: bool) -> pa.Array:
    """Regex + integer arithmetic: exact for BC, years > 9999 and any ``±hh[:mm[:ss]]``."""
    parts = _extract(values, _TIMESTAMPTZ_RE if tz else _TIMESTAMP_RE, column, "timestamp")
    micros = _micros_of_day(parts)
    if tz:
        offset = pc.add(
            pc.add(pc.multiply(_int(parts, "zh"), 3600), pc.multiply(_int(parts, "zm"), 60)), _int(parts, "zsec")
        )
        offset = pc.if_else(pc.equal(pc.struct_field(parts, "zs"), "-"), pc.negate(offset), offset)
        micros = pc.subtract(micros, pc.multiply(offset, 1_000_000))
    try:
        micros = pc.add_checked(pc.multiply_checked(_days(parts), _US_PER_DAY), micros)
    except pa.ArrowInvalid as exc:
        fits = pc.less_equal(pc.abs(_days(parts)), 106_751_990)  # ~ +/-292k years from 1970
        _check(values, pc.fill_null(fits, True), column, "beyond the Arrow timestamp[us] range")
        raise TextParseError(column, None, str(exc)) from exc
    micros = _infinities(values, micros, TIMESTAMP_INFINITY, TIMESTAMP_NEG_INFINITY)
    return pc.cast(micros, pa.timestamp("us", tz="UTC" if tz else None))


def map_where(mask: pa.Array, values: pa.Array, fn: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """``fn`` applied only to the ``values`` selected by ``mask`` (false/null: unchanged)."""
    mask = pc.fill_null(mask, False)
    selected = pc.sum(mask).as_py() or 0
    if selected == 0:
        return values
    if selected == len(values):
        return fn(values)
    return pc.replace_with_mask(values, mask, fn(values.filter(mask)))

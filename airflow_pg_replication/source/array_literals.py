"""PostgreSQL 1-D array literals (``array_out`` text) to Arrow lists, vectorised with numpy and pyarrow."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from airflow_pg_replication.source.text_values import TextParseError, map_where

_QUOTE, _BACKSLASH = ord('"'), ord("\\")


def parse_array(
    values: pa.Array,
    to: pa.ListType,
    parse_elements: Callable[[pa.Array], pa.Array],
    column: str,
    delimiter: str = ",",
) -> pa.Array:
    """1-D array literals -> list<element>, vectorised; elements parsed in one call.

    Literals are validated with one regex, then cut into elements by :func:`_elements_exact`
    (numpy over the literals' bytes), or by :func:`_elements_by_regex` for literals it does not
    take; quoted elements are unquoted and unescaped, unquoted ``NULL`` becomes null.
    """
    d = re.escape(delimiter)
    quoted, bare = r'"(?:[^"\\]|\\.)*"', f'[^"{{}}{d}]+'
    values = map_where(
        pc.starts_with(values, "["),
        values,  # drop a lower-bound decoration
        lambda v: pc.replace_substring_regex(v, r"^\[-?\d+:-?\d+\]=", ""),
    )
    element = f"(?:{quoted}|{bare})"
    ok = pc.match_substring_regex(values, f"(?s)^{{(?:{element}(?:{d}{element})*)?}}$")
    bad = pc.index(pc.and_(pc.is_valid(values), pc.invert(pc.fill_null(ok, True))), True).as_py()
    if bad >= 0:
        text = values[bad].as_py()
        multi = text.startswith(("{{", "[")) or re.match(r'^{[^"]*{', text) is not None
        raise TextParseError(
            column, text, "multi-dimensional arrays are not supported" if multi else "malformed array literal"
        )
    inner = pc.utf8_slice_codeunits(values, 1, -1)
    if pa.types.is_large_string(inner.type):
        inner = inner.cast(pa.string())
    cut = _elements_exact(inner, delimiter)
    if cut is None:
        cut = _elements_by_regex(inner, delimiter, f"(?s)({quoted}|{bare}|){d}")
    offsets, texts = cut
    mask = pc.is_null(values) if values.null_count else None
    return pa.ListArray.from_arrays(offsets, parse_elements(texts), type=to, mask=mask)


def _elements_exact(inner: pa.Array, delimiter: str) -> tuple[pa.Array, pa.Array] | None:
    """List offsets and element texts of validated literals (without braces), from their bytes.

    Inside a quoted element a backslash escapes the next byte; a position is inside quotes when
    an odd number of unescaped quotes precede it. Each valid literal holds an even number, so
    counting from the first literal is exact. The delimiters outside quotes, the quotes and the
    escaping backslashes are dropped: what is left of the bytes is the elements back to back.
    Quotes, backslashes and delimiters are ASCII, so this never splits a UTF-8 sequence.

    None for a backslash outside quotes: never in ``array_out``'s output, but a valid literal by
    our grammar, in which it is a plain character of a bare element.
    """
    n = len(inner)
    valid = ~pc.is_null(inner).to_numpy(zero_copy_only=False) if inner.null_count else np.ones(n, dtype=bool)
    offsets = np.frombuffer(inner.buffers()[1], dtype=np.int32)[inner.offset : inner.offset + n + 1].astype(np.int64)
    lo, hi = int(offsets[0]), int(offsets[-1])
    data = np.frombuffer(inner.buffers()[2], dtype=np.uint8)[lo:hi] if hi > lo else np.zeros(0, np.uint8)
    starts, ends = offsets[:-1] - lo, offsets[1:] - lo
    ends = np.where(valid, ends, starts)  # a null slot's bytes, if any, are no part of any element
    if (ends[:-1] != starts[1:]).any():
        return None

    backslashes = np.flatnonzero(data == _BACKSLASH)
    drop = np.zeros(len(data) + 1, dtype=bool)  # bytes that are no part of an element
    escaped = np.zeros(len(data) + 1, dtype=bool)
    if len(backslashes):  # in a run of backslashes within a literal, every other one escapes the next byte
        rows = np.searchsorted(starts, backslashes, side="right") - 1
        new_run = np.ones(len(backslashes), dtype=bool)
        new_run[1:] = (backslashes[1:] != backslashes[:-1] + 1) | (rows[1:] != rows[:-1])
        index = np.arange(len(backslashes))
        escaper = (index - np.maximum.accumulate(np.where(new_run, index, 0))) % 2 == 0
        escaper &= backslashes + 1 < ends[rows]
        escaped[backslashes[escaper] + 1] = True
        drop[backslashes[escaper]] = True
    escaped, drop = escaped[:-1], drop[:-1]
    quotes = np.flatnonzero((data == _QUOTE) & ~escaped)
    if (np.diff(np.searchsorted(quotes, np.append(starts, len(data)))) % 2).any():
        return None  # cannot be: a literal the regex passed with unpaired quotes

    def inside_quotes(pos: np.ndarray) -> np.ndarray:
        return np.searchsorted(quotes, pos) % 2 == 1

    if len(backslashes) and not inside_quotes(backslashes).all():
        return None
    delims = np.flatnonzero((data == ord(delimiter)) & ~escaped)
    cut = delims[~inside_quotes(delims)]
    drop[quotes] = True
    drop[cut] = True

    # elements: one per literal with any bytes, plus one after each cut
    cuts_before = np.searchsorted(cut, starts)
    per_row = np.where(ends > starts, np.diff(np.append(cuts_before, len(cut))) + 1, 0)
    list_offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(per_row, out=list_offsets[1:])
    first = np.zeros(int(list_offsets[-1]) + 1, dtype=np.int64)  # each element's first byte in ``data``
    has = per_row > 0
    first[list_offsets[:-1][has]] = starts[has]
    cut_rows = np.repeat(np.arange(n), np.where(has, per_row - 1, 0))
    first[list_offsets[cut_rows] + np.arange(len(cut)) - cuts_before[cut_rows] + 1] = cut + 1
    first[-1] = len(data)
    is_quoted = data[first[:-1]] == _QUOTE if len(data) else np.zeros(0, dtype=bool)
    dropped_before = np.concatenate(([0], np.cumsum(drop, dtype=np.int64)))
    kept_offsets = first - dropped_before[first]
    kept = data[~drop]
    length = np.diff(kept_offsets)
    null = np.zeros(len(length), dtype=bool)
    maybe = np.flatnonzero(~is_quoted & (length == 4))  # an unquoted NULL, any case, as array_in
    if len(maybe):
        word = kept[kept_offsets[maybe][:, None] + np.arange(4)] | 0x20
        null[maybe] = (word == np.frombuffer(b"null", dtype=np.uint8)).all(axis=1)
    texts = pa.Array.from_buffers(
        pa.string(),
        len(length),
        [
            pa.array(~null).buffers()[1] if null.any() else None,
            pa.py_buffer(kept_offsets.astype(np.int32)),
            pa.py_buffer(kept),
        ],
    )
    return pa.array(list_offsets.astype(np.int32)), texts


def _elements_by_regex(inner: pa.Array, delimiter: str, tokenize: str) -> tuple[pa.Array, pa.Array]:
    """:func:`_elements_exact` for any validated literal: ``tokenize`` ends each element with NUL."""
    joined = pc.binary_join_element_wise(inner, delimiter, "")
    terminated = pc.replace_substring_regex(joined, tokenize, "\\1\x00")
    tokens_lists = pc.split_pattern(pc.utf8_slice_codeunits(terminated, 0, -1), "\x00")
    empty = pc.fill_null(pc.equal(inner, ""), False)  # '{}' splits into [''] but is []
    in_empty = pc.take(empty, pc.list_parent_indices(tokens_lists))
    tokens = pc.list_flatten(tokens_lists).filter(pc.invert(in_empty))
    is_quoted = pc.starts_with(tokens, '"')
    is_null = pc.equal(pc.ascii_upper(tokens), "NULL")  # unquoted NULL, as array_in
    texts = pc.if_else(is_null, pa.scalar(None, pa.string()), tokens)
    texts = map_where(is_quoted, texts, lambda v: pc.utf8_slice_codeunits(v, 1, -1))
    texts = map_where(
        pc.and_(is_quoted, pc.match_substring(texts, "\\")),
        texts,
        lambda v: pc.replace_substring_regex(v, r"(?s)\\(.)", "\\1"),
    )
    lengths = pc.if_else(empty, 0, pc.fill_null(pc.list_value_length(tokens_lists), 0))
    offsets = pa.concat_arrays([pa.array([0], pa.int32()), pc.cast(pc.cumulative_sum(lengths), pa.int32())])
    return offsets, texts

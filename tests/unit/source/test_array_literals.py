"""Array literals: the vectorised split against a plain left-to-right parser, on random and tricky literals."""

from __future__ import annotations

import random
import re

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from airflow_pg_replication.source.array_literals import _elements_by_regex, _elements_exact, parse_array

TEXT_LIST = pa.list_(pa.string())


def reference(literal: str | None, delimiter: str = ",") -> list | None:
    """Parse one literal byte by byte: quoted elements take backslash escapes, bare ones do not."""
    if literal is None:
        return None
    body, out, i = literal[1:-1], [], 0
    if not body:
        return []
    while True:
        if body[i] == '"':
            i, chars = i + 1, []
            while body[i] != '"':
                if body[i] == "\\":
                    i += 1
                chars.append(body[i])
                i += 1
            out.append("".join(chars))
            i += 1
        else:
            j = i
            while j < len(body) and body[j] != delimiter:
                j += 1
            token = body[i:j]
            out.append(None if token.upper() == "NULL" else token)
            i = j
        if i >= len(body):
            return out
        i += 1  # the delimiter


def array_out(elements: list, delimiter: str = ",") -> str:
    """A literal as PostgreSQL's array_out writes it."""

    def one(e: str | None) -> str:
        if e is None:
            return "NULL"
        if e == "" or e.upper() == "NULL" or any(c in e for c in f'"\\{{}} {delimiter}\n'):
            return '"' + e.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return e

    return "{" + delimiter.join(one(e) for e in elements) + "}"


def parse(values: list | pa.Array, delimiter: str = ",") -> list:
    arr = values if isinstance(values, pa.Array) else pa.array(values, pa.string())
    return parse_array(arr, TEXT_LIST, lambda v: v, "c", delimiter).to_pylist()


@pytest.mark.parametrize("delimiter", [",", ";"])
def test_random_literals_match_the_reference(delimiter):
    rng = random.Random(7)
    alphabet = ["a", "b", "é", " ", ",", ";", '"', "\\", "{", "}", "NULL", "\n", "x\\", '\\"']
    values: list[str | None] = []
    for _ in range(3000):
        if rng.random() < 0.05:
            values.append(None)
            continue
        elements = [
            None if rng.random() < 0.1 else "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 4)))
            for _ in range(rng.randint(0, 5))
        ]
        values.append(array_out(elements, delimiter))
    assert parse(values, delimiter) == [reference(v, delimiter) for v in values]


def test_backslashes_outside_quotes_and_at_literal_ends():
    # bare backslashes (never from array_out, valid in our grammar) take the regex path; a literal
    # ending in one must not escape the quote that starts the next literal
    values = ["{a\\}", '{"q,r",s}', "{x\\\\,y}", '{"\\\\",z\\}', '{"e\\"f"}', "{\\}", '{","}']
    assert parse(values) == [reference(v) for v in values]
    assert parse(values) == [["a\\"], ["q,r", "s"], ["x\\\\", "y"], ["\\", "z\\"], ['e"f'], ["\\"], [","]]


def test_runs_of_backslashes_in_quoted_elements():
    values = [array_out(["\\" * n + tail, "k"]) for n in range(6) for tail in ("", '"', ",", "x")]
    assert parse(values) == [reference(v) for v in values]


def test_sliced_input_with_nulls():
    base = pa.array(['{"a,b"}', None, '{"c\\"d",e}', "{}", None, "{f\\}", '{"g"}'], pa.string())
    for start in range(len(base)):
        part = base.slice(start)
        assert parse(part) == [reference(v) for v in part.to_pylist()]


@pytest.mark.parametrize("delimiter", [",", ";"])
def test_both_paths_agree(delimiter):
    # the numpy path (array_out's literals) and the regex path (every valid literal) cut alike
    rng = random.Random(11)
    alphabet = ["a", "é", " ", delimiter, '"', "\\", "}", "null", "NuLl"]
    values = [
        None
        if rng.random() < 0.05
        else array_out(
            [
                None if rng.random() < 0.1 else "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 3)))
                for _ in range(rng.randint(0, 4))
            ],
            delimiter,
        )
        for _ in range(1000)
    ]
    inner = pc.utf8_slice_codeunits(pa.array(values, pa.string()), 1, -1)
    d = re.escape(delimiter)
    tokenize = f'(?s)("(?:[^"\\\\]|\\\\.)*"|[^"{{}}{d}]+|){d}'
    exact = _elements_exact(inner, delimiter)
    assert exact is not None
    by_regex = _elements_by_regex(inner, delimiter, tokenize)
    assert exact[0].to_pylist() == by_regex[0].to_pylist()
    assert exact[1].to_pylist() == by_regex[1].to_pylist()

#!/usr/bin/env python
"""Benchmark: change-log segment write and read throughput, local disk and S3 (moto), per compression.

Builds --messages (default 100k) pgoutput v1 messages of customers-like rows (bench/seed.sql's
columns as text: names, e-mail, numeric, text[], jsonb, timestamptz; 30 % inserts, 60 % updates,
10 % deletes, 1-20 changes a transaction), then for each compression (none, lz4, zstd):

- local:  ChangeLog.write_segment (encode, temp file, fsync, rename, fsync dir) and ChangeLog.read
          (+ one pass over every message, as a fold would: a memory map reads lazily), against a raw
          ``open().write()`` + ``fsync`` and ``open().read()`` of the same bytes;
- s3:     the same on a moto server in its own process through s3fs, against a raw
          ``pipe_file``/``cat_file`` of the same bytes. Moto is a Python server on this machine: its
          figures show the request and CPU cost, not a network's bandwidth.

MB/s counts the messages' bytes (what a fold reads), so compressed and plain rows compare. Median of
--runs (default 5).

Usage: ``.venv/bin/python bench/change_log.py [--messages 100000] [--runs 5] [--no-s3]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from airflow_pg_replication.changelog.segments import encode_segment  # noqa: E402
from airflow_pg_replication.changelog.store import ChangeLog  # noqa: E402
from airflow_pg_replication.testing.s3_server import ThrowawayS3Server  # noqa: E402

TABLE = "public.customers"
OID = 16390
COLUMNS = [  # (name, type oid) as bench/seed.sql's customers
    ("customer_id", 20), ("first_name", 25), ("last_name", 25), ("email", 25), ("balance", 1700),
    ("tags", 1009), ("attrs", 3802), ("created_at", 1184), ("updated_at", 1184),
]  # fmt: skip
FIRST = ["Anna", "Ben", "Carla", "David", "Emma", "Felix", "Greta", "Hugo", "Ida", "Jonas", "Karin", "Lukas"]
FIRST += ["Mia", "Noah", "Olga", "Paul", "Rosa", "Sven", "Tara", "Umar", "Vera", "Will", "Yuki", "Zoë", "José"]
FIRST += ["Łukasz", "Chloé", "Björn", "美咲", "Priya"]
LAST = ["Smith", "Müller", "García", "Nowak", "Rossi", "Dubois", "Tanaka", "Kowalski", "O'Brien", "Johnson"]
LAST += ["Schmidt", "Silva", "van Dijk", "Novák", "Jensen", "Lee", "Ivanova", "Haddad", "Okafor", "Meyer"]
TAGS = ["vip", "newsletter", '"early adopter"', "churn-risk", "b2b", "wholesale", "eu", "us", "apac", '"ref,partner"']
DOMAINS = ["example.com", "mail.test", "corp.example.org", "shop.example.net"]


def _tuple(values: list[str | None]) -> bytes:
    out = [struct.pack("!H", len(values))]
    for v in values:
        out.append(b"n" if v is None else b"t" + struct.pack("!I", len(v.encode())) + v.encode())
    return b"".join(out)


def _row(r: random.Random, key: int) -> list[str | None]:
    fn, ln = r.choice(FIRST), r.choice(LAST)
    created = dt.datetime(2019, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=r.randint(0, 189_216_000))
    updated = created + dt.timedelta(seconds=r.randint(0, 40_000_000), microseconds=r.randint(0, 999_999))
    orders = ", ".join(str(r.randint(0, 99_999)) for _ in range(r.randint(0, 3)))
    attrs = (
        f'{{"tier": "{r.choice(["basic", "silver", "gold", "platinum"])}", "prefs": {{"tz": '
        f'"{r.choice(["UTC", "Europe/Berlin", "Asia/Tokyo"])}", "lang": "{r.choice(["en", "de", "ja"])}"}}, '
        f'"score": {r.randint(0, 999)}, "newsletter": {r.choice(["true", "false"])}, "last_orders": [{orders}]}}'
    )
    return [
        str(key),
        fn,
        ln,
        None if r.random() < 0.02 else f"{fn.lower()}.{ln.lower().replace(' ', '_')}{key}@{r.choice(DOMAINS)}",
        None if r.random() < 0.025 else f"{r.randint(-2_000_000, 17_999_999) / 100:.2f}",
        "{" + ",".join(r.sample(TAGS, r.randint(0, 4))) + "}",
        None if r.random() < 0.05 else attrs,
        created.strftime("%Y-%m-%d %H:%M:%S+00"),
        updated.strftime("%Y-%m-%d %H:%M:%S.%f+00"),
    ]


def customers_messages(n: int, seed: int = 1) -> tuple[pa.Array, pa.Array, int, int]:
    """(commit_lsn, data, last_end_lsn, changes) of whole transactions, at least ``n`` messages."""
    r = random.Random(seed)
    relation = b"R" + struct.pack("!I", OID) + b"public\0customers\0d" + struct.pack("!H", len(COLUMNS))
    relation += b"".join(struct.pack("!B", c == "customer_id") + c.encode() + b"\0" + struct.pack("!Ii", t, -1)
                         for c, t in COLUMNS)  # fmt: skip
    lsn, xid, changes, next_id = 0x1_0000_0000, 1000, 0, 1_000_000
    lsns: list[int] = []
    msgs: list[bytes] = []
    while len(msgs) < n:
        body = []
        for _ in range(r.randint(1, 20)):
            x = r.random()
            if x < 0.3:
                next_id += 1
                body.append(b"I" + struct.pack("!I", OID) + b"N" + _tuple(_row(r, next_id)))
            elif x < 0.9:
                body.append(b"U" + struct.pack("!I", OID) + b"N" + _tuple(_row(r, r.randint(1, 1_000_000))))
            else:
                key = [str(r.randint(1, 1_000_000))] + [None] * (len(COLUMNS) - 1)
                body.append(b"D" + struct.pack("!I", OID) + b"K" + _tuple(key))
        commit = lsn + sum(map(len, body)) + 200
        xid += 1
        tx = [b"B" + struct.pack("!QqI", commit, xid, xid), relation, *body]
        tx.append(b"C" + struct.pack("!BQQq", 0, commit, commit + 48, xid))
        msgs += tx
        lsns += [commit] * len(tx)
        changes += len(body)
        lsn = commit + 48
    return pa.array(lsns, pa.int64()), pa.array(msgs, pa.binary()), lsn, changes


def median_s(fn: Callable[[int], object], runs: int) -> float:
    times = []
    for i in range(runs):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def touch_all(messages: pa.ChunkedArray) -> int:
    """Read every byte of the messages once (a fold does; a memory map reads only what is touched)."""
    total = 0
    for chunk in messages.chunks:
        body = np.frombuffer(chunk.buffers()[2], np.uint8)
        total += int(body[: len(body) // 8 * 8].view(np.uint64).sum(dtype=np.uint64)) + int(
            body[len(body) // 8 * 8 :].sum()
        )
    return total


def bench_log(log: ChangeLog, commit_lsn: pa.Array, data: pa.Array, last_end: int, changes: int, runs: int):
    def write(i: int) -> None:
        log.write_segment(TABLE, commit_lsn, data, last_end_lsn=last_end, changes=changes)

    def read(i: int) -> None:
        got = log.read(TABLE, after_lsn=None, max_messages=len(data))
        assert len(got.messages) == len(data) and touch_all(got.messages) > 0

    w = median_s(write, runs)
    size = log.pending_bytes(TABLE)
    r = median_s(read, runs)
    log.drop_table(TABLE)
    return w, r, size


def row(label: str, seconds: float, logical_bytes: int, messages: int, size: int) -> str:
    return (
        f"  {label:<34} {seconds * 1e3:8.1f} ms {logical_bytes / seconds / 1e6:8.0f} MB/s "
        f"{messages / seconds / 1e6:6.2f} M msg/s   file {size / 1e6:6.2f} MB"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-s3", action="store_true", help="local disk only")
    args = ap.parse_args()

    commit_lsn, data, last_end, changes = customers_messages(args.messages)
    n, logical = len(data), data.nbytes
    print(f"{n} messages ({changes} row changes), {logical / 1e6:.1f} MB of pgoutput; median of {args.runs} runs")
    places: list[tuple[str, Callable[[str], ChangeLog], object]] = []
    tmp = tempfile.TemporaryDirectory(prefix="pgrepl-changelog-bench-")
    places.append(("local", lambda c: ChangeLog(tmp.name, "bench", compression=c), None))
    server = None
    if not args.no_s3:
        server = ThrowawayS3Server(own_process=True).start()
        server.create_bucket("bench")
        fs = server.filesystem()
        places.append(
            ("s3 (moto)", lambda c: ChangeLog("s3://bench/changes", "bench", filesystem=fs, compression=c), fs)
        )
    try:
        for place, make_log, fs in places:
            print(f"\n{place}:")
            for compression in [None, "lz4", "zstd"]:
                log = make_log(compression)
                w, r, size = bench_log(log, commit_lsn, data, last_end, changes, args.runs)
                print(row(f"write_segment {compression or 'none'}", w, logical, n, size))
                print(row(f"read + touch  {compression or 'none'}", r, logical, n, size))
                body, _ = encode_segment(
                    commit_lsn, data, last_end_lsn=last_end, changes=changes, compression=compression
                )
                raw = body.to_pybytes()
                w, r = raw_baseline(raw, tmp.name, fs, args.runs)
                print(row(f"raw write of those bytes{' + fsync' if fs is None else ''}", w, logical, n, len(raw)))
                print(row("raw read of those bytes", r, logical, n, len(raw)))
    finally:
        if server is not None:
            server.stop()
        tmp.cleanup()
    return 0


def raw_baseline(raw: bytes, directory: str, fs: object, runs: int) -> tuple[float, float]:
    if fs is None:
        path = os.path.join(directory, "raw.bin")

        def write(i: int) -> None:
            with open(path, "wb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())

        def read(i: int) -> None:
            with open(path, "rb") as f:
                assert len(f.read()) == len(raw)

    else:
        path = "bench/raw/raw.bin"

        def write(i: int) -> None:
            fs.pipe_file(path, raw)  # type: ignore[attr-defined]

        def read(i: int) -> None:
            assert len(fs.cat_file(path)) == len(raw)  # type: ignore[attr-defined]

    w = median_s(write, runs)
    r = median_s(read, runs)
    return w, r


if __name__ == "__main__":
    sys.exit(main())

"""The CDC benchmark's workload (row changes made server-side), its raw slot reads, and the source/replica check."""

from __future__ import annotations

import json
import time

#: The slot's content as the hook reads it (pgoutput v1, the table's publication), whole.
PEEK = "pg_logical_slot_peek_binary_changes(%s, NULL, NULL, 'proto_version', '1', 'publication_names', %s)"


def plan(changes: int, rows: int) -> dict:
    """The transactions the workload runs: 100-row transactions, kinds round robin u,u,u,i,d."""
    ntx = (changes + 99) // 100
    counts = {"update": 0, "insert": 0, "delete": 0}
    for i in range(ntx):
        size = min(100, changes - 100 * i)
        counts[("update", "update", "update", "insert", "delete")[i % 5]] += size
    deletes = counts["delete"]
    if deletes + 100 >= rows:
        raise SystemExit(f"--rows ({rows:,}) must exceed the number of deletes ({deletes:,}) by at least 100")
    span = rows - deletes  # updates hit ids deletes+1 .. rows, which are never deleted
    step = next(p for p in (7919, 7927, 7933, 7937) if span % p)
    return {"ntx": ntx, "counts": counts, "span": span, "step": step}


def workload_sql(changes: int, rows: int, p: dict, tables: tuple[str, ...] = ("customers",)) -> str:
    """One DO block running the plan's transactions (deterministic: the same changes every run).

    With several ``tables`` (each built like ``customers``, same row ids), each of the plan's
    transactions runs once per table, interleaved, so every table gets ``changes`` changes in one WAL.
    """
    from psycopg import sql

    names = [sql.Identifier(t).as_string(None) for t in tables]

    def each(statement: str) -> str:
        return "\n".join(statement.format(t=t) + "\n      COMMIT;" for t in names)

    insert = each(
        """      INSERT INTO {t}
        (customer_id, first_name, last_name, email, balance, tags, attrs, created_at, updated_at)
      SELECT r + g, 'New', 'Customer ' || g, 'new' || g || '@example.com',
             round(((g * 7919) % 100000) / 100.0, 2),
             CASE WHEN g % 3 = 0 THEN NULL ELSE ARRAY['new', 'batch ' || i] END,
             jsonb_build_object('tier', 'basic', 'score', g % 1000, 'src', 'bench'),
             timestamptz '2025-01-01 00:00:00+00' + make_interval(secs => g),
             CASE WHEN g % 2 = 0 THEN NULL ELSE timestamptz '2025-06-01 00:00:00+00' + make_interval(secs => g) END
      FROM generate_series(ins + 1, ins + sz) g;"""
    )
    delete = each("      DELETE FROM {t} WHERE customer_id BETWEEN del + 1 AND del + sz;")
    update = each(
        """      UPDATE {t}
         SET balance = coalesce(balance, 0) + 1.25,
             email = 'u' || i || '.' || customer_id || '@upd.example',
             attrs = jsonb_set(coalesce(attrs, '{{}}'::jsonb), '{{score}}', to_jsonb(i)),
             updated_at = timestamptz '2025-01-01 00:00:00+00' + make_interval(secs => i)
       WHERE customer_id IN (SELECT lo + 1 + (k * step) % span FROM generate_series(u, u + sz - 1) k);"""
    )
    return f"""
DO $bench$
DECLARE
  n bigint := {changes}; r bigint := {rows}; lo bigint := {p["counts"]["delete"]};
  span bigint := {p["span"]}; step bigint := {p["step"]};
  sz bigint; u bigint := 0; ins bigint := 0; del bigint := 0;
BEGIN
  FOR i IN 0 .. {p["ntx"] - 1} LOOP
    sz := least(100, n - i::bigint * 100);
    IF i % 5 = 3 THEN
{insert}
      ins := ins + sz;
    ELSIF i % 5 = 4 THEN
{delete}
      del := del + sz;
    ELSE
{update}
      u := u + sz;
    END IF;
  END LOOP;
END
$bench$;
"""


def raw_sql_drain(dsn: str, slot: str, pub: str) -> tuple[float, tuple]:
    """Server-side decoding only: count and total size of the peek's messages."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        t0 = time.monotonic()
        row = conn.execute(f"SELECT count(*), sum(length(data)) FROM {PEEK}", (slot, pub)).fetchone()
        return time.monotonic() - t0, row


def raw_python_fetch(dsn: str, slot: str, pub: str, binary: bool = False) -> tuple[float, list]:
    """All (lsn, data) rows of the peek, fetched into Python (client-side cursor, fetchall): the ratio's base."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        t0 = time.monotonic()
        rows = conn.cursor(binary=binary).execute(f"SELECT lsn::text, data FROM {PEEK}", (slot, pub)).fetchall()
        return time.monotonic() - t0, rows


PG_SELECT = (
    "SELECT customer_id, first_name, last_name, email, balance, tags, attrs, "
    "(extract(epoch FROM created_at) * 1000000)::bigint, "
    "(extract(epoch FROM updated_at) * 1000000)::bigint FROM {} ORDER BY customer_id"
)
DUCK_SELECT = (
    "SELECT customer_id, first_name, last_name, email, balance, tags, attrs, "
    "epoch_us(created_at), epoch_us(updated_at) FROM replica.{} ORDER BY customer_id"
)


def compare(dsn: str, duck_path: str, table: str = "customers") -> tuple[int, int, list]:
    """(source rows, destination rows, first differences) over all columns of ``table``, by key."""
    import duckdb
    import psycopg
    from psycopg import sql

    name = sql.Identifier(table).as_string(None)
    with psycopg.connect(dsn) as conn:
        src = conn.execute(sql.SQL(PG_SELECT).format(sql.Identifier(table))).fetchall()
    with duckdb.connect(duck_path, read_only=True) as con:
        dst_raw = con.execute(DUCK_SELECT.format(name)).fetchall()

    def js(v: object) -> object:
        return json.loads(v) if isinstance(v, str) else v

    dst = [(*r[:5], js(r[5]), js(r[6]), *r[7:]) for r in dst_raw]
    diffs: list = []
    if len(src) == len(dst):
        for a, b in zip(src, dst):
            if tuple(a) != tuple(b):
                diffs.append((a, b))
                if len(diffs) >= 3:
                    break
    else:
        sk = {r[0] for r in src}
        dk = {r[0] for r in dst}
        diffs = [("only in source", sorted(sk - dk)[:5]), ("only in destination", sorted(dk - sk)[:5])]
    return len(src), len(dst), diffs

"""Capture real ``pgoutput`` (protocol version 1) messages as a test fixture.

Usage::

    python tests/unit/source/data/capture_pgoutput.py DSN [OUTPUT]

``DSN`` must point at a scratch database of a PostgreSQL server running with
``wal_level=logical``, as a superuser (replication origins need it).  The
script (re-)creates the schema ``pgoutput_cap``, the publication
``pgoutput_cap_pub``, the logical slot ``pgoutput_cap_slot`` and the
replication origin ``pgoutput_cap_origin``, runs a fixed scenario of
transactions, peeks the slot with::

    pg_logical_slot_peek_binary_changes(slot, NULL, NULL,
        'proto_version', '1', 'publication_names', pub, 'messages', 'true')

and drops everything again.  ``'messages', 'true'`` is needed for
``pg_logical_emit_message`` output to be sent at all.  It writes
``OUTPUT`` (default: ``pgoutput_v1_pg15.json`` next to this script)::

    {
      "server_version": "...",
      "started_at" / "finished_at": server clock (ISO 8601, UTC) around the scenario,
      "oids": {"orders": ..., "mood": ..., ...},      # tables and the enum type
      "xids": {"t1_insert_orders": ..., ...},         # label -> top-level xid
      "origin": {"name": ..., "lsn": "0/ABCDEF01"},
      "messages": [{"lsn": "0/1A2B3C", "xid": 745, "data": "<hex>"}, ...],
      "binary_messages": [...]  # transaction t1 peeked again with 'binary','true'
    }

Each ``messages`` entry is one row of the peek: the ``lsn`` and ``xid``
columns and the ``data`` bytea (one pgoutput message) as hex.  Scenario
(see ``tests/unit/test_pgoutput.py`` for the expected decoded values):

t1  insert two rows into ``orders`` (composite key, varied types, an enum
    type -> 'Y' message; the 2nd row has an empty note and NULLs elsewhere)
t2  insert into ``docs`` with a large, out-of-line (STORAGE EXTERNAL) body
t3  update ``docs.title`` only -> body arrives as unchanged TOAST ('u')
t4  REPLICA IDENTITY FULL table ``audit``: insert, update, delete -> 'O'
t5  primary key update on ``orders`` -> old key tuple 'K'
t6  non-key update on ``orders`` -> no old tuple
t7  delete from ``orders`` -> 'K'
t8  ALTER TABLE orders ADD COLUMN, then insert -> a second Relation message
t9  transactional pg_logical_emit_message plus an insert; then a
    non-transactional message (label ``nontx_message``, no xid recorded)
t10 multi-statement transaction over parent/child/by_index/orders
    (``by_index`` has REPLICA IDENTITY USING INDEX)
t11 a transaction replayed under a replication origin -> 'O' (Origin)
t12 TRUNCATE parent, audit RESTART IDENTITY CASCADE (cascades to child)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import psycopg

SCHEMA = "pgoutput_cap"
PUB = "pgoutput_cap_pub"
SLOT = "pgoutput_cap_slot"
ORIGIN = "pgoutput_cap_origin"
ORIGIN_LSN = "0/ABCDEF01"
TABLES = ("orders", "docs", "audit", "parent", "child", "by_index")
# Incompressible-looking, deterministic, > TOAST threshold (stored out of line).
BIG_BODY = "".join(f"{i:05d}-lorem-ipsum|" for i in range(250))  # 4000 chars
UNICODE_NOTE = "Grüße \"double\" 'single' \\ back ☃ 日本語 😀"

PEEK_SQL = (
    "SELECT lsn::text, xid::text::bigint, data"
    " FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL,"
    " 'proto_version', '1', 'publication_names', %s, 'messages', 'true'{extra})"
)


def cleanup(conn: psycopg.Connection) -> None:
    conn.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
        (SLOT,),
    )
    conn.execute(f"DROP PUBLICATION IF EXISTS {PUB}")
    conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    conn.execute(
        "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE roname = %s",
        (ORIGIN,),
    )


def setup(conn: psycopg.Connection) -> None:
    s = SCHEMA
    for sql in (
        f"CREATE SCHEMA {s}",
        f"CREATE TYPE {s}.mood AS ENUM ('sad', 'ok', 'happy')",
        f"""CREATE TABLE {s}.orders (
                region text NOT NULL,
                order_no integer NOT NULL,
                note text,
                amount numeric(12,2),
                paid boolean,
                attrs jsonb,
                tags text[],
                blob bytea,
                created_at timestamptz,
                mood {s}.mood,
                PRIMARY KEY (region, order_no))""",
        f"CREATE TABLE {s}.docs (id integer PRIMARY KEY, title text, body text)",
        f"ALTER TABLE {s}.docs ALTER COLUMN body SET STORAGE EXTERNAL",
        f"CREATE TABLE {s}.audit (id integer, msg text)",
        f"ALTER TABLE {s}.audit REPLICA IDENTITY FULL",
        f"CREATE TABLE {s}.parent (id serial PRIMARY KEY, name text)",
        f"""CREATE TABLE {s}.child (id serial PRIMARY KEY,
                parent_id integer REFERENCES {s}.parent (id))""",
        f"CREATE TABLE {s}.by_index (code varchar(8) NOT NULL, v integer)",
        f"CREATE UNIQUE INDEX by_index_code ON {s}.by_index (code)",
        f"ALTER TABLE {s}.by_index REPLICA IDENTITY USING INDEX by_index_code",
        f"CREATE PUBLICATION {PUB} FOR TABLE " + ", ".join(f"{s}.{t}" for t in TABLES),
        f"SELECT pg_replication_origin_create('{ORIGIN}')",
    ):
        conn.execute(sql)
    conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (SLOT,))


def run_scenario(conn: psycopg.Connection) -> dict[str, int]:
    s = SCHEMA
    xids: dict[str, int] = {}

    def tx(label: str, *statements: tuple[str, tuple] | str) -> None:
        with conn.transaction():
            for st in statements:
                sql, params = (st, ()) if isinstance(st, str) else st
                conn.execute(sql, params)
            xids[label] = conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0]

    tx(
        "t1_insert_orders",
        (
            f"""INSERT INTO {s}.orders VALUES
                ('eu', 1, %s, 1234.5, true, '{{"b": null, "a": [1, 2]}}',
                 ARRAY['x', 'y z', '"q"', NULL], '\\x00ff10'::bytea,
                 '2024-02-29 12:34:56.789+00', 'happy'),
                ('us', 2, '', NULL, NULL, NULL, NULL, NULL, NULL, NULL)""",
            (UNICODE_NOTE,),
        ),
    )
    tx("t2_insert_doc", (f"INSERT INTO {s}.docs VALUES (1, 'first', %s)", (BIG_BODY,)))
    tx("t3_update_doc_title", f"UPDATE {s}.docs SET title = 'second' WHERE id = 1")
    tx(
        "t4_audit_full",
        f"INSERT INTO {s}.audit VALUES (1, 'a'), (2, NULL)",
        f"UPDATE {s}.audit SET msg = 'b' WHERE id = 1",
        f"DELETE FROM {s}.audit WHERE id = 2",
    )
    tx(
        "t5_pk_update",
        f"UPDATE {s}.orders SET order_no = 10 WHERE region = 'eu' AND order_no = 1",
    )
    tx("t6_nonkey_update", f"UPDATE {s}.orders SET paid = false WHERE region = 'us'")
    tx("t7_delete", f"DELETE FROM {s}.orders WHERE region = 'us'")
    tx(
        "t8_add_column",
        f"ALTER TABLE {s}.orders ADD COLUMN extra integer DEFAULT 7",
        f"INSERT INTO {s}.orders (region, order_no, note) VALUES ('ap', 3, 'after alter')",
    )
    tx(
        "t9_message",
        "SELECT pg_logical_emit_message(true, 'cap/tx', 'hello ☃')",
        f"INSERT INTO {s}.orders (region, order_no) VALUES ('ap', 4)",
    )
    conn.execute("SELECT pg_logical_emit_message(false, 'cap/nontx', '\\x0001ff'::bytea)")
    tx(
        "t10_multi",
        f"INSERT INTO {s}.parent (name) VALUES ('p1')",
        f"INSERT INTO {s}.child (parent_id) VALUES (1)",
        f"INSERT INTO {s}.by_index VALUES ('k1', 1)",
        f"UPDATE {s}.orders SET note = 'multi' WHERE region = 'eu'",
        f"DELETE FROM {s}.by_index WHERE code = 'k1'",
    )
    conn.execute("SELECT pg_replication_origin_session_setup(%s)", (ORIGIN,))
    try:
        tx(
            "t11_origin",
            (
                "SELECT pg_replication_origin_xact_setup(%s::pg_lsn, now())",
                (ORIGIN_LSN,),
            ),
            f"INSERT INTO {s}.audit VALUES (3, 'from origin')",
        )
    finally:
        conn.execute("SELECT pg_replication_origin_session_reset()")
    tx(
        "t12_truncate",
        f"TRUNCATE {s}.parent, {s}.audit RESTART IDENTITY CASCADE",
    )
    return xids


def peek(conn: psycopg.Connection, extra: str = "") -> list[dict]:
    rows = conn.execute(PEEK_SQL.format(extra=extra), (SLOT, PUB)).fetchall()
    return [{"lsn": lsn, "xid": xid, "data": bytes(data).hex()} for lsn, xid, data in rows]


def capture(dsn: str) -> dict:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        cleanup(conn)
        setup(conn)
        try:
            started = conn.execute("SELECT clock_timestamp()").fetchone()[0]
            xids = run_scenario(conn)
            finished = conn.execute("SELECT clock_timestamp()").fetchone()[0]
            oids = {
                t: conn.execute("SELECT %s::regclass::oid::bigint", (f"{SCHEMA}.{t}",)).fetchone()[0] for t in TABLES
            }
            oids["mood"] = conn.execute("SELECT %s::regtype::oid::bigint", (f"{SCHEMA}.mood",)).fetchone()[0]
            messages = peek(conn)
            t1 = xids["t1_insert_orders"]
            binary_messages = [m for m in peek(conn, ", 'binary', 'true'") if m["xid"] == t1]
            version = conn.execute("SHOW server_version").fetchone()[0]
        finally:
            cleanup(conn)
    return {
        "server_version": version,
        "started_at": started.isoformat(),
        "finished_at": finished.isoformat(),
        "oids": oids,
        "xids": xids,
        "origin": {"name": ORIGIN, "lsn": ORIGIN_LSN},
        "messages": messages,
        "binary_messages": binary_messages,
    }


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[2]) if len(argv) == 3 else Path(__file__).with_name("pgoutput_v1_pg15.json")
    result = capture(argv[1])
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(result['messages'])} messages to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

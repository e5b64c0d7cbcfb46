"""Primary-key updates of rows whose TOASTed column is unchanged: the value comes from the row as it was
before the change (earlier in the batch, or the destination under the old key), never NULL; when it is
nowhere the apply fails before writing anything. Each success is checked as destination-equals-source."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import duckdb
import pytest
from psycopg import sql

import airflow_pg_replication.destination.duckdb.table as loading
import airflow_pg_replication.sync.batch_write as apply_module
from airflow_pg_replication import PgCdcApplyOperator, PgFullRefreshOperator
from airflow_pg_replication.destination.dlt_table import DltTableDestination as TableDestination
from airflow_pg_replication.destination.duckdb.table import DuckDbTableDestination
from airflow_pg_replication.errors import NeedsAttentionError
from tests.integration.conftest import source_rows

COLS = ["id", "title", "body"]
BODY = 32_000  # repeat(md5(...), 1000): stored out of line, uncompressed (STORAGE EXTERNAL)

pytestmark = pytest.mark.parametrize("deletes", ["hard", "soft"])


def run_sql(pg_db, template: str, *names: str | tuple[str, ...], params: Sequence | None = None) -> None:
    """One statement whose ``{}`` placeholders are identifiers (a tuple: a qualified name)."""
    ids = [sql.Identifier(*n) if isinstance(n, tuple) else sql.Identifier(n) for n in names]
    pg_db.execute(sql.SQL(template).format(*ids), params)


def make_docs(pg_db, table: str = "docs", n: int = 10) -> None:
    """``table`` (id primary key, title, body) with ``n`` rows whose body is TOASTed out of line."""
    run_sql(pg_db, "CREATE TABLE {} (id int PRIMARY KEY, title text, body text)", table)
    run_sql(pg_db, "ALTER TABLE {} ALTER COLUMN {} SET STORAGE EXTERNAL", table, "body")
    run_sql(
        pg_db,
        "INSERT INTO {} SELECT g, 't' || g, repeat(md5(g::text), 1000) FROM generate_series(1, %s) g",
        table,
        params=(n,),
    )


def ops(duck, table: str, deletes: str, **kw) -> tuple[PgFullRefreshOperator, PgCdcApplyOperator]:
    common = dict(table=table, source_conn_id="pg_source", destination=duck.spec, deletes=deletes, **kw)
    return PgFullRefreshOperator(task_id="full_refresh", **common), PgCdcApplyOperator(task_id="apply", **common)


def started(pg_db, duck, deletes: str, table: str = "docs", **kw) -> PgCdcApplyOperator:
    """The table made, snapshotted, and its apply operator (in slot group default unless ``slot`` is given)."""
    make_docs(pg_db, table)
    full, apply = ops(duck, table, deletes, **kw)
    full.execute({})
    return apply


def live_rows(
    duck, deletes: str, table: str = "docs", cols: Sequence[str] = COLS, key: Sequence[str] = ("id",)
) -> list[tuple]:
    """The destination's rows not soft-deleted, ordered by key."""
    if deletes == "hard":
        return duck.rows(table, cols, key)
    return [r[:-1] for r in duck.rows(table, [*cols, "_pg_deleted_at"], key) if r[-1] is None]


def assert_same(
    pg_db, duck, deletes: str, table: str = "docs", cols: Sequence[str] = COLS, key: Sequence[str] = ("id",)
) -> None:
    """The destination's live rows equal the source's, every column; soft-deleted rows kept their values."""
    want = source_rows(pg_db, f"public.{table}", cols, key)
    if deletes == "hard":
        assert duck.rows(table, cols, key) == want
        return
    got = duck.rows(table, [*cols, "_pg_deleted_at"], key)
    assert [r[:-1] for r in got if r[-1] is None] == want
    gone = [r for r in got if r[-1] is not None]
    assert all(len(r[cols.index("body")]) == BODY for r in gone), "a soft-deleted row lost its body"


def test_key_change_alone(pg_db, duck, deletes):
    apply = started(pg_db, duck, deletes)
    pg_db.execute("UPDATE docs SET id = 101 WHERE id = 1")
    pg_db.execute("UPDATE docs SET id = id + 200 WHERE id IN (2, 3)")
    apply.execute({})
    assert_same(pg_db, duck, deletes)


def test_key_change_after_insert_in_same_batch(pg_db, duck, deletes):
    apply = started(pg_db, duck, deletes)
    pg_db.execute("INSERT INTO docs VALUES (50, 'new', repeat(md5('fifty'), 1000))")
    pg_db.execute("UPDATE docs SET id = 51 WHERE id = 50")
    apply.execute({})
    assert_same(pg_db, duck, deletes)


def test_key_change_of_row_updated_earlier_in_batch(pg_db, duck, deletes):
    apply = started(pg_db, duck, deletes)
    pg_db.execute("UPDATE docs SET title = 'edited' WHERE id = 4")  # body: unchanged TOAST
    pg_db.execute("UPDATE docs SET id = 104 WHERE id = 4")
    with pg_db.connect() as conn, conn.transaction():  # both in one transaction as well
        conn.execute("UPDATE docs SET title = 'edited too' WHERE id = 5")
        conn.execute("UPDATE docs SET id = 105, title = 'moved' WHERE id = 5")
    apply.execute({})
    assert_same(pg_db, duck, deletes)


def test_key_chains_in_one_batch(pg_db, duck, deletes):
    apply = started(pg_db, duck, deletes)
    pg_db.execute("UPDATE docs SET id = 101 WHERE id = 1")  # 1 -> 101 -> 201 -> 301, three transactions
    pg_db.execute("UPDATE docs SET id = 201 WHERE id = 101")
    pg_db.execute("UPDATE docs SET id = 301, title = 'end' WHERE id = 201")
    with pg_db.connect() as conn, conn.transaction():  # 2 -> 102 -> 202, one transaction
        conn.execute("UPDATE docs SET id = 102 WHERE id = 2")
        conn.execute("UPDATE docs SET title = 'between' WHERE id = 102")
        conn.execute("UPDATE docs SET id = 202 WHERE id = 102")
    apply.execute({})
    assert_same(pg_db, duck, deletes)


def test_keys_swapped_through_a_temporary_key(pg_db, duck, deletes):
    """Each row must get the other's old body: reading under the new key would get its own back."""
    apply = started(pg_db, duck, deletes)
    with pg_db.connect() as conn, conn.transaction():
        conn.execute("UPDATE docs SET id = 999 WHERE id = 1")
        conn.execute("UPDATE docs SET id = 1 WHERE id = 2")
        conn.execute("UPDATE docs SET id = 2 WHERE id = 999")
    apply.execute({})
    assert_same(pg_db, duck, deletes)


def test_key_reused_after_delete_gets_the_moved_row_value(pg_db, duck, deletes):
    apply = started(pg_db, duck, deletes)
    pg_db.execute("DELETE FROM docs WHERE id = 7")
    pg_db.execute("UPDATE docs SET id = 7 WHERE id = 6")  # key 7 in the destination still has the old body
    apply.execute({})
    assert_same(pg_db, duck, deletes)


def test_key_change_across_batches(pg_db, duck, deletes):
    apply = started(pg_db, duck, deletes)
    pg_db.execute("INSERT INTO docs VALUES (60, 'sixty', repeat(md5('sixty'), 1000))")
    apply.execute({})
    assert_same(pg_db, duck, deletes)
    for old, new in ((60, 61), (61, 62), (8, 108)):
        pg_db.execute("UPDATE docs SET id = %s WHERE id = %s", (new, old))
        apply.execute({})
        assert_same(pg_db, duck, deletes)


def test_composite_primary_key(pg_db, duck, deletes):
    pg_db.execute("CREATE TABLE regional (region text, id int, title text, body text, PRIMARY KEY (region, id))")
    run_sql(pg_db, "ALTER TABLE {} ALTER COLUMN {} SET STORAGE EXTERNAL", "regional", "body")
    pg_db.execute(
        "INSERT INTO regional SELECT r, g, 't' || g, repeat(md5(r || g), 1000) "
        "FROM unnest(ARRAY['eu', 'us']) r, generate_series(1, 5) g"
    )
    full, apply = ops(duck, "regional", deletes)
    full.execute({})
    pg_db.execute("UPDATE regional SET region = 'us', id = 9 WHERE region = 'eu' AND id = 1")
    pg_db.execute("UPDATE regional SET id = 10 WHERE region = 'us' AND id = 9")  # chain over both key columns
    pg_db.execute("UPDATE regional SET region = region || '-x' WHERE id = 2")  # two rows in one statement
    apply.execute({})
    cols, key = ["region", "id", "title", "body"], ["region", "id"]
    assert_same(pg_db, duck, deletes, "regional", cols, key)
    pg_db.execute("UPDATE regional SET region = 'eu', id = 1 WHERE region = 'us' AND id = 10")  # back again
    apply.execute({})
    assert_same(pg_db, duck, deletes, "regional", cols, key)


def test_key_change_in_a_transaction_applied_in_parts(pg_db, duck, deletes, caplog):
    """A transaction past max_rows_in_memory is applied part by part; a later part reads the row under the key
    an earlier part wrote it to (the destination then holds the source as of the part's start)."""
    apply = started(pg_db, duck, deletes)
    apply.max_rows_in_memory = 100
    with pg_db.connect() as conn, conn.transaction():
        conn.execute("UPDATE docs SET id = 101 WHERE id = 1")
        conn.execute("UPDATE docs SET title = 'in part one' WHERE id = 2")
        conn.execute("INSERT INTO docs SELECT g, 'filler', 'small' FROM generate_series(1000, 1300) g")
        conn.execute("UPDATE docs SET id = 201 WHERE id = 101")
        conn.execute("UPDATE docs SET id = 102 WHERE id = 2")
        conn.execute("UPDATE docs SET id = 1 WHERE id = 3")  # a key deleted in an earlier part, reused
    with caplog.at_level(logging.INFO, logger="airflow_pg_replication.operators.cdc_apply"):
        apply.execute({})
    assert "applying part 2 of a large batch" in caplog.text
    assert live_rows(duck, deletes) == source_rows(pg_db, "public.docs", COLS, ["id"])


def _destination_now(duck) -> tuple[list, list]:
    """Every row and column of the destination table and of its state row."""

    def everything(table: str) -> list:
        q = sql.SQL("SELECT * FROM {} ORDER BY 1").format(sql.Identifier(duck.dataset, table))
        return duck.query(q.as_string(None))

    return everything("docs"), everything("_pg_replication_state")


def _slot_position(pg_db) -> str:
    return pg_db.query(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", ("pgrepl_public_docs",)
    )[0][0]


def test_value_nowhere_fails_before_writing(pg_db, duck, deletes):
    apply = started(pg_db, duck, deletes, slot="pgrepl_public_docs")  # the slot position is checked
    pg_db.execute("INSERT INTO docs VALUES (70, 'other change', 'x')")  # other changes of the batch
    pg_db.execute("UPDATE docs SET id = 101 WHERE id = 1")
    pg_db.execute("UPDATE docs SET title = 'same batch' WHERE id = 2")
    delete = sql.SQL("DELETE FROM {} WHERE {} = ?").format(sql.Identifier(duck.dataset, "docs"), sql.Identifier("id"))
    with duckdb.connect(str(duck.path)) as con:  # the destination lost the row the new key must read from
        con.execute(delete.as_string(None), [1])
    before, slot_before = _destination_now(duck), _slot_position(pg_db)
    for _ in range(2):  # and again: nothing was half-applied
        with pytest.raises(NeedsAttentionError) as err:
            apply.execute({})
        assert _destination_now(duck) == before and _slot_position(pg_db) == slot_before
    msg = str(err.value)
    for part in ("public.docs", "(id) = (101,)", "(id) = (1,)", "column(s) body", "commit LSN", "full_refresh=true"):
        assert part in msg, msg
    full, _ = ops(duck, "docs", deletes, slot="pgrepl_public_docs")  # the fix the message gives
    full.execute({})
    apply.execute({})
    assert_same(pg_db, duck, deletes)


# -- a batch applied again after an interrupted attempt: the old key may be gone or hold another row --------


def _dying_when_recording_state(monkeypatch) -> None:
    """The generic (dlt, step by step) path, dying after the data is loaded, before the state is recorded."""

    def crash(*args, **kwargs):
        raise RuntimeError("worker died while recording the applied LSN")

    monkeypatch.setattr(DuckDbTableDestination, "native", False)
    monkeypatch.setattr(loading, "state_statements", crash)
    monkeypatch.setattr(TableDestination, "write_state", crash)


def test_replay_after_crash_before_state_fails_instead_of_guessing(pg_db, duck, deletes, monkeypatch):
    """Reading the old key again would give key 1 its own old body (key 2 holds it by now): it must fail."""
    apply = started(pg_db, duck, deletes, slot="pgrepl_public_docs")  # the slot position is checked
    with monkeypatch.context() as m:
        m.setattr(DuckDbTableDestination, "native", False)
        pg_db.execute("UPDATE docs SET id = 108 WHERE id = 8")
        apply.execute({})  # the generic path applies key changes like DuckDB's
        assert_same(pg_db, duck, deletes)
    with pg_db.connect() as conn, conn.transaction():
        conn.execute("UPDATE docs SET id = 999 WHERE id = 1")
        conn.execute("UPDATE docs SET id = 1 WHERE id = 2")
        conn.execute("UPDATE docs SET id = 2 WHERE id = 999")
    pg_db.execute("UPDATE docs SET id = 105 WHERE id = 5")
    with monkeypatch.context() as m:
        _dying_when_recording_state(m)
        with pytest.raises(RuntimeError, match="worker died"):
            apply.execute({})
    assert_same(pg_db, duck, deletes)  # the data committed, the state did not
    before, slot_before = _destination_now(duck), _slot_position(pg_db)
    with pytest.raises(NeedsAttentionError, match="interrupted earlier attempt"):
        apply.execute({})
    assert _destination_now(duck) == before and _slot_position(pg_db) == slot_before
    full, _ = ops(duck, "docs", deletes, slot="pgrepl_public_docs")
    full.execute({})
    apply.execute({})
    assert_same(pg_db, duck, deletes)


def test_replay_after_crash_between_parts_fails_instead_of_guessing(pg_db, duck, deletes, monkeypatch):
    """The first part moved row 1 to 101 before the crash: applied again, key 1 is gone (or soft-deleted
    since), so row 101's body is nowhere the batch may read it from."""
    apply = started(pg_db, duck, deletes, slot="pgrepl_public_docs")  # the slot position is checked
    apply.max_rows_in_memory = 100
    with pg_db.connect() as conn, conn.transaction():
        conn.execute("UPDATE docs SET id = 101 WHERE id = 1")
        conn.execute("INSERT INTO docs SELECT g, 'filler', 'small' FROM generate_series(1000, 1300) g")
    real_apply = apply_module.write_change_batch
    parts: list[int] = []

    def dying_after_first_part(*args, **kwargs):
        if parts:
            raise RuntimeError("worker died between parts")
        parts.append(1)
        return real_apply(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(apply_module, "write_change_batch", dying_after_first_part)
        with pytest.raises(RuntimeError, match="between parts"):
            apply.execute({})
    before, slot_before = _destination_now(duck), _slot_position(pg_db)
    with pytest.raises(NeedsAttentionError, match=r"\(id\) = \(101,\)"):
        apply.execute({})
    assert _destination_now(duck) == before and _slot_position(pg_db) == slot_before
    full, _ = ops(duck, "docs", deletes, slot="pgrepl_public_docs")
    full.execute({})
    apply.execute({})
    assert live_rows(duck, deletes) == source_rows(pg_db, "public.docs", COLS, ["id"])

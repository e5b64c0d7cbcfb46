"""Integration tests for the throwaway PostgreSQL cluster and the pg_cluster / pg_db fixtures."""

from __future__ import annotations

import os
import subprocess
import time

import psycopg
import pytest

from airflow_pg_replication.testing.throwaway_cluster import ThrowawayCluster


def _show(dsn: str, setting: str) -> str:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SHOW {setting}").fetchone()[0]


def test_cluster_runs_with_logical_wal_level(pg_cluster: ThrowawayCluster) -> None:
    dsn = pg_cluster.dsn()
    assert dsn == f"postgresql://postgres@127.0.0.1:{pg_cluster.port}/postgres"
    assert _show(dsn, "wal_level") == "logical"
    assert _show(dsn, "max_replication_slots") == "50"
    assert _show(dsn, "max_wal_senders") == "50"
    assert _show(dsn, "fsync") == "off"
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == "postgres"


def test_pg_db_is_fresh_and_exported(pg_db, pg_db_factory) -> None:
    other = pg_db_factory()
    assert pg_db.name != other.name
    assert os.environ["AIRFLOW_CONN_PG_SOURCE"] == pg_db.conn_uri
    assert pg_db.query("SELECT current_database()") == [(pg_db.name,)]
    assert other.query("SELECT current_database()") == [(other.name,)]
    user_tables = "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
    assert pg_db.query(user_tables) == [(0,)]
    pg_db.execute("CREATE TABLE only_here (id int)")
    assert pg_db.query(user_tables) == [(1,)]
    assert other.query(user_tables) == [(0,)]


def test_pgoutput_slot_sees_insert(pg_db) -> None:
    slot = f"slot_{pg_db.name}"[:63]
    pg_db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    pg_db.execute("CREATE PUBLICATION p FOR TABLE t")
    pg_db.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    pg_db.execute("INSERT INTO t VALUES (1, 'hello')")
    # synchronous_commit=off: decoding only sees WAL once the walwriter has flushed it (~200 ms).
    deadline = time.monotonic() + 5
    while not (
        rows := pg_db.query(
            "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL,"
            " 'proto_version', '1', 'publication_names', 'p')",
            (slot,),
        )
    ):
        assert time.monotonic() < deadline, "insert never became visible to the slot"
        time.sleep(0.05)
    kinds = [bytes(data)[:1] for (data,) in rows]
    assert kinds == [b"B", b"R", b"I", b"C"]  # begin, relation, insert, commit
    assert b"hello" in bytes(rows[2][0])


def test_drop_database_removes_active_slot(pg_cluster: ThrowawayCluster) -> None:
    name = "t_drop_with_active_slot"
    dsn = pg_cluster.create_database(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE PUBLICATION p FOR ALL TABLES")
        conn.execute("SELECT pg_create_logical_replication_slot('drop_me', 'pgoutput')")
    recv = subprocess.Popen(
        [
            os.path.join(pg_cluster.bindir, "pg_recvlogical"),
            "-d",
            dsn,
            "-S",
            "drop_me",
            "--start",
            "-n",
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=p",
            "-f",
            os.devnull,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        admin = pg_cluster.dsn()
        deadline = time.monotonic() + 10
        with psycopg.connect(admin, autocommit=True) as conn:
            while not conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = 'drop_me'").fetchone()[0]:
                assert time.monotonic() < deadline, "pg_recvlogical never attached to the slot"
                time.sleep(0.05)
        pg_cluster.drop_database(name)
        with psycopg.connect(admin) as conn:
            assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone()[0] == 0
            assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,)).fetchone()[0] == 0
        assert recv.wait(timeout=10) != 0  # its walsender was terminated
    finally:
        recv.kill()
        recv.wait()


def test_custom_settings_and_restart() -> None:
    with ThrowawayCluster(settings={"wal_level": "replica"}) as cluster:
        datadir = cluster.datadir
        assert _show(cluster.dsn(), "wal_level") == "replica"
        cluster.restart({"wal_level": "logical", "max_slot_wal_keep_size": "1MB"})
        assert _show(cluster.dsn(), "wal_level") == "logical"
        assert _show(cluster.dsn(), "max_slot_wal_keep_size") == "1MB"
        port = cluster.port
    assert not datadir.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=2)

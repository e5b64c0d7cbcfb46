"""Keep a slot's exported snapshot alive in a process of its own, so a copy can outlive its task.

An exported snapshot lives only as long as the replication connection that created the slot. In
the task's own process it dies with the task; held here, a retried task can import it again and
go on from the ranges it had committed (see :mod:`.ranged_copy`)::

    task ──spawn──► keeper (own session): CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT ──► {lsn, snapshot}
    task: sessions named ``pgrepl_copy <snapshot>`` use it ── keeper polls pg_stat_activity each second
    no such session for ``hold_seconds`` (the task died and no retry came) ──► keeper exits: snapshot gone
    copy done ──► :func:`release` ends the keeper's sessions (from any process) ──► keeper exits

A temporary slot (a table joining its slot group) lives exactly as long as the keeper. The keeper
holds back the source's vacuum horizon while it lives, as any open snapshot does; ``hold_seconds``
bounds that after a task's death.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_pg_replication.errors import TransientError

if TYPE_CHECKING:
    import psycopg

    from airflow_pg_replication.source.database import SourceDatabase

log = logging.getLogger(__name__)

#: How long a snapshot is kept for a retry once no task uses it (its task died).
HOLD_SECONDS = 900
KEEPER_APP = "pgrepl_snapshot_keeper "  # + "<snapshot> <walsender pid>": the keeper's watching session
USER_APP = "pgrepl_copy "  # + snapshot name: the sessions of a copy that uses the snapshot


@dataclass
class HeldSnapshot:
    """A slot created with an exported snapshot that a keeper process holds."""

    slot: str
    consistent_lsn: int
    snapshot_name: str
    process: subprocess.Popen[bytes] | None = None


def user_application_name(snapshot: str) -> str:
    """The ``application_name`` of a session that uses ``snapshot`` (the keeper holds it while one exists)."""
    return USER_APP + snapshot


def start_keeper() -> subprocess.Popen[bytes]:
    """Start a keeper process, idle until :func:`hold_snapshot` gives it a slot to create.

    Started early, its interpreter's start-up overlaps with the task's own preparation.
    """
    return subprocess.Popen(
        [sys.executable, "-m", "airflow_pg_replication.source.snapshot_keeper"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # errors come back on stdout; the task's own pipes are not held open
        start_new_session=True,  # outlives the task's process group
    )


def hold_snapshot(
    source: SourceDatabase,
    slot: str,
    *,
    temporary: bool,
    hold_seconds: float = HOLD_SECONDS,
    keeper: subprocess.Popen[bytes] | None = None,
) -> HeldSnapshot:
    """Have a keeper (``keeper``, or a new one) create ``slot`` with an exported snapshot; returns once it exists."""
    from airflow_pg_replication.source.pgoutput import parse_lsn

    request = {
        "params": source.connect_params(),  # on the pipe, never on the command line or in the environment
        "slot": slot,
        "temporary": temporary,
        "hold_seconds": hold_seconds,
    }
    proc = keeper or start_keeper()
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(request).encode() + b"\n")
    proc.stdin.close()
    answer = json.loads(proc.stdout.readline() or b'{"error": "the snapshot keeper exited without an answer"}')
    proc.stdout.close()
    if "error" in answer:
        proc.wait(10)
        raise TransientError(f"cannot create slot {slot!r} with an exported snapshot: {answer['error']}")
    log.info(
        "created %sslot %s at consistent point %s, snapshot %s, held by process %d for up to %d s after its last use",
        "temporary " if temporary else "",
        slot,
        answer["lsn"],
        answer["snapshot"],
        proc.pid,
        hold_seconds,
    )
    return HeldSnapshot(slot, parse_lsn(answer["lsn"]), answer["snapshot"], proc)


def dismiss(keeper: subprocess.Popen[bytes] | None) -> None:
    """End a keeper that was started and given no slot (its stdin closes: it exits)."""
    if keeper is not None and keeper.returncode is None and keeper.stdin is not None and not keeper.stdin.closed:
        keeper.stdin.close()
        keeper.wait(10)


def snapshot_alive(conn: psycopg.Connection, snapshot: str) -> bool:
    """True when ``snapshot`` can still be imported (its exporting session is alive)."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    params = conn.info.get_parameters()
    if conn.info.password:
        params["password"] = conn.info.password
    with psycopg.connect(make_conninfo(**params)) as probe:
        probe.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        try:
            probe.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        except psycopg.Error:
            return False
        return True


def use_snapshot(conn: psycopg.Connection, snapshot: str) -> None:
    """Mark ``conn``'s session as a user of ``snapshot``: its keeper holds it while this session lives."""
    conn.execute("SELECT pg_catalog.set_config('application_name', %s, false)", (user_application_name(snapshot),))


def release(conn: psycopg.Connection, snapshot: str) -> None:
    """End the keeper of ``snapshot`` (from any process): the snapshot, and a temporary slot, go with it.

    Returns at once: the keeper's sessions end, and a temporary slot is dropped, a moment later.
    """
    for pid, app in conn.execute(
        "SELECT pid, application_name FROM pg_catalog.pg_stat_activity WHERE starts_with(application_name, %s)",
        (KEEPER_APP + snapshot + " ",),
    ).fetchall():
        walsender = app.rsplit(" ", 1)[1]
        for backend in (int(walsender), pid):
            conn.execute("SELECT pg_catalog.pg_terminate_backend(%s)", (backend,))


def _users(conn: Any, snapshot: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE application_name = %s", (USER_APP + snapshot,)
    ).fetchone()
    return int(row[0])


def _alive(conn: Any, pid: int) -> bool:
    return conn.execute("SELECT 1 FROM pg_catalog.pg_stat_activity WHERE pid = %s", (pid,)).fetchone() is not None


def main() -> int:
    """The keeper process: create the slot, answer on stdout, hold until released or unused for long."""
    from airflow_pg_replication.source.catalog import one_value
    from airflow_pg_replication.source.database import SourceDatabase
    from airflow_pg_replication.source.pgoutput import format_lsn

    line = sys.stdin.readline()
    if not line:  # dismissed before it was given a slot
        return 0
    request = json.loads(line)
    params = dict(request["params"])
    tag = f"pgrepl_keeper_walsender {uuid.uuid4().hex[:12]}"  # finds our walsender among other keepers
    source = SourceDatabase({**params, "application_name": tag})
    try:
        with (
            source.create_slot_with_snapshot(request["slot"], temporary=request["temporary"]) as created,
            SourceDatabase(params).connect() as watch,
        ):
            walsender = one_value(
                watch, "SELECT pid FROM pg_catalog.pg_stat_activity WHERE application_name = %s", (tag,)
            )
            # named so that release() finds both of the keeper's sessions from any process
            watch.execute(
                "SELECT pg_catalog.set_config('application_name', %s, false)",
                (f"{KEEPER_APP}{created.snapshot_name} {walsender}",),
            )
            sys.stdout.write(
                json.dumps({"lsn": format_lsn(created.consistent_lsn), "snapshot": created.snapshot_name}) + "\n"
            )
            sys.stdout.flush()
            last_used = time.monotonic()
            while True:
                time.sleep(1.0)
                if not _alive(watch, walsender):  # our walsender was ended (by a slot drop, say)
                    return 0
                if _users(watch, created.snapshot_name):
                    last_used = time.monotonic()
                elif time.monotonic() - last_used > float(request["hold_seconds"]):
                    return 0
    except Exception as exc:  # the answer the task is waiting for; then exit
        try:
            sys.stdout.write(json.dumps({"error": str(exc)}) + "\n")
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""PostgreSQL advisory locks that order our work across workers: one capture per slot group, a few snapshots at once.

Every worker of a deployment reaches the same source database, so a session-level advisory lock
there serializes tasks that run on different machines. A lock lives as long as the psycopg
session that took it (a crashed worker's lock goes with its connection).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from airflow_pg_replication.errors import TransientError

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

#: The lock class of all our advisory locks ('pgre'): the first key of the two-key form.
LOCK_CLASS = 0x70677265
_POLL_SECONDS = 0.2


def _try(conn: psycopg.Connection, name: str) -> bool:
    row = conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (LOCK_CLASS, name)).fetchone()
    return bool(row and row[0])


def _unlock(conn: psycopg.Connection, name: str) -> None:
    if not conn.closed:
        conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (LOCK_CLASS, name))


@contextlib.contextmanager
def advisory_lock(conn: psycopg.Connection, name: str, *, what: str, wait_seconds: float) -> Iterator[float]:
    """Hold the lock ``name`` in ``conn``'s session; yields how long it waited.

    Waits (polling, logging once) up to ``wait_seconds``, then raises :class:`TransientError`.
    """
    started = time.monotonic()
    logged = False
    while not _try(conn, name):
        waited = time.monotonic() - started
        if waited > wait_seconds:
            raise TransientError(
                f"gave up after {waited:.0f} s waiting for {what} (advisory lock {name!r}); "
                "the task's retry tries again"
            )
        if not logged and waited > 1.0:
            log.info("waiting for %s (advisory lock %r held by another task)", what, name)
            logged = True
        time.sleep(_POLL_SECONDS)
    try:
        yield time.monotonic() - started
    finally:
        _unlock(conn, name)


@contextlib.contextmanager
def one_of(conn: psycopg.Connection, name: str, count: int, *, what: str, wait_seconds: float) -> Iterator[int]:
    """Hold one of ``count`` permits named ``name`` (a semaphore across workers); yields its number.

    So at most ``count`` tasks do the guarded work at once (e.g. snapshots, each holding a
    temporary replication slot). Waits up to ``wait_seconds``, then raises :class:`TransientError`.
    """
    started = time.monotonic()
    logged = False
    while True:
        for number in range(count):
            if _try(conn, f"{name}#{number}"):
                try:
                    yield number
                finally:
                    _unlock(conn, f"{name}#{number}")
                return
        waited = time.monotonic() - started
        if waited > wait_seconds:
            raise TransientError(
                f"gave up after {waited:.0f} s waiting for {what}: {count} already run at once; "
                "the task's retry tries again"
            )
        if not logged and waited > 1.0:
            log.info("waiting for %s: %d already run at once", what, count)
            logged = True
        time.sleep(_POLL_SECONDS * 5)

"""The DuckDB warehouse file's lock: readers share it, a writer takes it whole, nobody starves.

DuckDB lets one process write a file, or any number read it, never both: a second process's
``duckdb.connect`` fails at once with ``Could not set lock on file … Conflicting lock``. So the
package and its readers meet first on an advisory lock of their own (Linux ``flock``), and only
then open the file, which DuckDB then never refuses:

- ``<file>.lock``: a reader holds it shared, a writer exclusive, while their DuckDB connection
  is open.
- ``<file>.turnstile.lock``: the queue. Whoever wants the file (reader or writer) takes it
  exclusive, waits there for ``<file>.lock``, and lets it go once in. A waiting writer therefore
  holds back the readers that come after it (readers that loop cannot starve a writer), and a
  waiting reader holds back the next writer (a task that writes batch after batch cannot starve
  a reader).

Within one process the lock is counted, not taken twice: ``flock`` belongs to an open file
description, so a second ``open()`` + ``flock`` in the same process would wait on the first, on
itself. A thread that holds the lock and asks again shares what it holds (only asking to write
while holding it for reading is refused, at once, with the fix); another thread of the process
shares a hold for reading and waits, in the process, for a hold for writing to end.

A process that opens the file with plain ``duckdb.connect`` takes none of this; :func:`connect`
waits for it with backoff for a bounded time (``PG_REPLICATION_DUCKDB_BUSY_TIMEOUT``, default
:data:`BUSY_TIMEOUT_SECONDS`), saying who holds the file, then raises :class:`.TransientError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from airflow_pg_replication.errors import NeedsAttentionError, TransientError

if TYPE_CHECKING:
    import duckdb

log = logging.getLogger(__name__)

SHARED, EXCLUSIVE = "shared", "exclusive"
WRITER_TIMEOUT_SECONDS = 3600.0  # a task waits this long for other writers (snapshots hold the file for the whole copy)
READER_TIMEOUT_SECONDS = 600.0  # read_warehouse waits this long for the writers
BUSY_TIMEOUT_SECONDS = 120.0  # a task waits this long for a process that holds the file without our lock
BUSY_TIMEOUT_ENV = "PG_REPLICATION_DUCKDB_BUSY_TIMEOUT"
_LOG_EVERY_SECONDS = 30.0
_QUIET_WAIT_SECONDS = 2.0  # waits shorter than this (a reader's query, a CDC batch) are not logged
_MAX_POLL_SECONDS = 0.05  # flock is polled (a blocking flock cannot time out); hand-overs take at most this


def lock_path(path: str) -> str:
    """The lock file readers share and a writer takes whole: ``<file>.lock``."""
    return path + ".lock"


def turnstile_path(path: str) -> str:
    """The lock file a reader or writer waits at for its turn: ``<file>.turnstile.lock``."""
    return path + ".turnstile.lock"


def busy_timeout() -> float:
    """Seconds a task waits for a process holding the DuckDB file without the package's lock."""
    text = os.environ.get(BUSY_TIMEOUT_ENV)
    if not text:
        return BUSY_TIMEOUT_SECONDS
    try:
        return max(0.0, float(text))
    except ValueError:
        raise NeedsAttentionError(
            f"{BUSY_TIMEOUT_ENV}={text!r} is not a number of seconds; set it to e.g. 120"
        ) from None


# -- this process's holds ----------------------------------------------------------------------


@dataclass
class _Hold:
    """The lock this process holds on one file: one descriptor, the mode, how many users share it."""

    fd: int
    mode: str
    users: int
    threads: dict[int, int] = field(default_factory=dict)  # thread -> its users (its re-entry shares it)


_holds: dict[str, _Hold] = {}
_holds_guard = threading.Lock()
_released = threading.Condition(_holds_guard)  # a hold ended: threads waiting in the process look again
_taking: dict[str, threading.Lock] = {}  # one thread of the process takes a file's lock at a time


def _forget_holds_in_child() -> None:
    """After fork: the child shares the parent's lock files; it forgets them (closing, never unlocking)."""
    global _holds_guard, _released
    for hold in _holds.values():
        with contextlib.suppress(OSError):
            os.close(hold.fd)
    _holds.clear()
    _taking.clear()
    _holds_guard = threading.Lock()
    _released = threading.Condition(_holds_guard)


os.register_at_fork(after_in_child=_forget_holds_in_child)


def held_here(path: str) -> str | None:
    """The mode in which this process holds the DuckDB file's lock (None: it does not)."""
    with _holds_guard:
        hold = _holds.get(_key(path))
        return hold.mode if hold else None


def _key(path: str) -> str:
    """The DuckDB file's resolved path: one hold per file, however it is spelled."""
    return os.path.realpath(os.path.abspath(path))


@contextlib.contextmanager
def locked(
    path: str, mode: str, *, timeout: float, what: str, advice: str = "the task's retry goes on"
) -> Iterator[None]:
    """Hold the DuckDB file's lock (``SHARED`` to read, ``EXCLUSIVE`` to write) for the block.

    Waits its turn at the turnstile, for at most ``timeout`` seconds, logging who holds the file;
    then raises :class:`.TransientError` (its message ends with ``advice``). Released on every way
    out of the block.
    """
    key = _acquire(path, mode, timeout=timeout, what=what, advice=advice)
    taker = threading.get_ident()  # the block may end on another thread (a destination opened on one)
    try:
        yield
    finally:
        _release(key, taker)


def _acquire(path: str, mode: str, *, timeout: float, what: str, advice: str) -> str:
    if mode not in (SHARED, EXCLUSIVE):
        raise ValueError(f"mode must be {SHARED!r} or {EXCLUSIVE!r}, not {mode!r}")
    key = _key(path)
    deadline = time.monotonic() + timeout
    me = threading.get_ident()
    with _holds_guard:
        hold = _holds.get(key)
        if hold is not None and me in hold.threads:  # re-entry: what this thread holds covers it
            if mode == EXCLUSIVE and hold.mode == SHARED:
                raise NeedsAttentionError(
                    f"this process holds the DuckDB file {path} open for reading and now asks to write it (to "
                    f"{what}): leave the read_warehouse block (or close the reading destination) first"
                )
            hold.users += 1
            hold.threads[me] += 1
            return key
        taking = _taking.setdefault(key, threading.Lock())
    # another thread of this process may be taking it: wait for that in-process, never on flock
    if not taking.acquire(timeout=max(0.0, deadline - time.monotonic())):
        raise TransientError(
            f"gave up after {timeout:g} s waiting for another thread of this process to lock "
            f"the DuckDB file {path} (to {what}); {advice}"
        )
    try:
        with _holds_guard:
            while (hold := _holds.get(key)) is not None:
                if mode == SHARED and hold.mode == SHARED:  # readers of one process share the file
                    hold.users += 1
                    hold.threads[me] = hold.threads.get(me, 0) + 1
                    return key
                remaining = deadline - time.monotonic()  # another thread writes it: wait for it to finish
                if remaining <= 0:
                    raise TransientError(
                        f"gave up after {timeout:g} s waiting for another thread of this process that holds the "
                        f"DuckDB file {path} (to {what}); {advice}"
                    )
                _released.wait(min(remaining, 1.0))
        fd = _take(key, mode, deadline=deadline, timeout=timeout, path=path, what=what, advice=advice)
        with _holds_guard:
            _holds[key] = _Hold(fd, mode, 1, {me: 1})
        return key
    finally:
        taking.release()


def _release(key: str, taker: int) -> None:
    with _holds_guard:
        hold = _holds[key]
        hold.users -= 1
        if taker in hold.threads:
            hold.threads[taker] -= 1
            if not hold.threads[taker]:
                del hold.threads[taker]
        if hold.users:
            return
        del _holds[key]
        _released.notify_all()
    try:
        fcntl.flock(hold.fd, fcntl.LOCK_UN)
    finally:
        os.close(hold.fd)


def someone_waits(path: str) -> bool:
    """True when a reader or writer waits for the DuckDB file: it holds the turnstile while it waits."""
    fd = _open_lock_file(turnstile_path(_key(path)))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _open_lock_file(path: str) -> int:
    """The lock file, created if need be; read-only when this user may not write it (flock works either way)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except PermissionError:
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise NeedsAttentionError(
                f"cannot open the lock file {path} ({exc.strerror}): let this user read it, or "
                "create it once as the user that runs the tasks (it must be readable by both)"
            ) from exc


def _take(key: str, mode: str, *, deadline: float, timeout: float, path: str, what: str, advice: str) -> int:
    """Through the turnstile to the lock: the lock file's descriptor, holding ``mode``."""
    fd = _open_lock_file(lock_path(key))
    try:
        turnstile = _open_lock_file(turnstile_path(key))
        try:
            _poll(
                turnstile,
                fcntl.LOCK_EX,
                deadline=deadline,
                timeout=timeout,
                path=path,
                what=what,
                advice=advice,
                waiting_for="its turn (another reader or writer waits ahead of it)",
            )
            try:
                _poll(
                    fd,
                    fcntl.LOCK_SH if mode == SHARED else fcntl.LOCK_EX,
                    deadline=deadline,
                    timeout=timeout,
                    path=path,
                    what=what,
                    advice=advice,
                    waiting_for="the writer to finish" if mode == SHARED else "the readers or writer to finish",
                )
            finally:
                fcntl.flock(turnstile, fcntl.LOCK_UN)
        finally:
            os.close(turnstile)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _poll(
    fd: int, op: int, *, deadline: float, timeout: float, path: str, what: str, advice: str, waiting_for: str
) -> None:
    """``flock(fd, op)``, retried until ``deadline``; past a short wait, logs who holds it."""
    started = time.monotonic()
    delay, next_log, logged = 0.001, started + _QUIET_WAIT_SECONDS, False
    while True:
        try:
            fcntl.flock(fd, op | fcntl.LOCK_NB)
            if logged:
                log.info("got the DuckDB file %s after %.1f s (to %s)", path, time.monotonic() - started, what)
            return
        except BlockingIOError:
            pass
        now = time.monotonic()
        if now >= deadline:
            raise TransientError(
                f"gave up after {timeout:g} s waiting for {waiting_for} (to {what}): the DuckDB file {path} is held "
                f"by {describe_holders(fd)}. A snapshot holds the file for its whole copy, a CDC batch for about "
                f"a second, a reader for its query: {advice}"
            )
        if now >= next_log:
            log.info(
                "waiting for %s (to %s): the DuckDB file %s is held by %s; up to %.0f s more",
                waiting_for,
                what,
                path,
                describe_holders(fd),
                deadline - now,
            )
            next_log, logged = now + _LOG_EVERY_SECONDS, True
        time.sleep(min(delay, deadline - now))
        delay = min(delay * 2, _MAX_POLL_SECONDS)


def describe_holders(fd: int) -> str:
    """Who holds locks on the file open as ``fd``, from /proc/locks: ``PID 12 (cmdline) shared, …``."""
    st = os.fstat(fd)
    me = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    try:
        with open("/proc/locks") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return "another process (/proc/locks unreadable)"
    found = []
    for pid, kind in _holders_in(lines, me):
        found.append(f"PID {pid} ({_command_of(pid)}) {'exclusive' if kind == 'WRITE' else 'shared'}")
    return ", ".join(found) or "nobody any more"


def _holders_in(lines: list[str], inode: tuple[int, int, int]) -> list[tuple[int, str]]:
    """(pid, READ|WRITE) of the granted locks on ``inode`` (major, minor, inode) in /proc/locks lines."""
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) < 6 or parts[1] == "->":  # "->": a waiter, not a holder
            continue
        try:
            major, minor, ino = parts[5].split(":")
            if (int(major, 16), int(minor, 16), int(ino)) == inode:
                out.append((int(parts[4]), parts[3]))
        except ValueError:
            continue
    return out


def _command_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            text = " ".join(fh.read().replace(b"\0", b" ").decode(errors="replace").split())
    except OSError:
        return "unknown command"
    return text if len(text) <= 120 else text[:117] + "..."


# -- opening the file --------------------------------------------------------------------------

_DUCKDB_HOLDER = re.compile(r"Conflicting lock is held in (?P<who>.+?)\.(?: However|$| See)", re.S)


def connect(
    path: str,
    *,
    read_only: bool,
    what: str,
    wait: float | None = None,
    advice: str = f"The task's retry goes on; {BUSY_TIMEOUT_ENV} sets how long a task waits",
) -> duckdb.DuckDBPyConnection:
    """``duckdb.connect(path, read_only=…)``, waiting for a process that holds the file without our lock.

    Call it holding :func:`locked`: then only such a process (a plain ``duckdb.connect``, the
    DuckDB CLI) can hold the file. It is waited for with backoff for ``wait`` seconds (default
    :func:`busy_timeout`), and named in the log; then :class:`.TransientError`.
    """
    import duckdb

    wait = busy_timeout() if wait is None else wait
    started = time.monotonic()
    delay, next_log = 0.05, 0.0
    while True:
        try:
            return duckdb.connect(path, read_only=read_only)
        except duckdb.IOException as exc:
            if "Could not set lock" not in str(exc):
                raise
            match = _DUCKDB_HOLDER.search(str(exc))
            holder = match["who"] if match else "another process"
            waited = time.monotonic() - started
            if waited >= wait:
                raise TransientError(
                    f"the DuckDB file {path} is held by {holder}, which opened it without the package's lock "
                    f"(a plain duckdb.connect, the DuckDB CLI); waited {waited:.0f} s (to {what}). Close that "
                    "connection, and read the warehouse with airflow_pg_replication.read_warehouse(path) or "
                    f"query_warehouse(sql, path=path), which wait for the tasks and let them in. {advice}"
                ) from exc
            if waited >= next_log:
                log.warning(
                    "the DuckDB file %s is held by %s, which does not take the package's lock (a plain "
                    "duckdb.connect?); waiting up to %.0f s more for it to let go (to %s)",
                    path,
                    holder,
                    wait - waited,
                    what,
                )
                next_log = waited + _LOG_EVERY_SECONDS
            time.sleep(max(0.0, min(delay, wait - waited)))
            delay = min(delay * 2, 2.0)

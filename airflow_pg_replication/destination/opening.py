"""DestinationOpening: a TableDestination opened on a thread while the caller reads from PostgreSQL."""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from airflow_pg_replication.phase_timing import phase

if TYPE_CHECKING:
    from airflow_pg_replication.destination.base import TableDestination

log = logging.getLogger(__name__)

T = TypeVar("T")


class DestinationOpening(Generic[T]):
    """Enters ``dest``, runs ``prepare(dest)`` then ``then(dest)`` on a thread; :meth:`result` waits for all.

    A CDC run reads its batch from PostgreSQL, which decodes the whole peek before it sends the
    first row; meanwhile this thread opens the destination (for DuckDB: replays the last batch's
    WAL), reads the table's state (``prepare``) and checkpoints the WAL (``then``). The caller
    gets the state from :meth:`prepared` as soon as it is read, folds the batch, and waits in
    :meth:`result` only when it needs the destination itself. The read stays on the caller's
    thread, so the batch's buffers are allocated where they are used and freed.

    Only a DuckDB destination opens on a thread. Others open on the caller's thread, in
    ``__enter__``: dlt's pipeline and clients keep per-thread context.

    With ``let_go``, the thread then lets go of the DuckDB file (:meth:`.TableDestination.release_file`)
    when ``let_go(dest)`` says so, so readers and other writers may use it while the caller
    folds; :meth:`result` takes it again on the caller's thread and calls ``recheck(dest, as_read)``
    with a copy of what ``prepare`` returned, which raises when that no longer holds (say another
    task wrote the table's state meanwhile).

    Use as a context manager: leaving it waits for the thread and closes the destination, and
    raises what the thread raised if nothing else is raised (say ``then`` failed in a run that
    had nothing to apply).
    """

    def __init__(
        self,
        dest: TableDestination,
        prepare: Callable[[TableDestination], T],
        *,
        then: Callable[[TableDestination], Any] | None = None,
        let_go: Callable[[TableDestination], bool] | None = None,
        recheck: Callable[[TableDestination, T], Any] | None = None,
    ) -> None:
        self._dest = dest
        self._prepare = prepare
        self._then = then
        self._let_go = let_go
        self._recheck = recheck
        self._let_go_of_file = False  # the thread let go of the file; result() takes it again
        self._as_read: Any = None  # a copy of what prepare returned, for recheck
        self._background = dest.opens_in_background
        self._entered = False
        self._value: Any = None
        self._error: BaseException | None = None
        self._prepared = threading.Event()
        self._thread = threading.Thread(target=self._open, name="pg_replication_destination_open", daemon=True)

    def __enter__(self) -> DestinationOpening[T]:
        if self._background:
            self._thread.start()
            return self
        self._open()
        if self._error is not None:  # at once: no read has started yet
            if self._entered:
                self._dest.__exit__(type(self._error), self._error, self._error.__traceback__)
            raise self._error
        return self

    def _open(self) -> None:
        try:
            with phase("destination.open"):
                self._dest.__enter__()
            self._entered = True
            with phase("destination.read_state"):
                self._value = self._prepare(self._dest)
            self._as_read = copy.copy(self._value)
            self._prepared.set()
            if self._then is not None:
                with phase("destination.checkpoint"):
                    self._then(self._dest)
            if self._let_go is not None and self._background and self._let_go(self._dest):
                log.debug("letting go of %s while the caller folds: someone waits for it", self._dest.describe())
                self._dest.release_file()
                self._let_go_of_file = True
        except BaseException as exc:  # raised by prepared() or result(), on the caller's thread
            self._error = exc
        finally:
            self._prepared.set()

    def prepared(self) -> T:
        """What ``prepare`` returned, without waiting for ``then``; raises what came before it.

        The destination may still be busy with ``then``: use it only through :meth:`result`.
        """
        with phase("destination.wait_state"):
            self._prepared.wait()
        if self._error is not None:
            raise self._error
        return self._value

    def result(self) -> tuple[TableDestination, T]:
        """The open destination, ``then`` done, and what ``prepare`` returned; raises what any raised.

        When the thread let go of the file, takes it again here (waiting for whoever uses it)
        and runs ``recheck``.
        """
        with phase("destination.wait_open"):
            self._join()
        if self._error is not None:
            raise self._error
        if self._let_go_of_file:
            self._let_go_of_file = False
            self._dest.reopen_file()
            if self._recheck is not None:
                self._recheck(self._dest, self._as_read)
        return self._dest, self._value

    def _join(self) -> None:
        if self._thread.is_alive():
            self._thread.join()

    def __exit__(self, *exc: Any) -> None:
        self._join()
        if self._entered:
            self._dest.__exit__(*exc)
        if exc[0] is None and self._error is not None:  # ``then`` failed after a caller needed no more
            raise self._error

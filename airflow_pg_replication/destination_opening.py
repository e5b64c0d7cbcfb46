"""DestinationOpening: a TableDestination opened on a thread while the caller reads from PostgreSQL."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, Generic, TypeVar

if TYPE_CHECKING:
    from airflow_pg_replication.loading import TableDestination

T = TypeVar("T")


class DestinationOpening(Generic[T]):
    """Enters ``dest`` and runs ``prepare(dest)`` on a thread; :meth:`result` waits for both.

    A CDC run reads its batch from PostgreSQL, which decodes the whole peek before it sends the
    first row; meanwhile this thread opens the destination (for DuckDB: replays and checkpoints
    the last batch's WAL) and reads the table's state. The read stays on the caller's thread, so
    the batch's buffers are allocated where they are used and freed.

    Only a DuckDB destination opens on a thread. Others open on the caller's thread, in
    ``__enter__``: dlt's pipeline and clients keep per-thread context.

    Use as a context manager: leaving it waits for the thread and closes the destination.
    """

    def __init__(self, dest: TableDestination, prepare: Callable[[TableDestination], T]) -> None:
        self._dest = dest
        self._prepare = prepare
        self._background = dest.is_duckdb
        self._entered = False
        self._value: Any = None
        self._error: BaseException | None = None
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
            self._dest.__enter__()
            self._entered = True
            self._value = self._prepare(self._dest)
        except BaseException as exc:  # raised by result(), on the caller's thread
            self._error = exc

    def result(self) -> tuple[TableDestination, T]:
        """The open destination and what ``prepare`` returned; raises what either raised."""
        self._join()
        if self._error is not None:
            raise self._error
        return self._dest, self._value

    def _join(self) -> None:
        if self._thread.is_alive():
            self._thread.join()

    def __exit__(self, *exc: Any) -> None:
        self._join()
        if self._entered:
            self._dest.__exit__(*exc)

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

    Use as a context manager: leaving it waits for the thread and closes the destination.
    """

    def __init__(self, dest: TableDestination, prepare: Callable[[TableDestination], T]) -> None:
        self._dest = dest
        self._prepare = prepare
        self._entered = False
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._open, name="pg_replication_destination_open", daemon=True)

    def __enter__(self) -> DestinationOpening[T]:
        self._thread.start()
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
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._dest, self._value

    def __exit__(self, *exc: Any) -> None:
        self._thread.join()
        if self._entered:
            self._dest.__exit__(*exc)

"""Named phase timings, taken by the code itself: ``with phase("cdc.read"):``, recorded only while a benchmark asks.

The package marks the steps worth measuring with :func:`phase` (or :func:`timed_iter` for the
``next()`` calls of an iterator). Nothing is recorded unless :func:`recording` is active, and then
only its wall time per name: when it is not, :func:`phase` is one module-level ``None`` check
returning a shared no-op context manager. A recorder is process-wide and thread-safe: phases on
other threads (the destination opening, the snapshot's read-ahead) are recorded too, each thread
with its own nesting.

    with recording() as rec:
        run_something()
    rec.totals()   # {"cdc.read": 1.23, ...}: seconds per name
    rec.counts()   # {"cdc.read": 6, ...}: how many times each ran
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

_recorder: PhaseRecorder | None = None  # the active recorder; None: phases cost a check and nothing else
_activate = threading.Lock()


@dataclass
class PhaseRecord:
    """One phase as it nested: its path (enclosing phases of the same thread, then itself), time, count."""

    path: tuple[str, ...]
    seconds: float = 0.0
    count: int = 0
    thread: str = ""  # the thread's name when not the main thread

    @property
    def name(self) -> str:
        return self.path[-1]


class PhaseRecorder:
    """Wall time per phase, summed by name and by nesting path; safe to feed from many threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[tuple[str, tuple[str, ...]], PhaseRecord] = {}
        self._stacks: dict[int, list[str]] = {}  # thread id -> names of the phases open on it

    def _stack(self) -> list[str]:
        ident = threading.get_ident()
        stack = self._stacks.get(ident)
        if stack is None:
            stack = self._stacks[ident] = []
        return stack

    def _add(self, path: tuple[str, ...], seconds: float) -> None:
        thread = threading.current_thread()
        where = "" if thread is threading.main_thread() else thread.name
        with self._lock:
            rec = self._records.get((where, path))
            if rec is None:
                rec = self._records[(where, path)] = PhaseRecord(path, thread=where)
            rec.seconds += seconds
            rec.count += 1

    def records(self) -> list[PhaseRecord]:
        """Every (thread, path) recorded, in the order each first ended."""
        with self._lock:
            return [PhaseRecord(r.path, r.seconds, r.count, r.thread) for r in self._records.values()]

    def totals(self) -> dict[str, float]:
        """Seconds per phase name, every thread and nesting summed (a phase inside itself counted once)."""
        out: dict[str, float] = {}
        for r in self.records():
            if r.name not in r.path[:-1]:
                out[r.name] = out.get(r.name, 0.0) + r.seconds
        return out

    def counts(self) -> dict[str, int]:
        """How many times each phase name ran."""
        out: dict[str, int] = {}
        for r in self.records():
            out[r.name] = out.get(r.name, 0) + r.count
        return out

    def open_paths(self) -> list[tuple[str, ...]]:
        """The phases open right now, one path per thread that has any (for an RSS sampler)."""
        return [tuple(s) for s in list(self._stacks.values()) if s]


class _Off:
    """The context manager :func:`phase` returns when nothing records: does nothing."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_OFF = _Off()


class _Timed:
    __slots__ = ("_name", "_path", "_rec", "_stack", "_t0")

    def __init__(self, rec: PhaseRecorder, name: str) -> None:
        self._rec = rec
        self._name = name

    def __enter__(self) -> None:
        self._stack = self._rec._stack()
        self._stack.append(self._name)
        self._path = tuple(self._stack)
        self._t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        seconds = time.perf_counter() - self._t0
        self._stack.pop()
        self._rec._add(self._path, seconds)


def phase(name: str) -> Any:
    """``with phase(name):`` records the block's wall time under ``name`` while a recorder is active."""
    rec = _recorder
    if rec is None:
        return _OFF
    return _Timed(rec, name)


def timed_iter(name: str, items: Iterable[T]) -> Iterator[T]:
    """``items``, with each ``next()`` recorded as phase ``name`` (the caller's work between them is not)."""
    if _recorder is None:
        return iter(items)
    return _timed_next(name, iter(items))


def _timed_next(name: str, it: Iterator[T]) -> Iterator[T]:
    while True:
        with phase(name):
            try:
                item = next(it)
            except StopIteration:
                return
        yield item


@contextlib.contextmanager
def recording() -> Iterator[PhaseRecorder]:
    """Record every phase of this process while the block runs; yields the recorder to read.

    One at a time: a second, nested ``recording()`` raises.
    """
    global _recorder
    rec = PhaseRecorder()
    with _activate:
        if _recorder is not None:
            raise RuntimeError("phase timings are already being recorded")
        _recorder = rec
    try:
        yield rec
    finally:
        _recorder = None

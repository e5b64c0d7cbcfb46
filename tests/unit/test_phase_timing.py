"""phase_timing: phases cost nothing unless a recorder is active; then wall time per name, nested and threaded."""

from __future__ import annotations

import threading
import time

import pytest

from airflow_pg_replication import phase_timing
from airflow_pg_replication.phase_timing import phase, recording, timed_iter


def test_off_by_default_records_nothing_and_hands_back_the_iterable() -> None:
    assert phase_timing._recorder is None
    with phase("a") as entered:
        assert entered is None
    assert phase("a") is phase("b")  # one shared no-op: nothing allocated per call
    items = [1, 2, 3]
    assert list(timed_iter("read", items)) == items
    with recording() as rec:
        pass
    assert rec.totals() == {} and rec.counts() == {}


def test_records_wall_time_and_count_per_name_while_on() -> None:
    with recording() as rec:
        for _ in range(3):
            with phase("sleep"):
                time.sleep(0.01)
        with phase("other"):
            pass
    with phase("sleep"):  # after the block: not recorded
        time.sleep(0.01)
    assert rec.counts() == {"sleep": 3, "other": 1}
    assert 0.03 <= rec.totals()["sleep"] < 1.0
    assert phase_timing._recorder is None


def test_nested_phases_keep_their_path_and_their_own_time() -> None:
    with recording() as rec, phase("outer"):
        time.sleep(0.01)
        with phase("inner"):
            time.sleep(0.02)
        with phase("outer"):  # the same name inside itself is counted once in the totals
            pass
    paths = {r.path: r for r in rec.records()}
    assert set(paths) == {("outer",), ("outer", "inner"), ("outer", "outer")}
    totals = rec.totals()
    assert totals["inner"] >= 0.02
    assert totals["outer"] >= 0.03 and totals["outer"] == paths[("outer",)].seconds
    assert rec.counts() == {"outer": 2, "inner": 1}


def test_phases_on_other_threads_are_recorded_with_the_thread_name() -> None:
    seen_open: list = []

    def work(n: int) -> None:
        with phase("thread work"), phase("step"):
            time.sleep(0.01 * n)

    with recording() as rec:
        threads = [threading.Thread(target=work, args=(n,), name=f"worker{n}") for n in (1, 2, 3)]
        with phase("main"):
            for t in threads:
                t.start()
            time.sleep(0.005)
            seen_open = rec.open_paths()
            for t in threads:
                t.join()
    assert rec.counts() == {"main": 1, "thread work": 3, "step": 3}
    assert rec.totals()["step"] >= 0.06
    by_thread = {(r.thread, r.path) for r in rec.records()}
    assert ("", ("main",)) in by_thread
    assert {("worker2", ("thread work",)), ("worker2", ("thread work", "step"))} <= by_thread
    assert ("main",) in seen_open  # nesting is per thread: a worker's phases do not sit under "main"
    assert all(p[0] in ("main", "thread work") for p in seen_open)


def test_timed_iter_times_each_next_not_the_consumer() -> None:
    def slow_items():
        for i in range(3):
            time.sleep(0.01)
            yield i

    with recording() as rec:
        out = []
        for item in timed_iter("read", slow_items()):
            time.sleep(0.02)  # the consumer's work between next() calls
            out.append(item)
    assert out == [0, 1, 2]
    assert rec.counts() == {"read": 4}  # three items and the end
    assert 0.03 <= rec.totals()["read"] < 0.06


def test_one_recording_at_a_time_and_off_again_after_an_error() -> None:
    with recording(), pytest.raises(RuntimeError, match="already"), recording():
        pass
    assert phase_timing._recorder is None
    with pytest.raises(ValueError), recording():
        raise ValueError("boom")
    assert phase_timing._recorder is None

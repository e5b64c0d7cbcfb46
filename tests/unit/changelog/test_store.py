"""ChangeLog, local and on S3 (moto + s3fs): write, read to a bound, duplicates once, delete, resync markers.

The tests that kill a writer or watch its system calls are local only: object storage writes one PUT.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pytest

from airflow_pg_replication.changelog import files as files_module
from airflow_pg_replication.changelog.files import FsspecFiles
from airflow_pg_replication.changelog.resync_markers import ResyncRequiredError
from airflow_pg_replication.changelog.segments import SegmentInfo
from airflow_pg_replication.changelog.store import ChangeLog
from airflow_pg_replication.errors import NeedsAttentionError
from airflow_pg_replication.testing.s3_server import ThrowawayS3Server
from tests.unit.changelog.transactions import commit_lsns_of, transactions, tx_lsn

T = "public.customers"
REPO = Path(__file__).resolve().parents[3]


def write(log: ChangeLog, first: int, count: int, table: str = T) -> SegmentInfo:
    return log.write_segment(table, **transactions(first, count).kwargs())


def read_all(log: ChangeLog, after_lsn: int | None, max_messages: int = 10**9) -> list[int]:
    """Commit LSNs of every transaction read, bound after bound, chaining ``after_lsn`` as an apply does."""
    seen: list[int] = []
    while True:
        got = log.read(T, after_lsn=after_lsn, max_messages=max_messages)
        seen += commit_lsns_of(got.commit_lsn, got.messages)
        if got.last_commit_lsn is not None:
            after_lsn = got.last_commit_lsn
        if not got.more:
            return seen


# -- round trip, listing ------------------------------------------------------------------------------


def test_written_segments_read_back_exactly(change_log: ChangeLog) -> None:
    a, b = transactions(0, 3), transactions(3, 4)
    info_a = change_log.write_segment(T, **a.kwargs())
    info_b = change_log.write_segment(T, **b.kwargs())
    assert (info_a.first_commit_lsn, info_a.last_commit_lsn) == (tx_lsn(0), tx_lsn(2))
    assert change_log.segments(T) == [info_a, info_b]
    assert [s.size for s in change_log.segments(T)] == [info_a.size, info_b.size]
    assert change_log.pending_bytes(T) == info_a.size + info_b.size > 0

    got = change_log.read(T, after_lsn=None, max_messages=10**6)
    assert got.messages.combine_chunks().equals(pa.concat_arrays([a.data, b.data]))
    assert got.commit_lsn.combine_chunks().equals(pa.concat_arrays([a.commit_lsn, b.commit_lsn]))
    assert got.segments == (info_a, info_b)
    assert (got.last_commit_lsn, got.last_end_lsn) == (tx_lsn(6), tx_lsn(6) + 48)
    assert not got.more and got.duplicates_dropped == 0


def test_segments_list_in_lsn_order_whatever_the_write_order(change_log: ChangeLog) -> None:
    for first in [20, 0, 5000, 7, 300]:  # LSNs from 2**32 to past 2**44: hex names must still sort
        write(change_log, first, 1)
    assert [s.first_commit_lsn for s in change_log.segments(T)] == [tx_lsn(n) for n in [0, 7, 20, 300, 5000]]
    assert read_all(change_log, None) == [tx_lsn(n) for n in [0, 7, 20, 300, 5000]]


def test_tables_empty_log_and_drop_table(change_log: ChangeLog) -> None:
    assert change_log.tables() == [] and change_log.segments(T) == [] and change_log.pending_bytes(T) == 0
    got = change_log.read(T, after_lsn=None, max_messages=10)
    assert got.is_empty and got.last_commit_lsn is None and not got.more
    write(change_log, 0, 1)
    write(change_log, 0, 2, table="sales.Events$2")
    assert change_log.tables() == [T, "sales.Events$2"]
    change_log.drop_table("sales.Events$2")
    assert change_log.tables() == [T]
    change_log.drop_table("sales.never_there")  # nothing to drop is fine


def test_table_names_must_be_schema_qualified_identifiers(change_log: ChangeLog) -> None:
    for bad in ["customers", "public.customers/../x", "../etc.passwd", "public.a.b", "public.a b"]:
        with pytest.raises(ValueError, match="schema-qualified"):
            change_log.segments(bad)


# -- reading to a bound ----------------------------------------------------------------------------------


def test_read_takes_whole_segments_until_the_bound(change_log: ChangeLog) -> None:
    for first in range(0, 25, 5):  # 5 segments of 5 transactions, 5 messages each: 25 a segment
        write(change_log, first, 5)
    got = change_log.read(T, after_lsn=None, max_messages=30)
    assert len(got.segments) == 2 and len(got.messages) == 50 and got.more  # whole segments: past 30, not cut
    assert got.last_commit_lsn == tx_lsn(9)

    got = change_log.read(T, after_lsn=got.last_commit_lsn, max_messages=1)  # at least one segment
    assert len(got.segments) == 1 and len(got.messages) == 25 and got.more
    assert commit_lsns_of(got.commit_lsn, got.messages) == [tx_lsn(n) for n in range(10, 15)]

    got = change_log.read(T, after_lsn=got.last_commit_lsn, max_messages=50)
    assert len(got.segments) == 2 and not got.more and got.last_commit_lsn == tx_lsn(24)
    with pytest.raises(ValueError, match="max_messages"):
        change_log.read(T, after_lsn=None, max_messages=0)


def test_after_lsn_skips_applied_segments_and_transactions(change_log: ChangeLog) -> None:
    write(change_log, 0, 4)
    write(change_log, 4, 4)
    assert read_all(change_log, after_lsn=tx_lsn(5)) == [tx_lsn(6), tx_lsn(7)]  # cut inside a segment
    got = change_log.read(T, after_lsn=tx_lsn(3), max_messages=10**6)  # first segment wholly applied
    assert [s.first_commit_lsn for s in got.segments] == [tx_lsn(4)] and got.duplicates_dropped == 0
    got = change_log.read(T, after_lsn=tx_lsn(2) + 1, max_messages=10**6)  # between two commits
    assert commit_lsns_of(got.commit_lsn, got.messages)[0] == tx_lsn(3)
    assert change_log.read(T, after_lsn=tx_lsn(7), max_messages=10).is_empty


# -- duplicates -------------------------------------------------------------------------------------------


def test_overlapping_segments_are_read_once_in_order(change_log: ChangeLog) -> None:
    """A capture that crashed before advancing its slot writes the same transactions again, in other bounds."""
    write(change_log, 0, 4)  # 0..3
    write(change_log, 2, 5)  # 2..6: rewritten after a crash, overlapping
    write(change_log, 1, 2)  # 1..2: inside both
    write(change_log, 0, 4)  # 0..3 again: the same name, rewritten whole
    write(change_log, 6, 3)  # 6..8
    want = [tx_lsn(n) for n in range(9)]
    assert read_all(change_log, None) == want
    for bound in [1, 8, 13, 30]:  # the same through any bound
        assert read_all(change_log, None, max_messages=bound) == want, bound
    got = change_log.read(T, after_lsn=None, max_messages=10**6)
    assert got.duplicates_dropped == (2 + 1) * 5  # 2..3 of the 2..6 segment, 6 of the 6..8 one
    assert [(s.first_commit_lsn, s.last_commit_lsn) for s in got.segments] == [
        (tx_lsn(0), tx_lsn(3)),
        (tx_lsn(2), tx_lsn(6)),
        (tx_lsn(6), tx_lsn(8)),
    ]  # the 1..2 segment held nothing new: never read


def test_duplicates_keep_each_transaction_whole(change_log: ChangeLog) -> None:
    write(change_log, 0, 3)
    write(change_log, 1, 3)
    got = change_log.read(T, after_lsn=None, max_messages=10**6)
    assert got.messages.combine_chunks().equals(transactions(0, 4).data)


# -- deletion -------------------------------------------------------------------------------------------


def test_delete_applied_removes_only_segments_wholly_applied(change_log: ChangeLog) -> None:
    write(change_log, 0, 3)
    write(change_log, 3, 3)
    write(change_log, 6, 3)
    assert change_log.delete_applied(T, tx_lsn(4)) == 1  # 3..5 still holds 5
    assert [s.first_commit_lsn for s in change_log.segments(T)] == [tx_lsn(3), tx_lsn(6)]
    assert change_log.delete_applied(T, tx_lsn(8)) == 2
    assert change_log.segments(T) == [] and change_log.tables() == []
    assert change_log.delete_applied(T, tx_lsn(8)) == 0


# -- resync markers -------------------------------------------------------------------------------------


def test_drop_for_resync_marks_first_then_deletes(change_log: ChangeLog) -> None:
    write(change_log, 0, 3)
    write(change_log, 3, 3)
    assert change_log.resync_marker(T) is None
    marker = change_log.drop_for_resync(T, "2.1 GB behind, over max_pending_bytes 1 GB")
    assert marker.dropped_upto_lsn == tx_lsn(5) and "behind" in marker.reason
    assert change_log.segments(T) == []
    assert change_log.resync_marker(T) == marker

    with pytest.raises(ResyncRequiredError, match="full_refresh") as e:
        change_log.read(T, after_lsn=tx_lsn(1), max_messages=10)
    assert e.value.marker == marker
    with pytest.raises(ResyncRequiredError):
        change_log.read(T, after_lsn=None, max_messages=10)
    assert change_log.read(T, after_lsn=tx_lsn(5), max_messages=10).is_empty  # had it all: no gap


def test_markers_only_grow_and_clearing_keeps_what_a_snapshot_does_not_cover(change_log: ChangeLog) -> None:
    first = change_log.mark_resync(T, "behind", tx_lsn(5))
    assert change_log.mark_resync(T, "behind again, less", tx_lsn(3)) == first  # covers as much already
    later = change_log.mark_resync(T, "behind still", tx_lsn(9))
    assert change_log.resync_marker(T) == later

    # The table's snapshot was taken at tx 7; the capture dropped up to tx 9 meanwhile: that marker stays.
    assert change_log.clear_resync(T, snapshot_lsn=tx_lsn(7)) == 0
    assert change_log.resync_marker(T) == later
    assert change_log.clear_resync(T, snapshot_lsn=tx_lsn(9) + 1) == 1
    assert change_log.resync_marker(T) is None

    change_log.mark_resync(T, "behind", tx_lsn(2))
    assert change_log.clear_resync(T, snapshot_lsn=None) == 1 and change_log.resync_marker(T) is None


def test_segments_written_after_a_marker_are_read_past_it(change_log: ChangeLog) -> None:
    write(change_log, 0, 3)
    change_log.drop_for_resync(T, "behind")
    write(change_log, 3, 3)  # the capture goes on writing the table's changes
    change_log.clear_resync(T, snapshot_lsn=tx_lsn(4))  # resynced at a point inside that segment
    assert read_all(change_log, after_lsn=tx_lsn(4) - 1) == [tx_lsn(4), tx_lsn(5)]


def test_describe_names_the_place_not_the_credentials(change_log: ChangeLog) -> None:
    text = change_log.describe()
    assert "'default'" in text
    if change_log.is_local:
        assert "local" in text and "uncompressed" in text
    else:
        assert text.startswith("change log of slot group 'default' at s3://changelog-") and "zstd" in text
        assert "testing" not in text  # the dummy key and secret


# -- local durability -----------------------------------------------------------------------------------


def test_local_write_is_temp_fsync_rename_fsync_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = ChangeLog(str(tmp_path), "g")
    write(log, 0, 1)  # directories exist now
    calls: list[tuple] = []
    real = {name: getattr(os, name) for name in ["open", "write", "fsync", "replace", "close"]}
    fds: dict[int, str] = {}

    def spy(name):
        def call(*args, **kwargs):
            result = real[name](*args, **kwargs)
            if name == "open":
                fds[result] = str(args[0])
                calls.append(("open", os.path.basename(args[0])))
            elif name in ("fsync", "close"):
                calls.append((name, os.path.basename(fds[args[0]]) or fds[args[0]]))
            elif name == "write":
                calls.append(("write", os.path.basename(fds[args[0]])))
            else:
                calls.append((name, os.path.basename(args[0]), os.path.basename(args[1])))
            return result

        return call

    for name in real:
        monkeypatch.setattr(files_module.os, name, spy(name))
    info = write(log, 1, 1)
    monkeypatch.undo()

    temp = calls[0][1]
    assert temp.startswith(f".{info.name}.") and temp.endswith(".tmp")
    writes = [c for c in calls if c[0] == "write"]
    assert writes and all(c == ("write", temp) for c in writes)
    table_dir = "public.customers"
    assert [c for c in calls if c[0] != "write"] == [
        ("open", temp),
        ("fsync", temp),  # the bytes are on disk …
        ("close", temp),
        ("replace", temp, info.name),  # … before the name appears, atomically …
        ("open", table_dir),
        ("fsync", table_dir),  # … and the rename itself is made durable
        ("close", table_dir),
    ]
    assert sorted(os.listdir(tmp_path / "g" / T)) == [segment.name for segment in log.segments(T)]


def test_a_writer_killed_mid_write_leaves_no_segment(tmp_path: Path) -> None:
    """The child blocks in the fsync of its temp file (all bytes written, not yet renamed); we SIGKILL it."""
    child = textwrap.dedent(
        f"""
        import os, stat, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from airflow_pg_replication.changelog.store import ChangeLog
        from tests.unit.changelog.transactions import transactions
        real_fsync = os.fsync
        def fsync(fd):
            if stat.S_ISREG(os.fstat(fd).st_mode):
                print("IN_FSYNC", flush=True)
                time.sleep(60)
            real_fsync(fd)
        os.fsync = fsync
        ChangeLog({str(tmp_path)!r}, "g").write_segment("{T}", **transactions(10, 2000).kwargs())
        print("WROTE", flush=True)
        """
    )
    log = ChangeLog(str(tmp_path), "g")
    write(log, 0, 3)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, cwd=REPO)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"IN_FSYNC"
    finally:
        proc.kill()
        proc.wait()

    table_dir = tmp_path / "g" / T
    temps = [p for p in table_dir.iterdir() if p.name.endswith(".tmp")]
    assert len(temps) == 1 and temps[0].stat().st_size > 100_000  # the half-done write is there …
    assert [s.first_commit_lsn for s in log.segments(T)] == [tx_lsn(0)]  # … and is no segment
    assert read_all(log, None) == [tx_lsn(n) for n in range(3)]

    write(log, 10, 2000)  # the capture, restarted, writes the same batch again
    assert read_all(log, None) == [tx_lsn(n) for n in [0, 1, 2, *range(10, 2010)]]
    assert log.delete_applied(T, tx_lsn(0) - 1) == 0 and temps[0].exists()  # a fresh temp file may be a live write
    old = time.time() - 2 * 3600
    os.utime(temps[0], (old, old))
    log.delete_applied(T, tx_lsn(0) - 1)
    assert not temps[0].exists()  # one left by a crash is cleaned up


def test_writers_killed_at_random_moments_leave_only_whole_segments(tmp_path: Path) -> None:
    child = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from airflow_pg_replication.changelog.store import ChangeLog
        from tests.unit.changelog.transactions import transactions
        log = ChangeLog({str(tmp_path)!r}, "g")
        for first in range(0, 10**6, 500):
            log.write_segment("{T}", **transactions(first, 500, rows=20).kwargs())
            print("WROTE", flush=True)
        """
    )
    for delay in [0.0, 0.05, 0.13, 0.21, 0.34]:
        proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, cwd=REPO)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"WROTE"
        time.sleep(delay)
        proc.kill()
        proc.wait()
    log = ChangeLog(str(tmp_path), "g")
    lsns = read_all(log, None)  # every listed segment decodes whole
    assert len(lsns) >= 500 and lsns == [tx_lsn(n) for n in range(len(lsns))]


# -- object storage -----------------------------------------------------------------------------------


def test_s3_write_is_one_object_and_nothing_else(s3_server: ThrowawayS3Server, s3_bucket: str) -> None:
    log = ChangeLog(f"s3://{s3_bucket}/changes", "g", filesystem=s3_server.filesystem())
    info = write(log, 0, 3)
    log.mark_resync(T, "behind", tx_lsn(9))
    listed = s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert sorted((o["Key"], o["Size"]) for o in listed) == [
        (f"changes/g/{T}/{info.name}", info.size),
        (f"changes/g/{T}/RESYNC-{tx_lsn(9):016X}.json", listed[-1]["Size"]),
    ]


def test_s3_sees_what_another_process_wrote_since(s3_server: ThrowawayS3Server, s3_bucket: str) -> None:
    """s3fs caches listings: each listing is made afresh, so a writer elsewhere is never missed."""
    reader = ChangeLog(f"s3://{s3_bucket}/changes", "g", filesystem=s3_server.filesystem())
    writer = ChangeLog(f"s3://{s3_bucket}/changes", "g", filesystem=s3_server.filesystem())
    assert reader.segments(T) == []
    write(writer, 0, 2)
    assert len(reader.segments(T)) == 1 and reader.tables() == [T]
    writer.delete_applied(T, tx_lsn(1))
    assert reader.segments(T) == []


def test_a_missing_bucket_is_reported_not_created(s3_server: ThrowawayS3Server) -> None:
    log = ChangeLog("s3://no-such-bucket-here/changes", "g", filesystem=s3_server.filesystem())
    with pytest.raises(NeedsAttentionError, match="create the bucket"):
        write(log, 0, 1)
    buckets = [b["Name"] for b in s3_server.client().list_buckets()["Buckets"]]
    assert "no-such-bucket-here" not in buckets
    assert log.segments(T) == [] and log.tables() == []


def test_an_fsspec_filesystem_with_directories_gets_them_made(tmp_path: Path) -> None:
    """sftp, hdfs, a mount through fsspec: directories must exist before a file is put in them."""
    from fsspec.implementations.local import LocalFileSystem

    files = FsspecFiles(str(tmp_path / "changes"), LocalFileSystem())
    path = files.join(files.root, "g", T, "x.arrow")
    files.write(path, b"segment bytes")
    assert (tmp_path / "changes" / "g" / T / "x.arrow").read_bytes() == b"segment bytes"
    assert files.list_files(files.join(files.root, "g", T)) == {"x.arrow": 13}
    assert files.list_dirs(files.join(files.root, "g")) == [T]


def test_what_read_gives_folds_as_the_slot_messages_do(change_log: ChangeLog) -> None:
    """The column-wise fold takes a read's messages as they are (chunked, deduplicated)."""
    from airflow_pg_replication.changes.columnar_fold import fold_columnar

    write(change_log, 0, 4)
    write(change_log, 2, 4)  # overlapping rewrite
    got = change_log.read(T, after_lsn=tx_lsn(0), max_messages=10**6)
    names = {("public", "customers")}
    from_log = fold_columnar(got.messages, ["id"], applied_lsn=tx_lsn(0), relation_names=names)
    from_slot = fold_columnar(transactions(1, 5).data, ["id"], applied_lsn=tx_lsn(0), relation_names=names)
    assert from_log is not None and from_slot is not None
    assert from_log.values["id"].equals(from_slot.values["id"]) and from_log.values["name"].equals(
        from_slot.values["name"]
    )
    assert (from_log.changes, from_log.last_commit_lsn, from_log.last_end_lsn) == (10, tx_lsn(5), got.last_end_lsn)


def test_listing_while_a_writer_renames_never_loses_segments(tmp_path: Path) -> None:
    """A temp file renamed between reading the directory and stat-ing it must not empty the listing."""
    child = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from airflow_pg_replication.changelog.store import ChangeLog
        from tests.unit.changelog.transactions import transactions
        log = ChangeLog({str(tmp_path)!r}, "g")
        for first in range(400):
            log.write_segment("{T}", **transactions(first, 1).kwargs())
        """
    )
    log = ChangeLog(str(tmp_path), "g")
    proc = subprocess.Popen([sys.executable, "-c", child], cwd=REPO)
    counts = []
    while proc.poll() is None:
        counts.append(len(log.segments(T)))
    assert proc.wait() == 0
    counts.append(len(log.segments(T)))
    assert counts == sorted(counts) and counts[-1] == 400


def test_a_writer_recreates_a_table_folder_another_process_dropped(tmp_path: Path) -> None:
    capture, other = ChangeLog(str(tmp_path), "g"), ChangeLog(str(tmp_path), "g")
    write(capture, 0, 1)
    other.drop_table(T)
    write(capture, 1, 1)  # its cached "folder exists" is stale: it makes the folder again
    assert [s.first_commit_lsn for s in other.segments(T)] == [tx_lsn(1)]

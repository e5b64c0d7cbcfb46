"""Segment files: the Arrow IPC layout, its metadata, names that sort by LSN, and what a writer may not hand in."""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from airflow_pg_replication.changelog.segments import (
    FORMAT_VERSION,
    SEGMENT_SCHEMA,
    SegmentFormatError,
    SegmentInfo,
    SegmentMetadata,
    decode_segment,
    encode_segment,
    segment_name,
)
from tests.unit.changelog.transactions import transactions, tx_lsn


@pytest.mark.parametrize("compression", [None, "lz4", "zstd"])
def test_round_trip_keeps_messages_lsns_and_metadata(compression: str | None) -> None:
    txs = transactions(3, 5, rows=4)
    body, meta = encode_segment(
        txs.commit_lsn, txs.data, last_end_lsn=txs.last_end_lsn, changes=txs.changes, compression=compression
    )
    assert meta == SegmentMetadata(tx_lsn(3), tx_lsn(7), tx_lsn(7) + 48, len(txs.data), 20, FORMAT_VERSION)

    rows, back = decode_segment(body)
    assert back == meta
    assert rows.schema.remove_metadata() == SEGMENT_SCHEMA
    assert rows.column("data").combine_chunks().equals(txs.data)
    assert rows.column("commit_lsn").combine_chunks().equals(txs.commit_lsn)


def test_metadata_is_plain_schema_metadata_any_arrow_reader_sees() -> None:
    txs = transactions(0, 2)
    body, _ = encode_segment(txs.commit_lsn, txs.data, last_end_lsn=txs.last_end_lsn, changes=txs.changes)
    meta = ipc.open_file(body).schema.metadata
    assert meta[b"first_commit_lsn"] == str(tx_lsn(0)).encode()
    assert meta[b"last_commit_lsn"] == str(tx_lsn(1)).encode()
    assert meta[b"last_end_lsn"] == str(tx_lsn(1) + 48).encode()
    assert meta[b"messages"] == str(len(txs.data)).encode()
    assert meta[b"changes"] == b"4"
    assert meta[b"format_version"] == str(FORMAT_VERSION).encode()


def test_chunked_and_large_binary_input_is_accepted() -> None:
    a, b = transactions(0, 2), transactions(2, 3)
    body, meta = encode_segment(
        pa.chunked_array([a.commit_lsn, b.commit_lsn]),
        pa.chunked_array([a.data, b.data]).cast(pa.large_binary()),
        last_end_lsn=b.last_end_lsn,
        changes=a.changes + b.changes,
    )
    rows, _ = decode_segment(body)
    assert meta.messages == len(a.data) + len(b.data)
    assert rows.column("data").combine_chunks().equals(pa.concat_arrays([a.data, b.data]))


def test_names_are_fixed_width_hex_and_sort_as_lsns() -> None:
    lsns = [0, 9, 0x10, 0xFF, 0xA000_0000, 0x1_0000_0000, 0x16_B374_D848, 2**63 - 1]
    rng = random.Random(7)
    pairs = [(a, b) for a in lsns for b in lsns if a <= b]
    rng.shuffle(pairs)
    names = [segment_name(a, b) for a, b in pairs]
    assert all(len(n) == len("0000000000000000-0000000000000000.arrow") for n in names)
    assert sorted(names) == [segment_name(a, b) for a, b in sorted(pairs)]
    assert segment_name(0x16_B374_D848, 0x17_0000_0000) == "00000016B374D848-0000001700000000.arrow"


def test_segment_info_parses_its_name_and_nothing_else() -> None:
    info = SegmentInfo.from_name("00000016B374D848-0000001700000000.arrow", size=123)
    assert info == SegmentInfo(0x16_B374_D848, 0x17_0000_0000)
    assert info is not None and info.size == 123 and info.name == "00000016B374D848-0000001700000000.arrow"
    for other in [
        ".00000016B374D848-0000001700000000.arrow.4242-abcd.tmp",  # a writer's temp file
        "RESYNC-0000001700000000.json",  # a resync marker
        "00000016b374d848-0000001700000000.arrow",  # lower-case hex: not ours
        "16B374D848-1700000000.arrow",  # not fixed width
        "00000016B374D848-0000001700000000.parquet",
    ]:
        assert SegmentInfo.from_name(other) is None, other


def test_segment_infos_sort_by_first_then_last_lsn() -> None:
    infos = [SegmentInfo(5, 9), SegmentInfo(1, 8), SegmentInfo(5, 6), SegmentInfo(1, 3)]
    assert sorted(infos) == [SegmentInfo(1, 3), SegmentInfo(1, 8), SegmentInfo(5, 6), SegmentInfo(5, 9)]


def _encode(commit_lsn: pa.Array, data: pa.Array, **kw):
    return encode_segment(commit_lsn, data, **{"last_end_lsn": 2**40, "changes": 1, **kw})


def test_writer_must_hand_in_whole_transactions_in_commit_order() -> None:
    txs = transactions(0, 3)
    n = len(txs.data)
    per_tx = n // 3
    with pytest.raises(ValueError, match="whole transactions"):  # cut inside a transaction
        _encode(txs.commit_lsn[1:], txs.data[1:])
    with pytest.raises(ValueError, match="whole transactions"):
        _encode(txs.commit_lsn[: n - 1], txs.data[: n - 1])
    with pytest.raises(ValueError, match="decreases"):
        swapped = transactions(5, 1) + transactions(1, 1)
        _encode(swapped.commit_lsn, swapped.data)
    with pytest.raises(ValueError, match="final_lsn"):  # commit_lsn not the Begin's final_lsn
        _encode(pa.array([tx_lsn(9)] * per_tx, pa.int64()), txs.data[:per_tx])
    with pytest.raises(ValueError, match="one per message"):
        _encode(txs.commit_lsn[:-1], txs.data)
    with pytest.raises(ValueError, match="empty segment"):
        _encode(pa.array([], pa.int64()), pa.array([], pa.binary()))
    with pytest.raises(ValueError, match="null"):
        _encode(txs.commit_lsn, pa.array([None, *txs.data.to_pylist()[1:]], pa.binary()))
    with pytest.raises(ValueError, match="LSNs out of order"):
        _encode(txs.commit_lsn, txs.data, last_end_lsn=tx_lsn(1))
    with pytest.raises(ValueError, match="compression"):
        _encode(txs.commit_lsn, txs.data, compression="gzip")


def test_a_file_that_is_not_a_segment_says_so() -> None:
    with pytest.raises(SegmentFormatError, match="not a readable Arrow IPC file"):
        decode_segment(pa.py_buffer(b"half a segment"), "x.arrow")

    other = pa.table({"commit_lsn": pa.array([1], pa.int64()), "payload": pa.array([b"B"], pa.binary())})
    with pytest.raises(SegmentFormatError, match="columns"):
        decode_segment(_ipc_file(other), "x.arrow")

    no_metadata = pa.table({"commit_lsn": pa.array([1], pa.int64()), "data": pa.array([b"B"], pa.binary())})
    with pytest.raises(SegmentFormatError, match="not a change-log segment"):
        decode_segment(_ipc_file(no_metadata), "x.arrow")


def test_a_segment_from_a_newer_format_asks_for_an_upgrade() -> None:
    txs = transactions(0, 1)
    body, _ = encode_segment(txs.commit_lsn, txs.data, last_end_lsn=txs.last_end_lsn, changes=txs.changes)
    table = ipc.open_file(body).read_all()
    newer = {**table.schema.metadata, b"format_version": str(FORMAT_VERSION + 1).encode()}
    with pytest.raises(SegmentFormatError, match="upgrade this worker"):
        decode_segment(_ipc_file(table.replace_schema_metadata(newer)), "x.arrow")


def _ipc_file(table: pa.Table) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()

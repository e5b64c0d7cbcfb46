"""Pure decoder for PostgreSQL ``pgoutput`` logical replication messages (protocol version 1)."""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

__all__ = [
    "UNCHANGED_TOAST",
    "Begin",
    "Commit",
    "Delete",
    "Insert",
    "LogicalMessage",
    "Message",
    "Origin",
    "PgOutputError",
    "Relation",
    "RelationColumn",
    "Truncate",
    "TupleValue",
    "TypeInfo",
    "UnchangedToast",
    "Update",
    "decode",
    "format_lsn",
    "parse_lsn",
]


class PgOutputError(ValueError):
    """A pgoutput message could not be decoded (unknown type, truncated or malformed)."""


class UnchangedToast(enum.Enum):
    """Type of :data:`UNCHANGED_TOAST` (an enum so it stays a singleton across copy/pickle)."""

    UNCHANGED_TOAST = "u"

    def __repr__(self) -> str:
        return "<unchanged toast>"

    __str__ = __repr__


#: Column value of kind ``'u'``: an out-of-line TOASTed value that the change did
#: not modify; the actual value is not part of the message.
UNCHANGED_TOAST = UnchangedToast.UNCHANGED_TOAST

#: One decoded column value: ``'t'`` -> str, ``'n'`` -> None,
#: ``'u'`` -> UNCHANGED_TOAST, ``'b'`` -> bytes.
TupleValue = str | bytes | None | Literal[UnchangedToast.UNCHANGED_TOAST]


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int  # LSN of the commit record of the transaction
    commit_time: datetime
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int  # end LSN of the commit record: resume point after this transaction
    commit_time: datetime


@dataclass(frozen=True, slots=True)
class RelationColumn:
    name: str
    type_oid: int
    typmod: int
    is_key: bool


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    namespace: str  # '' for pg_catalog, as sent by pgoutput
    name: str
    replica_identity: str  # 'd' default, 'n' nothing, 'f' full, 'i' index
    columns: tuple[RelationColumn, ...]


@dataclass(frozen=True, slots=True)
class TypeInfo:
    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    relation_oid: int
    new: tuple[TupleValue, ...]


@dataclass(frozen=True, slots=True)
class Update:
    relation_oid: int
    new: tuple[TupleValue, ...]
    old: tuple[TupleValue, ...] | None = None
    old_kind: str | None = None  # 'K' key columns only (others None), 'O' full old row


@dataclass(frozen=True, slots=True)
class Delete:
    relation_oid: int
    old: tuple[TupleValue, ...]
    old_kind: str  # 'K' key columns only (others None), 'O' full old row


@dataclass(frozen=True, slots=True)
class Truncate:
    relation_oids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, slots=True)
class Origin:
    lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Message = Begin | Commit | Origin | Relation | TypeInfo | Insert | Update | Delete | Truncate | LogicalMessage

_PG_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)

_BEGIN = struct.Struct("!QqI")  # final lsn, commit time, xid
_COMMIT = struct.Struct("!BQQq")  # flags, commit lsn, end lsn, commit time
_U8 = struct.Struct("!B")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_OID_KIND = struct.Struct("!Ic")  # relation oid, tuple kind byte ('N', 'K', 'O')
_REL_TAIL = struct.Struct("!BH")  # replica identity, number of columns
_COL_TYPE = struct.Struct("!Ii")  # type oid, typmod
_TRUNCATE_HEAD = struct.Struct("!IB")  # number of relations, option bits
_MESSAGE_HEAD = struct.Struct("!BQ")  # flags, lsn

_TRUNCATE_CASCADE = 1
_TRUNCATE_RESTART_SEQS = 2

_KIND_TEXT = ord("t")
_KIND_NULL = ord("n")
_KIND_TOAST = ord("u")
_KIND_BINARY = ord("b")


def _timestamp(us: int) -> datetime:
    return _PG_EPOCH + timedelta(microseconds=us)


def _string(buf: bytes, pos: int) -> tuple[str, int]:
    """Null-terminated UTF-8 string at ``pos`` -> (text, offset after the terminator)."""
    end = buf.find(b"\0", pos)
    if end < 0:
        raise PgOutputError(f"unterminated string at offset {pos}")
    return buf[pos:end].decode("utf-8"), end + 1


def _tuple(buf: bytes, pos: int) -> tuple[tuple[TupleValue, ...], int]:
    """TupleData at ``pos`` -> (values, offset after it)."""
    (ncols,) = _U16.unpack_from(buf, pos)
    pos += 2
    size = len(buf)
    unpack_len = _U32.unpack_from
    values: list[TupleValue] = []
    append = values.append
    for _ in range(ncols):
        if pos >= size:
            raise PgOutputError(f"tuple data truncated at offset {pos} (expected {ncols} columns)")
        kind = buf[pos]
        pos += 1
        if kind == _KIND_TEXT:
            (n,) = unpack_len(buf, pos)
            pos += 4
            end = pos + n
            if end > size:
                raise PgOutputError(f"column value of {n} bytes at offset {pos} exceeds message length {size}")
            append(buf[pos:end].decode("utf-8"))
            pos = end
        elif kind == _KIND_NULL:
            append(None)
        elif kind == _KIND_TOAST:
            append(UNCHANGED_TOAST)
        elif kind == _KIND_BINARY:
            (n,) = unpack_len(buf, pos)
            pos += 4
            end = pos + n
            if end > size:
                raise PgOutputError(f"column value of {n} bytes at offset {pos} exceeds message length {size}")
            append(buf[pos:end])
            pos = end
        else:
            raise PgOutputError(f"unknown column value kind {bytes((kind,))!r} at offset {pos - 1}")
    return tuple(values), pos


def _begin(buf: bytes) -> tuple[Begin, int]:
    final_lsn, ts, xid = _BEGIN.unpack_from(buf, 1)
    return Begin(final_lsn, _timestamp(ts), xid), 1 + _BEGIN.size


def _commit(buf: bytes) -> tuple[Commit, int]:
    flags, commit_lsn, end_lsn, ts = _COMMIT.unpack_from(buf, 1)
    return Commit(flags, commit_lsn, end_lsn, _timestamp(ts)), 1 + _COMMIT.size


def _origin(buf: bytes) -> tuple[Origin, int]:
    (lsn,) = _U64.unpack_from(buf, 1)
    name, pos = _string(buf, 9)
    return Origin(lsn, name), pos


def _relation(buf: bytes) -> tuple[Relation, int]:
    (oid,) = _U32.unpack_from(buf, 1)
    namespace, pos = _string(buf, 5)
    name, pos = _string(buf, pos)
    ident, ncols = _REL_TAIL.unpack_from(buf, pos)
    pos += 3
    columns = []
    for _ in range(ncols):
        (flags,) = _U8.unpack_from(buf, pos)
        colname, pos = _string(buf, pos + 1)
        type_oid, typmod = _COL_TYPE.unpack_from(buf, pos)
        pos += 8
        columns.append(RelationColumn(colname, type_oid, typmod, bool(flags & 1)))
    return Relation(oid, namespace, name, chr(ident), tuple(columns)), pos


def _type(buf: bytes) -> tuple[TypeInfo, int]:
    (oid,) = _U32.unpack_from(buf, 1)
    namespace, pos = _string(buf, 5)
    name, pos = _string(buf, pos)
    return TypeInfo(oid, namespace, name), pos


def _insert(buf: bytes) -> tuple[Insert, int]:
    oid, kind = _OID_KIND.unpack_from(buf, 1)
    if kind != b"N":
        raise PgOutputError(f"expected new tuple marker b'N' at offset 5, got {kind!r}")
    new, pos = _tuple(buf, 6)
    return Insert(oid, new), pos


def _update(buf: bytes) -> tuple[Update, int]:
    oid, kind = _OID_KIND.unpack_from(buf, 1)
    pos = 6
    if kind == b"N":
        new, pos = _tuple(buf, pos)
        return Update(oid, new, None, None), pos
    if kind != b"K" and kind != b"O":
        raise PgOutputError(f"expected tuple marker b'K', b'O' or b'N' at offset 5, got {kind!r}")
    old, pos = _tuple(buf, pos)
    marker = buf[pos : pos + 1]
    if marker != b"N":
        raise PgOutputError(f"expected new tuple marker b'N' at offset {pos}, got {marker!r}")
    new, pos = _tuple(buf, pos + 1)
    return Update(oid, new, old, kind.decode()), pos


def _delete(buf: bytes) -> tuple[Delete, int]:
    oid, kind = _OID_KIND.unpack_from(buf, 1)
    if kind != b"K" and kind != b"O":
        raise PgOutputError(f"expected old tuple marker b'K' or b'O' at offset 5, got {kind!r}")
    old, pos = _tuple(buf, 6)
    return Delete(oid, old, kind.decode()), pos


def _truncate(buf: bytes) -> tuple[Truncate, int]:
    nrels, options = _TRUNCATE_HEAD.unpack_from(buf, 1)
    oids = struct.unpack_from(f"!{nrels}I", buf, 6)
    return (
        Truncate(oids, bool(options & _TRUNCATE_CASCADE), bool(options & _TRUNCATE_RESTART_SEQS)),
        6 + 4 * nrels,
    )


def _message(buf: bytes) -> tuple[LogicalMessage, int]:
    flags, lsn = _MESSAGE_HEAD.unpack_from(buf, 1)
    prefix, pos = _string(buf, 10)
    (n,) = _U32.unpack_from(buf, pos)
    pos += 4
    end = pos + n
    if end > len(buf):
        raise PgOutputError(f"message content of {n} bytes at offset {pos} exceeds message length {len(buf)}")
    return LogicalMessage(bool(flags & 1), lsn, prefix, buf[pos:end]), end


_DECODERS: dict[int, Callable[[bytes], tuple[Message, int]]] = {
    ord("B"): _begin,
    ord("C"): _commit,
    ord("O"): _origin,
    ord("R"): _relation,
    ord("Y"): _type,
    ord("I"): _insert,
    ord("U"): _update,
    ord("D"): _delete,
    ord("T"): _truncate,
    ord("M"): _message,
}

_STREAMING = frozenset(b"SEcA")


def decode(data: bytes | bytearray | memoryview) -> Message:
    """Decode one pgoutput protocol-version-1 message (one ``data`` row of a slot peek/get).

    Raises :class:`PgOutputError` for empty, unknown, truncated or malformed input
    and for bytes left over after the message.
    """
    buf = data if type(data) is bytes else bytes(data)
    if not buf:
        raise PgOutputError("empty pgoutput message")
    tag = buf[0]
    decoder = _DECODERS.get(tag)
    if decoder is None:
        if tag in _STREAMING:
            raise PgOutputError(
                f"streaming pgoutput message type {chr(tag)!r} at offset 0: streaming is not "
                "enabled (this decoder supports proto_version 1 only)"
            )
        raise PgOutputError(f"unknown pgoutput message type {bytes((tag,))!r} at offset 0")
    try:
        msg, end = decoder(buf)
    except PgOutputError as exc:
        raise PgOutputError(f"malformed pgoutput {chr(tag)!r} message ({len(buf)} bytes): {exc}") from None
    except struct.error as exc:  # text names the offset and the buffer size
        raise PgOutputError(f"truncated pgoutput {chr(tag)!r} message ({len(buf)} bytes): {exc}") from None
    except UnicodeDecodeError as exc:
        raise PgOutputError(f"invalid UTF-8 in pgoutput {chr(tag)!r} message: {exc}") from None
    if end != len(buf):
        raise PgOutputError(
            f"pgoutput {chr(tag)!r} message has {len(buf) - end} unexpected trailing bytes at offset {end}"
        )
    return msg


_LSN_RE = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def format_lsn(lsn: int) -> str:
    """``0x16B374D848`` -> ``'16/B374D848'`` (PostgreSQL's ``pg_lsn`` text form)."""
    if not 0 <= lsn <= 0xFFFFFFFFFFFFFFFF:
        raise ValueError(f"LSN out of range: {lsn!r}")
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """``'16/B374D848'`` -> ``0x16B374D848``; raises ValueError on anything else."""
    m = _LSN_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"invalid LSN {text!r}: expected 'XXXXXXXX/XXXXXXXX' (hex)")
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)

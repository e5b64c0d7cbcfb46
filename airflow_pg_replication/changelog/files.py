"""Where the change log's files live: a local directory (plain ``os`` calls) or an fsspec filesystem.

    ChangeLog ─┬─▶ LocalFiles    write: temp file, fsync, os.replace, fsync dir │ read: memory map
               └─▶ FsspecFiles   write: one PUT (pipe_file)                     │ read: one GET (cat_file)

Both write a file whole or not at all, and durably before ``write`` returns: a reader never sees
half a file, and a crash after ``write`` returned loses nothing.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import secrets
import shutil
import time
from collections.abc import Sequence
from typing import Any, Protocol

import pyarrow as pa

from airflow_pg_replication.errors import NeedsAttentionError

__all__ = ["ChangeLogFiles", "FsspecFiles", "LocalFiles", "change_log_files"]

TEMP_SUFFIX = ".tmp"
#: fsspec protocols of object stores: a PUT is atomic and durable, and there are no directories to make.
OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "adl", "oss"}


class ChangeLogFiles(Protocol):
    """The few file operations the change log needs; paths are ``join``-ed from ``root``."""

    root: str

    def join(self, *parts: str) -> str: ...

    def write(self, path: str, data: pa.Buffer | bytes) -> None:
        """Write the whole file, atomically (a reader sees all of it or none) and durably."""

    def read(self, path: str) -> pa.Buffer | pa.NativeFile:
        """The file's bytes; FileNotFoundError when it is gone."""

    def list_files(self, directory: str) -> dict[str, int]:
        """File name -> size for the files right in ``directory``; {} when there is no such directory."""

    def list_dirs(self, directory: str) -> list[str]:
        """Names of the directories right in ``directory`` that hold files (as on object storage).

        Temp files (names starting with a dot) do not count.
        """

    def delete(self, paths: Sequence[str]) -> None:
        """Delete the files; one already gone is not an error."""

    def remove_tree(self, directory: str) -> None:
        """Delete the directory and everything in it; a missing one is not an error."""

    def describe(self) -> str: ...


def change_log_files(root: str, filesystem: Any = None) -> ChangeLogFiles:
    """Local files for a local root (``filesystem`` None or fsspec's local one), else fsspec's ``filesystem``."""
    if filesystem is None or "file" in _protocols(filesystem):
        path = root[len("file://") :] if root.startswith("file://") else root
        return LocalFiles(path)
    return FsspecFiles(root, filesystem)


class LocalFiles:
    """A local directory through plain ``os`` calls: no fsspec overhead, real fsync."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))
        self._durable_dirs: set[str] = set()

    def join(self, *parts: str) -> str:
        return os.path.join(*parts)

    def write(self, path: str, data: pa.Buffer | bytes) -> None:
        """Temp file in the same directory, fsync, ``os.replace`` onto the name, fsync the directory.

        The name appears only by the rename, which is atomic, and only once the bytes are on disk;
        the directory's fsync makes the rename itself survive a power loss.
        """
        directory, name = os.path.split(path)
        self._ensure_durable_dir(directory)
        temp = os.path.join(directory, f".{name}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(temp, flags, 0o644)
        except FileNotFoundError:  # another process removed the directory (drop_table) since: make it again
            self._durable_dirs.discard(directory)
            self._ensure_durable_dir(directory)
            fd = os.open(temp, flags, 0o644)
        try:
            try:
                view = memoryview(data).cast("B")
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, path)
        except BaseException:
            _unlink_missing_ok(temp)
            raise
        _fsync_dir(directory)

    def read(self, path: str) -> pa.NativeFile:
        return pa.memory_map(path, "r")  # zero copy; a file deleted or replaced later stays mapped

    def list_files(self, directory: str) -> dict[str, int]:
        try:
            with os.scandir(directory) as entries:
                files = [e for e in entries if e.is_file(follow_symlinks=False)]
        except FileNotFoundError:
            return {}
        sizes = {}
        for entry in files:
            with contextlib.suppress(FileNotFoundError):  # deleted, or a temp file renamed, since the listing
                sizes[entry.name] = entry.stat(follow_symlinks=False).st_size
        return sizes

    def list_dirs(self, directory: str) -> list[str]:
        try:
            with os.scandir(directory) as entries:
                dirs = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return []
        return [os.path.basename(d) for d in dirs if _holds_files(d)]

    def delete(self, paths: Sequence[str]) -> None:
        for path in paths:
            _unlink_missing_ok(path)

    def remove_tree(self, directory: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(directory)
        self._durable_dirs = {d for d in self._durable_dirs if not (d + os.sep).startswith(directory + os.sep)}

    def remove_stale_temp_files(self, directory: str, older_than_s: float = 3600.0) -> int:
        """Delete temp files a crashed writer left (no live write takes ``older_than_s``); how many."""
        stale = time.time() - older_than_s
        removed = 0
        for name in self.list_files(directory):
            path = os.path.join(directory, name)
            if name.startswith(".") and name.endswith(TEMP_SUFFIX):
                try:
                    if os.stat(path).st_mtime < stale:
                        os.unlink(path)
                        removed += 1
                except FileNotFoundError:
                    pass
        return removed

    def describe(self) -> str:
        return self.root

    def _ensure_durable_dir(self, directory: str) -> None:
        """Create the directory (and its parents) if missing, and fsync each parent once per process."""
        if directory in self._durable_dirs:
            return
        parent = os.path.dirname(directory)
        if parent != directory:
            self._ensure_durable_dir(parent)
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory)
            _fsync_dir(parent)  # a directory's entry is durable only once its parent is synced
        self._durable_dirs.add(directory)


class FsspecFiles:
    """An fsspec filesystem (s3fs, gcsfs, …): a write is one PUT, which object stores make atomic and durable."""

    def __init__(self, root: str, filesystem: Any) -> None:
        self.fs = filesystem
        self.root = filesystem._strip_protocol(root).rstrip("/")
        # Object stores have no directories, and s3fs's makedirs would create a missing bucket.
        self._has_directories = not set(_protocols(filesystem)) & OBJECT_STORES
        self._made_dirs: set[str] = set()

    def join(self, *parts: str) -> str:
        return posixpath.join(*parts)

    def write(self, path: str, data: pa.Buffer | bytes) -> None:
        body = data.to_pybytes() if isinstance(data, pa.Buffer) else bytes(data)
        directory = posixpath.dirname(path)
        if self._has_directories and directory not in self._made_dirs:
            self.fs.makedirs(directory, exist_ok=True)
            self._made_dirs.add(directory)
        try:
            self.fs.pipe_file(path, body)  # s3fs: one PUT, or a multipart upload that appears only when complete
        except FileNotFoundError as e:
            raise NeedsAttentionError(
                f"cannot write {self.describe_path(path)}: its bucket does not exist or these credentials "
                f"cannot see it ({e}); create the bucket, or fix change_log / change_log_conn_id"
            ) from e

    def read(self, path: str) -> pa.Buffer:
        return pa.py_buffer(self.fs.cat_file(path))

    def list_files(self, directory: str) -> dict[str, int]:
        return {posixpath.basename(e["name"]): int(e["size"]) for e in self._ls(directory) if e["type"] == "file"}

    def list_dirs(self, directory: str) -> list[str]:
        return [posixpath.basename(e["name"].rstrip("/")) for e in self._ls(directory) if e["type"] == "directory"]

    def delete(self, paths: Sequence[str]) -> None:
        if not paths:
            return
        try:
            self.fs.rm(list(paths))  # s3fs: batched DeleteObjects
        except FileNotFoundError:
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(path)
        self.fs.invalidate_cache(posixpath.dirname(paths[0]))

    def remove_tree(self, directory: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(directory, recursive=True)
        self.fs.invalidate_cache(directory)

    def describe(self) -> str:
        return self.describe_path(self.root)

    def describe_path(self, path: str) -> str:
        return f"{_protocols(self.fs)[0]}://{path}"

    def _ls(self, directory: str) -> list[dict[str, Any]]:
        self.fs.invalidate_cache(directory)  # another process may have written since: list afresh
        try:
            return list(self.fs.ls(directory, detail=True))
        except FileNotFoundError:
            return []


def _protocols(filesystem: Any) -> tuple[str, ...]:
    protocol = filesystem.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _holds_files(directory: str) -> bool:
    """True when the directory holds a file other than a temp file (no stat per file)."""
    try:
        with os.scandir(directory) as entries:
            return any(not e.name.startswith(".") and e.is_file(follow_symlinks=False) for e in entries)
    except FileNotFoundError:
        return False


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_missing_ok(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)

"""Disposable local PostgreSQL cluster (wal_level=logical) for tests, demos and benchmarks."""

from __future__ import annotations

import atexit
import glob
import importlib.util
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

_SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")

DEFAULT_SETTINGS: dict[str, str] = {
    "wal_level": "logical",
    "max_replication_slots": "50",
    "max_wal_senders": "50",
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "on",  # with fsync=off it costs nothing, and decoding sees commits at once
    "full_page_writes": "off",
    "shared_buffers": "256MB",
    "max_connections": "200",
}


def _has_server(bindir: str | os.PathLike) -> bool:
    return all(os.access(os.path.join(bindir, b), os.X_OK) for b in _SERVER_BINARIES)


def find_server_bindir() -> str:
    """Return a directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Looks at ``$PG_BINDIR``, ``pg_config --bindir``, the newest
    ``/usr/lib/postgresql/*/bin`` and finally the ``pgserver`` PyPI package.
    """
    env = os.environ.get("PG_BINDIR")
    if env:
        if not _has_server(env):
            raise RuntimeError(f"PG_BINDIR={env!r} does not contain {', '.join(_SERVER_BINARIES)}; fix or unset it.")
        return env
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            out = ""
        if out and _has_server(out):
            return out
    versioned = [d for d in glob.glob("/usr/lib/postgresql/*/bin") if _has_server(d)]
    if versioned:
        return max(versioned, key=lambda d: [int(x) for x in re.findall(r"\d+", Path(d).parent.name)] or [0])
    spec = importlib.util.find_spec("pgserver")
    if spec and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            candidate = os.path.join(loc, "pginstall", "bin")
            if _has_server(candidate):
                return candidate
    raise RuntimeError(
        "No PostgreSQL server binaries (initdb, pg_ctl, postgres) found. Install them with "
        "'apt-get install postgresql' (Debian package) or 'pip install pgserver', "
        "or point PG_BINDIR at the directory holding them."
    )


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _quote_conf(value: object) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


def _ensure_postgres_os_user() -> pwd.struct_passwd:
    """As root, return the ``postgres`` OS user, creating it if missing."""
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        pass
    try:
        subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], check=True, capture_output=True)
        return pwd.getpwnam("postgres")
    except (OSError, subprocess.CalledProcessError, KeyError) as exc:
        raise RuntimeError(
            "PostgreSQL refuses to run as root and there is no 'postgres' OS user; "
            "create one ('useradd --system --no-create-home postgres') or run as a non-root user."
        ) from exc


class ThrowawayCluster:
    """A private PostgreSQL server in a temp dir; use as a context manager.

    >>> with ThrowawayCluster() as pg:
    ...     pg.create_database("demo"); print(pg.dsn("demo"))
    """

    host = "127.0.0.1"
    user = "postgres"

    def __init__(
        self, settings: Mapping[str, object] | None = None, bindir: str | None = None, startup_timeout: float = 30.0
    ) -> None:
        self.settings: dict[str, str] = {**DEFAULT_SETTINGS, **{k: str(v) for k, v in (settings or {}).items()}}
        self.bindir = bindir or find_server_bindir()
        self.startup_timeout = startup_timeout
        self.port: int = 0
        self.tmpdir: Path | None = None
        self._os_user: pwd.struct_passwd | None = None
        self._proc: subprocess.Popen | None = None

    # -- paths & process helpers -------------------------------------------------
    def _path(self, name: str) -> Path:
        if self.tmpdir is None:
            raise RuntimeError("ThrowawayCluster is not running; call start() or use it as a context manager.")
        return self.tmpdir / name

    @property
    def datadir(self) -> Path:
        return self._path("data")

    @property
    def logfile(self) -> Path:
        return self._path("server.log")

    def _popen_kwargs(self) -> dict:
        kwargs: dict = {
            "cwd": self.tmpdir,
            "stdin": subprocess.DEVNULL,
            "env": {k: v for k, v in os.environ.items() if not k.startswith("PG")},
        }
        if self._os_user is not None:  # root: drop to the postgres OS user
            kwargs.update(user=self._os_user.pw_uid, group=self._os_user.pw_gid, extra_groups=[])
        return kwargs

    def _run(self, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
        cmd = [os.path.join(self.bindir, args[0]), *args[1:]]
        try:
            return subprocess.run(
                cmd, capture_output=True, text=True, check=True, timeout=timeout, **self._popen_kwargs()
            )
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({exc.returncode}):\n{exc.stdout}{exc.stderr}{self._log_tail()}"
            ) from None

    def _log_tail(self, lines: int = 30) -> str:
        try:
            tail = self.logfile.read_text(errors="replace").splitlines()[-lines:]
        except (OSError, RuntimeError):
            return ""
        return "\n--- server log tail ---\n" + "\n".join(tail)

    def _write_settings(self) -> None:
        body = "".join(f"{k} = {_quote_conf(v)}\n" for k, v in self.settings.items())
        body += f"port = {self.port}\nunix_socket_directories = {_quote_conf(self.tmpdir)}\n"
        path = self.datadir / "throwaway.conf"
        path.write_text("# managed by ThrowawayCluster; ALTER SYSTEM still overrides\n" + body)
        if self._os_user is not None:
            os.chown(path, self._os_user.pw_uid, self._os_user.pw_gid)

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> ThrowawayCluster:
        """initdb into a temp dir, start the server and wait until it accepts connections."""
        if self.tmpdir is not None:
            return self
        if os.geteuid() == 0:
            self._os_user = _ensure_postgres_os_user()
        parent = Path(tempfile.gettempdir())
        if self._os_user is not None and not all(os.stat(d).st_mode & 0o001 for d in (parent, *parent.parents)):
            parent = Path("/tmp")  # the postgres user must be able to traverse every ancestor
        self.tmpdir = Path(tempfile.mkdtemp(prefix="pgthrow-", dir=parent))
        if self._os_user is not None:
            os.chown(self.tmpdir, self._os_user.pw_uid, self._os_user.pw_gid)
        self.port = _free_port(self.host)
        atexit.register(self.stop)
        try:
            self._run(
                "initdb",
                "-D",
                str(self.datadir),
                "-U",
                self.user,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            )
            with open(self.datadir / "postgresql.conf", "a") as conf:
                conf.write("\ninclude 'throwaway.conf'\n")
            self._write_settings()
            self._spawn()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self) -> None:
        """Start the postmaster as our child in its own session and wait until it accepts connections."""
        with open(self.logfile, "ab") as log:
            if self._os_user is not None:
                os.chown(self.logfile, self._os_user.pw_uid, self._os_user.pw_gid)
            self._proc = subprocess.Popen(
                [os.path.join(self.bindir, "postgres"), "-D", str(self.datadir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self._popen_kwargs(),
            )
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"PostgreSQL exited during startup (code {self._proc.returncode}){self._log_tail()}")
            try:
                psycopg.connect(self.dsn(), connect_timeout=2).close()
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"PostgreSQL on port {self.port} did not accept connections within "
                        f"{self.startup_timeout:.0f}s: {exc}{self._log_tail()}"
                    ) from None
                time.sleep(0.05)

    def _shutdown(self, mode: str) -> None:
        """Stop the postmaster with ``pg_ctl stop -m <mode>`` and reap it (SIGKILL as a last resort)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            self._run("pg_ctl", "stop", "-D", str(self.datadir), "-m", mode, "-w", "-t", "30", timeout=40)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def restart(self, settings: Mapping[str, object | None] | None = None) -> None:
        """Merge ``settings`` (a ``None`` value drops a key) and restart the server, keeping its data.

        Settings live in ``throwaway.conf``; values set with ``ALTER SYSTEM`` take precedence.
        """
        for key, value in (settings or {}).items():
            if value is None:
                self.settings.pop(key, None)
            else:
                self.settings[key] = str(value)
        self._write_settings()
        self._shutdown("fast")
        self._spawn()

    def stop(self) -> None:
        """Stop the server (immediate shutdown) and delete its temp dir; safe to call twice."""
        atexit.unregister(self.stop)
        if self.tmpdir is None:
            return
        try:
            self._shutdown("immediate")
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def __enter__(self) -> ThrowawayCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- connection strings --------------------------------------------------------
    def dsn(self, dbname: str = "postgres") -> str:
        """libpq URI, e.g. ``postgresql://postgres@127.0.0.1:54321/postgres``."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def conn_uri(self, dbname: str = "postgres") -> str:
        """Airflow connection URI (usable as an ``AIRFLOW_CONN_<ID>`` value)."""
        return self.dsn(dbname)

    # -- databases & slots -----------------------------------------------------------
    def _admin(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn(), autocommit=True)

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its DSN."""
        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def drop_replication_slots(self, dbname: str, timeout: float = 10.0) -> list[str]:
        """Terminate walsenders using ``dbname``'s slots, drop those slots and return their names."""
        dropped: list[str] = []
        deadline = time.monotonic() + timeout
        with self._admin() as conn:
            while True:
                conn.execute(
                    "SELECT pg_terminate_backend(active_pid, 5000) FROM pg_replication_slots"
                    " WHERE database = %s AND active_pid IS NOT NULL",
                    (dbname,),
                )
                slots = [
                    r[0]
                    for r in conn.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s", (dbname,))
                ]
                if not slots:
                    return dropped
                for slot in slots:
                    try:
                        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                        dropped.append(slot)
                    except (psycopg.errors.ObjectInUse, psycopg.errors.UndefinedObject):
                        if time.monotonic() > deadline:
                            raise
                time.sleep(0.05)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` (if it exists) after dropping its replication slots."""
        self.drop_replication_slots(name)
        with self._admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

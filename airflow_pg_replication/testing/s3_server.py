"""Throwaway S3-compatible server (moto) on a free loopback port, for tests and benchmarks.

    ThrowawayS3Server() ── in a thread of this process (tests), or own_process=True (benchmarks:
    its request handling then does not share this process's GIL) ── endpoint_url, dummy keys

Needs ``moto[server]``; ``filesystem()`` needs ``s3fs``. Not runtime code.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from typing import Any

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ThrowawayS3Server:
    """An S3 endpoint at ``endpoint_url`` that forgets everything when stopped."""

    def __init__(self, *, own_process: bool = False, host: str = "127.0.0.1") -> None:
        self.host = host
        self.own_process = own_process
        self.port = 0
        self._thread_server: Any = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ThrowawayS3Server:
        if self.own_process:
            self.port = _free_port(self.host)
            cmd = [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]
            self._process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self._wait_until_listening()
        else:
            from moto.server import ThreadedMotoServer

            self._thread_server = ThreadedMotoServer(ip_address=self.host, port=0, verbose=False)
            self._thread_server.start()
            self.port = self._thread_server.get_host_and_port()[1]
        return self

    def stop(self) -> None:
        if self._thread_server is not None:
            self._thread_server.stop()
            self._thread_server = None
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def __enter__(self) -> ThrowawayS3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self) -> Any:
        """A boto3 S3 client for this server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def filesystem(self) -> Any:
        """An ``s3fs.S3FileSystem`` for this server (its own instance: no listing cache shared with others)."""
        import s3fs

        return s3fs.S3FileSystem(
            key=ACCESS_KEY,
            secret=SECRET_KEY,
            endpoint_url=self.endpoint_url,
            client_kwargs={"region_name": REGION},
            skip_instance_cache=True,
        )

    def airflow_connection_json(self) -> str:
        """An Airflow ``aws`` connection to this server, as ``AIRFLOW_CONN_<ID>`` takes it."""
        extra = {"endpoint_url": self.endpoint_url, "region_name": REGION}
        return json.dumps({"conn_type": "aws", "login": ACCESS_KEY, "password": SECRET_KEY, "extra": extra})

    def _wait_until_listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"moto server exited with {self._process.returncode}: is moto[server] installed?")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"moto server not listening on {self.endpoint_url} after {timeout:.0f} s")

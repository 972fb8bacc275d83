"""Start the whole gateway as separate processes, the way ``make run`` and the end-to-end
tests need it: topics created, migrations applied, every service ready."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO

import httpx
from pydantic import SecretStr

from tollgate_core import db
from tollgate_core.bus.admin import ensure_topics
from tollgate_core.settings import DatabaseSettings, KafkaSettings
from tollgate_core.topics import DEFAULT_TOPICS
from tollgate_dev.platform import TANSU_CLIENT_ENV, stop_process

SERVICES = ("auth", "meter", "router", "stream", "analytics")
DEFAULT_PORTS = {"stream": 8080, "auth": 8081, "router": 8082, "meter": 8083, "analytics": 8084}
#: packages that own a Postgres schema, migrated before the services start
SCHEMA_OWNERS = ("tollgate_meter", "tollgate_auth", "tollgate_router")


def migrations_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"{package} is not installed")
    return Path(spec.origin).parent / "migrations"


async def prepare(
    bootstrap_servers: str, database_url: str, *, partitions: int | None = None
) -> list[str]:
    """Create missing topics and migrate every schema; returns the topics created.

    ``partitions`` replaces every topic's partition count (the local runner uses few: one
    process per service needs no more, and each partition a consumer fetches costs the
    broker and the client work on every fetch)."""
    specs = DEFAULT_TOPICS
    if partitions is not None:
        specs = tuple(replace(s, partitions=partitions) for s in DEFAULT_TOPICS)
    created = await ensure_topics(KafkaSettings(bootstrap_servers=bootstrap_servers), specs)
    database = DatabaseSettings(database_url=SecretStr(database_url))
    for package in SCHEMA_OWNERS:
        await db.migrate(database, migrations_dir(package))
    return created


def service_env(
    base: Mapping[str, str],
    *,
    bootstrap_servers: str,
    database_url: str,
    ports: Mapping[str, int],
    tansu: bool = True,
) -> dict[str, str]:
    """The services' environment; against Tansu (``tansu``) with its polling settings,
    unless ``base`` sets them."""
    env = {**TANSU_CLIENT_ENV, **base} if tansu else dict(base)
    env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap_servers
    env["DATABASE_URL"] = database_url
    for service, port in ports.items():
        env[f"TOLLGATE_{service.upper()}_PORT"] = str(port)
    if "auth" in ports:
        for client in ("STREAM", "METER"):
            env.setdefault(f"TOLLGATE_{client}_AUTH_URL", f"http://127.0.0.1:{ports['auth']}")
    return env


def dev_auth_env(root: Path) -> dict[str, str]:
    """The development IdP on and the local group policy: how ``make run`` and the
    end-to-end tests run the auth service (never a production default)."""
    return {
        "TOLLGATE_AUTH_DEV_IDP": "true",
        "TOLLGATE_AUTH_POLICY_FILE": str(root / "services" / "auth" / "policy.dev.toml"),
        "TOLLGATE_STREAM_AUTH_MODE": "service",
    }


def bin_path(command: str) -> str:
    return str(Path(sys.executable).parent / command)


def wait_ready(
    urls: Mapping[str, str],
    *,
    timeout: float,
    processes: Mapping[str, subprocess.Popen[bytes]] | None = None,
) -> float:
    """Poll every ``/readyz`` until all answer 200; returns the seconds it took.

    Any of ``processes`` (keyed by a name for the error) that exits first fails at once,
    whether it is one service or a supervisor that runs them all."""
    start = time.monotonic()
    pending = dict(urls)
    with httpx.Client(timeout=1.0) as client:
        while pending:
            for name, process in (processes or {}).items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode} during start-up")
            for name, url in list(pending.items()):
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{url}/readyz").status_code == 200:
                        del pending[name]
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"not ready after {timeout}s: {', '.join(pending)}")
            time.sleep(0.1)
    return time.monotonic() - start


class Stack:
    """The five services as child processes, each logging to its own file."""

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        database_url: str,
        log_dir: Path,
        ports: Mapping[str, int],
        extra_env: Mapping[str, str] | None = None,
        services: Sequence[str] = SERVICES,
    ) -> None:
        self.ports = dict(ports)
        self.services = tuple(services)
        self.log_dir = log_dir
        self.env = service_env(
            {**os.environ, **(extra_env or {})},
            bootstrap_servers=bootstrap_servers,
            database_url=database_url,
            ports=self.ports,
        )
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def start_service(self, service: str) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{service}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        process = subprocess.Popen(
            [bin_path(f"tollgate-{service}")],
            env=self.env,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        self.processes[service] = process
        return process

    def start(self, *, timeout: float = 90.0) -> float:
        for service in self.services:
            self.start_service(service)
        return wait_ready(
            {s: self.url(s) for s in self.services}, timeout=timeout, processes=self.processes
        )

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            stop_process(process, timeout=15)
        self.processes.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()

    def logs(self, service: str) -> str:
        path = self.log_dir / f"{service}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def run_prepare(
    bootstrap_servers: str, database_url: str, *, partitions: int | None = None
) -> list[str]:
    return asyncio.run(prepare(bootstrap_servers, database_url, partitions=partitions))

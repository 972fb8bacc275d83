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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

import httpx
from pydantic import SecretStr

from tollgate_core import db
from tollgate_core.bus.admin import ensure_topics
from tollgate_core.settings import DatabaseSettings, KafkaSettings
from tollgate_core.topics import DEFAULT_TOPICS
from tollgate_dev.platform import TANSU_CLIENT_ENV, free_port, stop_process

SERVICES = ("auth", "meter", "router", "stream", "analytics")
DEFAULT_PORTS = {"stream": 8080, "auth": 8081, "router": 8082, "meter": 8083, "analytics": 8084}
#: packages that own a Postgres schema, migrated before the services start
SCHEMA_OWNERS = ("tollgate_meter", "tollgate_auth", "tollgate_router")


#: the service whose replicas sit behind a round-robin balancer on the service's own port
BALANCED = "stream"


def parse_replicas(value: str) -> dict[str, int]:
    """``TOLLGATE_DEV_REPLICAS``, e.g. ``"stream=3,router=2,meter=2"``: processes per service."""
    replicas: dict[str, int] = {}
    for item in value.split(","):
        if not item.strip():
            continue
        service, sep, count = item.partition("=")
        service = service.strip()
        if not sep or service not in SERVICES or not count.strip().isdigit():
            raise ValueError(
                f"TOLLGATE_DEV_REPLICAS: {item.strip()!r} is not service=count "
                f"(services: {', '.join(SERVICES)})"
            )
        if int(count) < 1:
            raise ValueError(f"TOLLGATE_DEV_REPLICAS: {service} needs at least one process")
        replicas[service] = int(count)
    return replicas


@dataclass(frozen=True)
class Instance:
    """One process of a service: ``name`` is the service itself when it runs once, else
    ``<service>-<n>``; each listens on a port of its own."""

    name: str
    service: str
    port: int


def layout(
    services: Sequence[str],
    ports: Mapping[str, int],
    replicas: Mapping[str, int],
    allocate: Callable[[], int] = free_port,
) -> tuple[list[Instance], int | None]:
    """The processes to start and the balancer's port (None without edge replicas).

    A service run once keeps its port. Replicas of the edge each get a port of their own and
    the balancer takes the edge's port; replicas of another service: the first keeps the
    service's port (so its URL still answers), the others get ports of their own."""
    instances: list[Instance] = []
    balancer: int | None = None
    for service in services:
        count = replicas.get(service, 1)
        if count == 1:
            instances.append(Instance(service, service, ports[service]))
            continue
        for n in range(1, count + 1):
            keeps = n == 1 and service != BALANCED
            port = ports[service] if keeps else allocate()
            instances.append(Instance(f"{service}-{n}", service, port))
        if service == BALANCED:
            balancer = ports[service]
    return instances, balancer


def balancer_command(port: int, backends: Sequence[Instance]) -> list[str]:
    return [
        bin_path("tollgate-balancer"),
        "--port",
        str(port),
        "--backends",
        ",".join(f"127.0.0.1:{i.port}" for i in backends),
    ]


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
    if "meter" in ports:
        env.setdefault("TOLLGATE_STREAM_METER_URL", f"http://127.0.0.1:{ports['meter']}")
    if "router" in ports:
        for client in ("STREAM", "METER"):
            env.setdefault(f"TOLLGATE_{client}_ROUTER_URL", f"http://127.0.0.1:{ports['router']}")
    return env


def dev_auth_env(root: Path) -> dict[str, str]:
    """The development IdP on and the local group policy: how ``make run`` and the
    end-to-end tests run the auth service (never a production default)."""
    return {
        "TOLLGATE_AUTH_DEV_IDP": "true",
        "TOLLGATE_AUTH_POLICY_FILE": str(root / "services" / "auth" / "policy.dev.toml"),
        "TOLLGATE_STREAM_AUTH_MODE": "service",
        # the web page at the edge's / signs people in with the development IdP
        "TOLLGATE_STREAM_WEB_SIGN_IN": "local",
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
    """The five services as child processes, each logging to its own file; with
    ``replicas`` (``{"stream": 3, "router": 2}``) that many processes of a service, the edge
    replicas behind a round-robin balancer on the edge's port (``tollgate-balancer``)."""

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        database_url: str,
        log_dir: Path,
        ports: Mapping[str, int],
        extra_env: Mapping[str, str] | None = None,
        services: Sequence[str] = SERVICES,
        replicas: Mapping[str, int] | None = None,
    ) -> None:
        self.services = tuple(services)
        self.log_dir = log_dir
        self.env = service_env(
            {**os.environ, **(extra_env or {})},
            bootstrap_servers=bootstrap_servers,
            database_url=database_url,
            ports=ports,
        )
        instances, self.balancer_port = layout(self.services, ports, replicas or {})
        self.instances = {i.name: i for i in instances}
        #: every service's port (the balancer's for balanced replicas) and every instance's
        self.ports = {**ports, **{i.name: i.port for i in instances}}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []

    def url(self, name: str) -> str:
        """A service's URL (through the balancer for edge replicas), or one instance's."""
        return f"http://127.0.0.1:{self.ports[name]}"

    def replicas(self, service: str) -> list[Instance]:
        return [i for i in self.instances.values() if i.service == service]

    def _spawn(
        self, name: str, command: list[str], env: Mapping[str, str]
    ) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        self.processes[name] = process
        return process

    def start_service(self, name: str) -> subprocess.Popen[bytes]:
        """Start one instance: a service run once, or a replica such as ``router-2``."""
        instance = self.instances[name]
        env = {**self.env, f"TOLLGATE_{instance.service.upper()}_PORT": str(instance.port)}
        return self._spawn(name, [bin_path(f"tollgate-{instance.service}")], env)

    def start(self, *, timeout: float = 90.0) -> float:
        for name in self.instances:
            self.start_service(name)
        urls = {name: self.url(name) for name in self.instances}
        if self.balancer_port is not None:
            command = balancer_command(self.balancer_port, self.replicas(BALANCED))
            self._spawn("balancer", command, self.env)
            urls["balancer"] = f"http://127.0.0.1:{self.balancer_port}"
        return wait_ready(urls, timeout=timeout, processes=self.processes)

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

    def logs(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def run_prepare(
    bootstrap_servers: str, database_url: str, *, partitions: int | None = None
) -> list[str]:
    return asyncio.run(prepare(bootstrap_servers, database_url, partitions=partitions))

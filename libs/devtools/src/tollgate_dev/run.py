"""``make run``: the whole gateway on this machine, on embedded defaults.

Starts Tansu on 127.0.0.1:9092 unless ``KAFKA_BOOTSTRAP_SERVERS`` is set, uses
``DATABASE_URL`` if set or else an embedded Postgres under ``var/postgres``, creates topics,
applies migrations, runs the services from the ``Procfile`` under honcho, prints their URLs
and, on Ctrl-C, stops everything it started.

``TOLLGATE_DEV_REPLICAS="stream=3,router=2,meter=2"`` runs that many processes of a service
(each on a port of its own); the edge's replicas sit behind ``tollgate-balancer`` on the
edge's port, round robin per connection, as behind a Kubernetes Service.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tollgate_dev.platform import EmbeddedPostgres, TansuBroker, stop_process
from tollgate_dev.stack import (
    BALANCED,
    DEFAULT_PORTS,
    SERVICES,
    Instance,
    balancer_command,
    bin_path,
    dev_auth_env,
    layout,
    parse_replicas,
    run_prepare,
    service_env,
    wait_ready,
)

logger = logging.getLogger("tollgate-dev")


class DevSettings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    kafka_bootstrap_servers: str | None = None
    database_url: str | None = None
    tollgate_stream_port: int = DEFAULT_PORTS["stream"]
    tollgate_auth_port: int = DEFAULT_PORTS["auth"]
    tollgate_router_port: int = DEFAULT_PORTS["router"]
    tollgate_meter_port: int = DEFAULT_PORTS["meter"]
    tollgate_analytics_port: int = DEFAULT_PORTS["analytics"]
    #: partitions per topic on the embedded broker (at least the largest replica count):
    #: each partition a consumer fetches costs work on every fetch
    tollgate_dev_partitions: int = Field(default=2, ge=1, le=64)

    tollgate_dev_replicas: str = ""

    def ports(self) -> dict[str, int]:
        return {s: int(getattr(self, f"tollgate_{s}_port")) for s in SERVICES}


def replica_procfile(
    procfile: Path, instances: list[Instance], balancer: int | None, target: Path
) -> Path:
    """The Procfile with one line per instance (its port in its environment) and one for the
    balancer; ``procfile`` itself when every service runs once."""
    if balancer is None and all(i.name == i.service for i in instances):
        return procfile
    commands = dict(
        (name.strip(), command.strip())
        for name, _, command in (
            line.partition(":") for line in procfile.read_text().splitlines() if ":" in line
        )
    )
    lines = [
        f"{i.name}: TOLLGATE_{i.service.upper()}_PORT={i.port} {commands[i.service]}"
        for i in instances
    ]
    if balancer is not None:
        backends = [i for i in instances if i.service == BALANCED]
        lines.append(f"balancer: exec {' '.join(balancer_command(balancer, backends))}")
    target.write_text("\n".join(lines) + "\n")
    return target


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def share_meter_admin_token(env: dict[str, str]) -> None:
    """The edge asks the meter for a caller's usage after each answer (``tokenUsage``) with
    the meter's admin token: one made up for this run unless one is configured."""
    token = env.get("TOLLGATE_METER_ADMIN_TOKEN") or env.get("TOLLGATE_STREAM_METER_ADMIN_TOKEN")
    token = token or secrets.token_urlsafe(24)
    env.setdefault("TOLLGATE_METER_ADMIN_TOKEN", token)
    env.setdefault("TOLLGATE_STREAM_METER_ADMIN_TOKEN", token)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root")
    parser.add_argument("--kafka-port", type=int, default=9092)
    parser.add_argument(
        "--state-dir", type=Path, default=None, help="logs and embedded Postgres (ROOT/var)"
    )
    return parser.parse_args()


class DevRun:
    """One ``make run``: the platform it starts (what is not configured), the services under
    honcho, and the stop of everything it started, in reverse."""

    def __init__(self, args: argparse.Namespace, settings: DevSettings) -> None:
        self._args = args
        self._settings = settings
        self._var: Path = args.state_dir or args.root / "var"
        self.broker: TansuBroker | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.honcho: subprocess.Popen[bytes] | None = None

    def platform(self) -> tuple[str, str]:
        """Kafka's bootstrap servers and Postgres's URL, started here when not configured
        (each bound before its start, so an interrupted start-up is still cleaned up)."""
        self._var.mkdir(parents=True, exist_ok=True)
        bootstrap = self._settings.kafka_bootstrap_servers
        if bootstrap is None:
            self.broker = TansuBroker(self._args.kafka_port, log_path=self._var / "tansu.log")
            self.broker.start()
            bootstrap = self.broker.bootstrap_servers
        logger.info("Kafka: %s%s", bootstrap, " (embedded Tansu)" if self.broker else "")
        database_url = self._settings.database_url
        if database_url is None:
            self.postgres = EmbeddedPostgres(self._var / "postgres")
            self.postgres.start()
            database_url = self.postgres.url
        embedded = " (embedded)" if self.postgres else ""
        logger.info("Postgres: %s%s", database_url.split("@")[-1], embedded)
        return bootstrap, database_url

    def services(
        self, bootstrap: str, database_url: str
    ) -> tuple[subprocess.Popen[bytes], list[Instance], int | None]:
        """Topics and schemas prepared, then every service instance started under honcho."""
        replicas = parse_replicas(self._settings.tollgate_dev_replicas)
        # every replica of a service in a consumer group needs a partition of its own
        partitions = max(self._settings.tollgate_dev_partitions, *replicas.values(), 1)
        created = run_prepare(
            bootstrap, database_url, partitions=partitions if self.broker else None
        )
        logger.info("topics created: %s", ", ".join(created) or "none (all existed)")
        root = self._args.root
        instances, balancer = layout(SERVICES, self._settings.ports(), replicas)
        procfile = replica_procfile(
            root / "Procfile", instances, balancer, self._var / "Procfile.replicas"
        )
        env = self.env(bootstrap, database_url)
        self.honcho = subprocess.Popen(
            [bin_path("honcho"), "start", "-f", str(procfile), "-d", str(root)], env=env
        )
        return self.honcho, instances, balancer

    def env(self, bootstrap: str, database_url: str) -> dict[str, str]:
        env = service_env(
            {
                **dev_auth_env(self._args.root.resolve()),
                **os.environ,
                "TOLLGATE_LOG_FORMAT": "text",
            },
            bootstrap_servers=bootstrap,
            database_url=database_url,
            ports=self._settings.ports(),
            tansu=self.broker is not None,
        )
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        share_meter_admin_token(env)
        return env

    def stop(self) -> None:
        if self.honcho is not None:
            stop_process(self.honcho, timeout=30)
        if self.broker is not None:
            self.broker.stop()
        if self.postgres is not None:
            self.postgres.stop()


def announce(urls: dict[str, str], instances: list[Instance], balancer: int | None) -> None:
    """Where everything answers, once every instance is ready."""
    stream = urls["stream"]
    logger.info("  Web page: chat and usage     %s/", stream)
    logger.info("  AppSync Events HTTP publish  POST %s/event", stream)
    logger.info("  AppSync Events WebSocket     %s/event/realtime", stream.replace("http", "ws", 1))
    if os.environ.get("TOLLGATE_AUTH_DEV_IDP", "true").lower() in ("1", "true", "yes"):
        logger.info("  dev IdP token                POST %s/v1/dev/token", urls["auth"])
    if balancer is not None:
        logger.info("  %-9s  %s (round robin over the stream replicas)", "balancer", stream)
    for instance in instances:
        url = f"http://127.0.0.1:{instance.port}"
        logger.info("  %-9s  %s/healthz  %s/readyz  %s/metrics", instance.name, url, url, url)
    logger.info("Ctrl-C stops everything")


def main() -> None:
    args = _arguments()
    logging.basicConfig(level=logging.INFO, format="tollgate-dev | %(message)s")
    for noisy in ("httpx", "pgserver", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = DevSettings()
    started = time.monotonic()
    run = DevRun(args, settings)
    # Ctrl-C reaches every process of the terminal's group at once, SIGTERM only this one:
    # either way honcho is told to stop the services, then Kafka and Postgres are stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        honcho, instances, balancer = run.services(*run.platform())
        urls = {s: f"http://127.0.0.1:{p}" for s, p in settings.ports().items()}
        instance_urls = {i.name: f"http://127.0.0.1:{i.port}" for i in instances}
        wait_ready({**urls, **instance_urls}, timeout=120, processes={"honcho": honcho})
        logger.info("ready in %.1fs", time.monotonic() - started)
        announce(urls, instances, balancer)
        honcho.wait()
    except KeyboardInterrupt:
        logger.info("stopping")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        run.stop()
        logger.info("stopped")

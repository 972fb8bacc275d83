"""A service whose dependencies are missing at start keeps trying, says why, and becomes ready
by itself once they appear."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from tollgate_core.bus.admin import ensure_topics
from tollgate_core.settings import KafkaSettings
from tollgate_dev.platform import EmbeddedPostgres, TansuBroker, free_port
from tollgate_dev.stack import Stack, run_prepare

pytestmark = pytest.mark.e2e


def readyz(url: str) -> httpx.Response:
    deadline = time.monotonic() + 30
    while True:
        try:
            return httpx.get(f"{url}/readyz", timeout=2)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def wait_until(predicate: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.2)


@pytest.mark.parametrize("service", ["meter", "router", "auth", "stream"])
def test_a_service_waits_for_kafka_reports_why_and_recovers(
    embedded_postgres: EmbeddedPostgres, tmp_path: Path, service: str
) -> None:
    kafka_port = free_port()
    stack = Stack(
        bootstrap_servers=f"127.0.0.1:{kafka_port}",  # nothing listens there yet
        database_url=embedded_postgres.url,
        log_dir=tmp_path,
        ports={service: free_port()},
        services=[service],
        extra_env={"KAFKA_REQUEST_TIMEOUT_MS": "2000"},
    )
    stack.start_service(service)
    try:
        url = stack.url(service)
        wait_until(
            lambda: (
                "kafka" in readyz(url).json()["checks"]
                and readyz(url).json()["checks"]["kafka"]["reason"] != "starting"
            )
        )
        response = readyz(url)
        assert response.status_code == 503
        if "postgres" in response.json()["checks"]:
            assert response.json()["checks"]["postgres"]["ready"] is True
        kafka = response.json()["checks"]["kafka"]
        assert kafka["ready"] is False and "Kafka unreachable" in kafka["reason"]
        assert httpx.get(f"{url}/healthz").status_code == 200  # alive, just not ready
        wait_until(lambda: "cannot start kafka" in stack.logs(service))

        with TansuBroker(kafka_port) as broker:
            run_prepare(broker.bootstrap_servers, embedded_postgres.url)
            wait_until(lambda: readyz(url).status_code == 200)
    finally:
        stack.stop()


def test_meter_reports_an_unreachable_postgres(kafka_broker: TansuBroker, tmp_path: Path) -> None:
    stack = Stack(
        bootstrap_servers=kafka_broker.bootstrap_servers,
        database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/nothing",
        log_dir=tmp_path,
        ports={"meter": free_port()},
        services=["meter"],
    )
    stack.start_service("meter")
    try:
        url = stack.url("meter")
        wait_until(lambda: readyz(url).json()["checks"]["postgres"]["reason"] != "starting")
        response = readyz(url)
        assert response.status_code == 503
        assert "Postgres unreachable" in response.json()["checks"]["postgres"]["reason"]
        wait_until(lambda: "cannot start postgres" in stack.logs("meter"))
    finally:
        stack.stop()


def test_analytics_waits_for_kafka_instead_of_exiting(tmp_path: Path) -> None:
    kafka_port = free_port()
    stack = Stack(
        bootstrap_servers=f"127.0.0.1:{kafka_port}",  # nothing listens there yet
        database_url="postgresql://unused@127.0.0.1:1/none",
        log_dir=tmp_path,
        ports={"analytics": free_port()},
        services=["analytics"],
        extra_env={
            "KAFKA_REQUEST_TIMEOUT_MS": "2000",
            "TOLLGATE_ANALYTICS_DATA_DIR": str(tmp_path / "dataset"),
            "TOLLGATE_ANALYTICS_STATE_DIR": str(tmp_path / "state"),
        },
    )
    process = stack.start_service("analytics")
    try:
        wait_until(lambda: stack.logs("analytics").count("cannot start kafka") >= 2)
        assert process.poll() is None, stack.logs("analytics")
        with TansuBroker(kafka_port) as broker:
            asyncio.run(ensure_topics(KafkaSettings(bootstrap_servers=broker.bootstrap_servers)))
            url = stack.url("analytics")
            wait_until(lambda: ready(url), timeout=120)
    finally:
        stack.stop()

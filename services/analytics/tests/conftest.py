"""Fixtures: the analytics worker as a real process against the test session's Kafka."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tollgate_core.bus import EventProducer
from tollgate_core.contracts import RequestLogV1, Usage, UsageRecordV1
from tollgate_core.settings import KafkaSettings
from tollgate_dev.platform import free_port, stop_process

MODELS = ("local.simulated", "anthropic.claude-3-haiku")
PRINCIPALS = ("alice", "bob", "carol")


@dataclass
class Worker:
    """One ``tollgate-analytics`` worker process with its own topics, group and dataset."""

    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.port = free_port()
        self.env["TOLLGATE_ANALYTICS_PORT"] = str(self.port)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "tollgate-analytics")],
            env=self.env,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()

    async def wait_ready(self, timeout: float = 90) -> None:
        async with httpx.AsyncClient(timeout=2) as client, asyncio.timeout(timeout):
            while True:
                assert self.process is not None and self.process.poll() is None, self.logs()
                try:
                    if (await client.get(f"{self.url}/readyz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL: no flush, no commit, the way a crash ends it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=20)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


@dataclass(frozen=True)
class Topics:
    logs: str
    usage: str
    dead_letter: str
    partitions: int


@pytest.fixture
async def analytics_topics(
    topic_factory: Callable[..., Any], unique: Callable[[str], str]
) -> Topics:
    partitions = 2
    return Topics(
        logs=await topic_factory(unique("logs"), partitions),
        usage=await topic_factory(unique("usage"), partitions),
        dead_letter=await topic_factory(unique("dlq"), 1),
        partitions=partitions,
    )


@pytest.fixture
def worker_factory(
    kafka_settings: KafkaSettings,
    analytics_topics: Topics,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> Iterator[Callable[..., Worker]]:
    workers: list[Worker] = []

    def create(**settings: str) -> Worker:
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
            "TOLLGATE_ANALYTICS_APP_ID": unique("analytics"),
            "TOLLGATE_ANALYTICS_DATA_DIR": str(tmp_path / "dataset"),
            "TOLLGATE_ANALYTICS_STATE_DIR": str(tmp_path / "state"),
            "TOLLGATE_ANALYTICS_LOGS_TOPIC": analytics_topics.logs,
            "TOLLGATE_ANALYTICS_USAGE_TOPIC": analytics_topics.usage,
            "TOLLGATE_ANALYTICS_DEAD_LETTER_TOPIC": analytics_topics.dead_letter,
            "TOLLGATE_ANALYTICS_TOPIC_PARTITIONS": str(analytics_topics.partitions),
            "TOLLGATE_ANALYTICS_ROLL_MAX_AGE_S": "1",
            "TOLLGATE_LOG_FORMAT": "text",
            **{f"TOLLGATE_ANALYTICS_{k.upper()}": v for k, v in settings.items()},
        }
        worker = Worker(env=env, log_path=tmp_path / f"worker-{len(workers)}.log")
        workers.append(worker)
        return worker

    yield create
    for worker in workers:
        worker.stop()


@pytest.fixture
async def producer(kafka_settings: KafkaSettings) -> AsyncIterator[EventProducer]:
    async with EventProducer(kafka_settings, client_id="analytics-test") as producer:
        yield producer


def request_pair(
    i: int, *, finished_at: datetime | None = None
) -> tuple[RequestLogV1, UsageRecordV1]:
    """The log and usage record the router writes for request ``i``."""
    finished = finished_at or datetime.now(UTC)
    model = MODELS[i % len(MODELS)]
    principal = PRINCIPALS[i % len(PRINCIPALS)]
    usage = Usage(input_tokens=10 + i, output_tokens=20 + 2 * i)
    cost = Decimal(i) / 1000
    request_id = f"req-{i:05d}-{finished.timestamp():.0f}"
    failed = i % 10 == 9
    log = RequestLogV1(
        request_id=request_id,
        principal=principal,
        groups=("staff",) if principal != "carol" else (),
        model=model,
        provider="local",
        status="error" if failed else "ok",
        error_type="provider_throttled" if failed else None,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cost_usd=cost,
        cache_hit=i % 7 == 3,
        time_to_first_token_ms=40 + i,
        latency_ms=200 + 5 * i,
        started_at=finished - timedelta(milliseconds=200 + 5 * i),
        finished_at=finished,
    )
    record = UsageRecordV1(
        request_id=request_id,
        principal=principal,
        model=model,
        provider="local",
        usage=usage,
        cost_usd=cost,
        status="error" if failed else "ok",
        occurred_at=finished,
    )
    return log, record


@pytest.fixture
def make_request() -> Callable[..., tuple[RequestLogV1, UsageRecordV1]]:
    return request_pair


async def wait_until(predicate: Callable[[], Any], timeout: float = 60) -> Any:
    """Poll ``predicate`` (sync) until it returns something truthy."""
    async with asyncio.timeout(timeout):
        while True:
            result = predicate()
            if result:
                return result
            await asyncio.sleep(0.25)


@pytest.fixture
def eventually() -> Callable[..., Any]:
    return wait_until

"""The S3 sink against moto's S3 server: an absent bucket keeps the worker not ready and
writes nothing; once the bucket exists every record lands exactly once and DuckDB reads it
back from S3."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from tollgate_analytics.query import Catalog
from tollgate_analytics.settings import AnalyticsSettings
from tollgate_core.bus import EventProducer
from tollgate_dev.platform import free_port

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


async def test_the_s3_sink_waits_for_its_bucket_then_writes_every_record_once(
    worker_factory: Callable[..., Any],
    analytics_topics: Any,
    producer: EventProducer,
    make_request: Callable[..., Any],
    eventually: Callable[..., Any],
    s3_endpoint: str,
) -> None:
    bucket = "tollgate-analytics-test"
    worker = worker_factory(s3_bucket=bucket, s3_endpoint_url=s3_endpoint, s3_prefix="data")
    worker.env.update(CREDENTIALS)
    worker.start()

    async def readiness() -> dict[str, Any]:
        async with httpx.AsyncClient() as client:
            try:
                response = await client.get(f"{worker.url}/readyz")
            except httpx.HTTPError:
                return {}
            body: dict[str, Any] = response.json()
            body["status"] = response.status_code
            return body

    async def storage_refused() -> bool:
        body = await readiness()
        return bool(body) and body["status"] == 503 and not body["checks"]["storage"]["ready"]

    async def poll(check: Callable[[], Any], timeout: float = 90) -> None:
        import asyncio

        async with asyncio.timeout(timeout):
            while not await check():
                await asyncio.sleep(0.25)

    await poll(storage_refused)
    pairs = [make_request(i) for i in range(12)]
    for log, usage in pairs:
        await producer.publish(analytics_topics.logs, log, key=log.principal)
        await producer.publish(analytics_topics.usage, usage, key=usage.principal)

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    await worker.wait_ready()

    settings = AnalyticsSettings(s3_bucket=bucket, s3_endpoint_url=s3_endpoint, s3_prefix="data")
    catalog = Catalog(settings.location, settings.pyarrow_s3_options())

    def counts() -> tuple[int, int]:
        rows = catalog.query(
            "SELECT (SELECT count(*) FROM logs), (SELECT count(*) FROM usage)"
        ).rows[0]
        return int(rows[0]), int(rows[1])

    await eventually(lambda: counts() == (12, 12))
    got = catalog.query("SELECT sum(input_tokens), sum(output_tokens) FROM usage").rows[0]
    assert got == (
        sum(u.usage.input_tokens for _, u in pairs),
        sum(u.usage.output_tokens for _, u in pairs),
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert all(k.startswith("data/") for k in keys)
    assert any(k.startswith("data/logs/year=") and k.endswith(".parquet") for k in keys)
    assert any(k.startswith("data/_segments/") for k in keys)

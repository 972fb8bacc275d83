"""Every service — producers, consumers, the topic admin and the Faust worker — talking to
Kafka over TLS with a client certificate. Tansu has no TLS listener, so a TLS-terminating
proxy (which also demands a client certificate from a CA the test generates) sits in front of
it, and Tansu advertises the proxy's port."""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.appsync_client import dev_token
from tests.pki import CertificateAuthority, Issued
from tests.tcpproxy import TcpProxy
from tollgate_core import db
from tollgate_core.bus.admin import ensure_topics
from tollgate_core.settings import KafkaSettings
from tollgate_dev.platform import TansuBroker, free_port, stop_process
from tollgate_dev.pytest_plugin import DatabaseFactory
from tollgate_dev.stack import (
    SCHEMA_OWNERS,
    SERVICES,
    Stack,
    bin_path,
    dev_auth_env,
    migrations_dir,
    service_env,
)

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class TlsKafka:
    bootstrap: str  #: the TLS listener
    ca: Path
    client: Issued
    wrong_ca: Path

    def env(self, ca: Path | None = None) -> dict[str, str]:
        return {
            "KAFKA_SECURITY_PROTOCOL": "SSL",
            "KAFKA_SSL_CAFILE": str(ca or self.ca),
            "KAFKA_SSL_CERTFILE": str(self.client.cert),
            "KAFKA_SSL_KEYFILE": str(self.client.key),
        }

    def settings(self) -> KafkaSettings:
        return KafkaSettings(
            bootstrap_servers=self.bootstrap,
            security_protocol="SSL",
            ssl_cafile=self.ca,
            ssl_certfile=self.client.cert,
            ssl_keyfile=self.client.key,
        )


@pytest.fixture(scope="module")
def tls_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsKafka]:
    directory = Path(tmp_path_factory.mktemp("kafka-tls"))
    ca = CertificateAuthority(directory / "ca")
    wrong = CertificateAuthority(directory / "wrong", name="somebody-else-ca")
    server = ca.issue("kafka", server=True)
    client = ca.issue("tollgate-client", server=False)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca.cert))
    tls.load_cert_chain(server.cert, server.key)
    tls.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: no client certificate, no Kafka
    proxy_port = free_port()
    with (
        TansuBroker(advertised_port=proxy_port, log_path=directory / "tansu.log") as broker,
        TcpProxy(broker.port, port=proxy_port, tls=tls),
    ):
        yield TlsKafka(f"127.0.0.1:{proxy_port}", ca.cert, client, wrong.cert)


async def test_a_request_flows_end_to_end_over_tls(
    tls_kafka: TlsKafka, database_factory: DatabaseFactory, tmp_path: Path
) -> None:
    assert await ensure_topics(tls_kafka.settings())  # the admin client, over TLS
    database = await database_factory()
    url = database.database_url.get_secret_value()
    for package in SCHEMA_OWNERS:
        await db.migrate(database, migrations_dir(package))
    stack = Stack(
        bootstrap_servers=tls_kafka.bootstrap,
        database_url=url,
        log_dir=tmp_path / "logs",
        ports={service: free_port() for service in SERVICES},
        extra_env={
            **tls_kafka.env(),
            **dev_auth_env(Path(__file__).parents[1]),
            "TOLLGATE_LOCAL_MODEL_TIME_TO_FIRST_TOKEN_MS": "20",
            "TOLLGATE_LOCAL_MODEL_OUTPUT_TOKENS": "5",
            "TOLLGATE_ANALYTICS_DATA_DIR": str(tmp_path / "dataset"),
            "TOLLGATE_ANALYTICS_STATE_DIR": str(tmp_path / "state"),
        },
    )
    try:
        stack.start(timeout=120)  # analytics is ready only once Faust has its partitions
        token = await dev_token(stack.url("auth"), "tls-user")
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.post(
                f"{stack.url('stream')}/v1/chat/completions",
                headers={"Authorization": f"Bearer {token}"},
                json={"model": "tollgate-local", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert response.status_code == 200, response.text
            assert response.json()["usage"]["completion_tokens"] == 5
            # the request's completion record reached the Faust worker over TLS too
            async with asyncio.timeout(30):
                while True:
                    metrics = (await client.get(f"{stack.url('analytics')}/metrics")).text
                    if re.search(r"^tollgate_analytics_requests_total\{.*\} 1\.0", metrics, re.M):
                        break
                    await asyncio.sleep(0.2)
    except BaseException:
        for service in SERVICES:
            print(f"--- {service} ---\n{stack.logs(service)[-3000:]}")  # noqa: T201
        raise
    finally:
        stack.stop()


def test_a_wrong_ca_ends_start_up_with_a_clear_message(tls_kafka: TlsKafka, tmp_path: Path) -> None:
    env = {
        **service_env(
            {**os.environ, **tls_kafka.env(ca=tls_kafka.wrong_ca)},
            bootstrap_servers=tls_kafka.bootstrap,
            database_url="postgresql://unused@127.0.0.1:1/unused",
            ports={},
        ),
        "TOLLGATE_STREAM_PORT": str(free_port()),
        "TOLLGATE_ANALYTICS_PORT": str(free_port()),
        "TOLLGATE_ANALYTICS_STATE_DIR": str(tmp_path / "state"),
    }
    processes = {
        service: subprocess.Popen(
            [bin_path(f"tollgate-{service}")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        for service in ("stream", "analytics")
    }
    try:
        deadline = time.monotonic() + 60
        for service, process in processes.items():
            output, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            text = output.decode(errors="replace")
            assert process.returncode != 0, f"{service} did not fail:\n{text[-2000:]}"
            assert f"the certificate of {tls_kafka.bootstrap} does not verify" in text, text[-3000:]
            assert str(tls_kafka.wrong_ca) in text
    finally:
        for process in processes.values():
            stop_process(process)

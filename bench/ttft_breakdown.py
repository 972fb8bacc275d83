"""Where the time to first token goes, hop by hop, from the services' own spans.

``gateway_load.py --trace`` points every service's OTLP exporter at a receiver started here
(127.0.0.1 only) and, after the runs, lines up each OpenAI-API request's spans with what the
client saw: when it sent the request and when its first token arrived. All the processes
share one clock, so every stage is a difference of two timestamps of one request; the table
gives each stage's median over the run. Exporting spans costs CPU, so a traced run is a run
of its own, not one whose CPU figures are reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from oteltap import OtelTapHttpProtobufReceiver, OtelTapHttpProtobufReceiverSettings

from bench.stats import percentile

#: OTLP span kinds (opentelemetry.proto.trace.v1.Span.SpanKind)
_CLIENT = 3

#: the spans a request's stages start and end at, in the order of its path
_PATH_SPANS = (
    "POST /v1/chat/completions",
    "tollgate.requests publish",
    "tollgate.requests process",
    "tollgate.admitted publish",
    "tollgate.admitted process",
)

#: (stage, what it covers): each stage ends where the next begins
STAGES: tuple[tuple[str, str], ...] = (
    ("client to edge", "the client's request until the edge's handler starts"),
    ("edge", "API key, validation, the ChatRequest built, until its publish starts"),
    ("produce request", "publishing to tollgate.requests (acks=all)"),
    ("hop to meter", "until the meter's consumer hands the record over (fetch wait)"),
    ("meter admission", "the admission: its read and write in Postgres, until the publish starts"),
    ("produce admission", "publishing to tollgate.admitted (acks=all)"),
    ("hop to router", "until the router's consumer hands the record over (fetch wait)"),
    ("router before model", "decode, journal claim, model chosen, until the model call"),
    ("model to first chunk", "the model's first token read, the journal's streaming mark"),
    ("first chunk to client", "produce, hop to the edge, the edge's SSE write, the client"),
)


class Timed(Protocol):
    """What a traced request needs from the client's sample."""

    ok: bool
    request_id: str
    started_at: float
    ttft: float


@dataclass
class _Span:
    name: str
    kind: int
    start: int
    end: int
    attributes: dict[str, Any]
    events: list[tuple[str, int, dict[str, Any]]]


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def _attributes(items: Any) -> dict[str, Any]:
    return {a.key: _value(a.value) for a in items}


class SpanCollector:
    """An OTLP/HTTP receiver keeping every span, grouped by trace."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._receiver = OtelTapHttpProtobufReceiver(
            OtelTapHttpProtobufReceiverSettings(http_port=port)
        )
        self._traces: dict[bytes, list[_Span]] = defaultdict(list)
        #: request id -> trace id, from the spans naming the request
        self._by_request: dict[str, bytes] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        await self._receiver.start()
        self._task = asyncio.create_task(self._collect())

    async def stop(self) -> None:
        await self._receiver.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _collect(self) -> None:
        async for span in self._receiver.stream_traces():
            kept = _Span(
                span.name,
                span.kind,
                span.start_time_unix_nano,
                span.end_time_unix_nano,
                _attributes(span.attributes),
                [(e.name, e.time_unix_nano, _attributes(e.attributes)) for e in span.events],
            )
            self._traces[span.trace_id].append(kept)
            request_id = kept.attributes.get("tollgate.request_id")
            if request_id:
                self._by_request[request_id] = span.trace_id

    async def wait_for(self, samples: Sequence[Timed], timeout_s: float = 20.0) -> None:
        """Until every answered request's trace is complete (its spans arrive in batches,
        the request's own span last, after its settled mark)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while not all(self._stages(s) for s in samples if s.ok):
                    await asyncio.sleep(0.2)

    def _stages(self, sample: Timed) -> list[float] | None:
        trace = self._traces.get(self._by_request.get(sample.request_id, b""), [])
        return stages_of(trace, sample) if trace else None

    def breakdown(self, samples: Sequence[Timed]) -> list[list[float]]:
        """Each stage's durations (ms) over the requests whose trace is complete."""
        rows = [r for s in samples if s.ok and (r := self._stages(s)) is not None]
        return [list(column) for column in zip(*rows, strict=True)] if rows else []


def stages_of(trace: list[_Span], sample: Timed) -> list[float] | None:
    """The request's stage boundaries (ns) turned into durations (ms), or None while its
    trace is incomplete."""
    first: dict[tuple[str, int], _Span] = {}
    for span in sorted(trace, key=lambda s: s.start):
        first.setdefault((span.name, span.kind), span)
    named = {name: span for (name, _), span in first.items()}
    client = next((s for (_, kind), s in first.items() if kind == _CLIENT), None)
    chunk = next(
        (
            t
            for s in trace
            for name, t, attrs in s.events
            if name == "tollgate.replies publish" and attrs.get("tollgate.seq") == 0
        ),
        None,
    )
    if client is None or chunk is None or any(n not in named for n in _PATH_SPANS):
        return None
    edge, request, meter, admitted, router = (named[n] for n in _PATH_SPANS)
    started = int(sample.started_at * 1e9)
    marks = [started, edge.start, request.start, request.end, meter.start]
    marks += [admitted.start, admitted.end, router.start, client.start, chunk]
    marks.append(started + int(sample.ttft * 1e9))
    return [(b - a) / 1e6 for a, b in itertools.pairwise(marks)]


def markdown(
    columns: list[list[float]], load: str, ttft_ms: float, direct_ttft_ms: float | None
) -> str:
    """The breakdown as a table: each stage's median and p90, and their sum."""
    if not columns:
        return "No complete trace was collected.\n"
    n = len(columns[0])
    lines = [
        f"Time to first token, stage by stage (OpenAI API, one principal, {load}, {n} requests"
        f" traced; client TTFT p50 {ttft_ms:.1f} ms"
        + (f", the upstream's own {direct_ttft_ms:.1f} ms" if direct_ttft_ms is not None else "")
        + "):",
        "",
        "| stage | what | p50 ms | p90 ms |",
        "|---|---|---:|---:|",
    ]
    for (stage, what), values in zip(STAGES, columns, strict=True):
        p50, p90 = statistics.median(values), percentile(values, 0.9)
        lines.append(f"| {stage} | {what} | {p50:.2f} | {p90:.2f} |")
    total = sum(statistics.median(v) for v in columns)
    lines += [f"| sum of the medians | | {total:.2f} | |", ""]
    return "\n".join(lines)

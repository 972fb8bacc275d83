"""The AWS sample's client contract at the edge: tokenUsage and warnings, the usage API
through the edge, CORS, and the web page's own routes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from starlette.applications import Starlette

from tollgate_core import topics
from tollgate_core.bus import Delivered, InMemoryPublisher
from tollgate_core.contracts import ReplyDoneV1, Usage
from tollgate_core.health import Health
from tollgate_dev.platform import free_port
from tollgate_stream.app import create_app
from tollgate_stream.appsync.channels import parse_channel
from tollgate_stream.gateway import Gateway
from tollgate_stream.identity import ChannelOwnerAuthorizer
from tollgate_stream.replies import ReplyDispatcher
from tollgate_stream.settings import StreamSettings
from tollgate_stream.subscriptions import Subscriptions
from tollgate_stream.usage import MeterClient, UsageRoutes, token_usage
from tollgate_stream.web import WebRoutes


def window(name: str, kind: str, seconds: int | None, limit: dict[str, Any], used: dict[str, int]):
    return {
        "name": name,
        "kind": kind,
        "seconds": seconds,
        "limit": {"input": None, "output": None, "total": None, "requests": None, **limit},
        "used": {"input": 0, "output": 0, "total": 0, "requests": 0, **used},
        "reserved": {"input": 0, "output": 0, "total": 0},
        "remaining": {d: (v - used.get(d, 0) if v else None) for d, v in limit.items()},
        "resets_at": "2026-12-04T10:00:00+00:00",
    }


REPORT = {
    "principal": "alice",
    "tier": "standard",
    "settled": True,
    "windows": [
        window("rolling-10m", "trailing", 600, {"input": 100, "output": 100}, {"output": 85}),
        window("daily", "trailing", 86_400, {"input": 1000, "output": 2000}, {"input": 40}),
        window("monthly", "calendar-month", None, {"input": 10_000}, {"input": 40, "output": 85}),
    ],
    "month_by_model": [],
}


def warnings_counted(window_name: str, threshold: str) -> float:
    value = REGISTRY.get_sample_value(
        "tollgate_stream_usage_warnings_total", {"window": window_name, "threshold": threshold}
    )
    return value or 0.0


def test_token_usage_speaks_the_samples_names_and_counts_the_answer_once() -> None:
    before = warnings_counted("rolling-10m", "0.8")
    usage = token_usage(REPORT, Usage(input_tokens=10, output_tokens=20), (0.8, 0.95))
    assert usage["currentUsage"] == {"inputTokens": 10, "outputTokens": 20, "totalTokens": 30}
    assert usage["totalUsage"] == {
        "inputTokens": 40,
        "outputTokens": 85,
        "dailyInputTokens": 40,
        "dailyOutputTokens": 0,
        "monthlyInputTokens": 40,
        "monthlyOutputTokens": 85,
    }
    assert usage["meterLimits"] == {"rolling-10m": 100, "daily": 1000, "monthly": 10_000}
    assert usage["tokenLimit"] == 2000
    ten = usage["windows"][0]
    assert ten["used"]["outputTokens"] == 85 and ten["remaining"]["outputTokens"] == 15
    assert ten["resetsAt"] == "2026-12-04T10:00:00+00:00"
    # 65 → 85 of 100 output tokens crosses 80 %, not 95 %
    [warning] = usage["warnings"]
    assert warning["window"] == "rolling-10m" and warning["dimension"] == "outputTokens"
    assert warning["threshold"] == 0.8 and warning["fraction"] == 0.85
    assert warnings_counted("rolling-10m", "0.8") == before + 1


def test_an_unsettled_answer_is_added_to_what_was_used() -> None:
    report = {**REPORT, "settled": False}
    usage = token_usage(report, Usage(input_tokens=10, output_tokens=20), ())
    assert usage["settled"] is False and usage["warnings"] == []
    assert usage["windows"][0]["used"]["outputTokens"] == 105


def test_a_window_already_past_a_threshold_does_not_warn_again() -> None:
    usage = token_usage(REPORT, Usage(input_tokens=1, output_tokens=1), (0.8,))
    assert usage["warnings"] == []


class Sink:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def deliver(self, channel: Any, event: str) -> int:
        self.events.append(json.loads(event))
        return 1


class Annotator:
    def __init__(self, fail: bool) -> None:
        self.fail = fail

    async def annotate(self, reply: ReplyDoneV1, event: dict[str, Any]) -> None:
        if not self.fail:
            event["tokenUsage"] = {"currentUsage": {"outputTokens": reply.usage.output_tokens}}


@pytest.mark.parametrize("fail", [False, True])
async def test_the_metadata_event_comes_last_with_or_without_usage(fail: bool) -> None:
    sink = Sink()
    dispatcher = ReplyDispatcher(sink, usage=Annotator(fail))
    done = ReplyDoneV1(
        request_id="r1",
        principal="alice",
        seq=0,
        channel="/Outbound-Messages/alice",
        usage=Usage(input_tokens=3, output_tokens=12),
    )
    await dispatcher(Delivered(done, topics.REPLIES, 0, 0, "alice"))
    await dispatcher.drain()
    assert [next(iter(e)) for e in sink.events] == ["messageStop", "metadata"]
    assert ("tokenUsage" in sink.events[1]) is not fail


def app(settings: StreamSettings, meter_url: str) -> Starlette:
    meter = MeterClient(meter_url, admin_token=None, timeout_s=1)
    gateway = Gateway(settings, InMemoryPublisher(), ChannelOwnerAuthorizer(), reply_partitions=[0])
    routes = [*UsageRoutes(meter).routes(), *WebRoutes(settings, None).routes()]
    return create_app(settings, Health(), gateway, Subscriptions(), extra_routes=routes)


async def call(application: Starlette, method: str, path: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
        return await client.request(method, path, **kwargs)


async def test_usage_through_the_edge_needs_a_credential_and_says_when_the_meter_is_down() -> None:
    edge = app(StreamSettings(), f"http://127.0.0.1:{free_port()}")  # nothing listens there
    missing = await call(edge, "GET", "/v1/usage/me")
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "unauthorized"
    down = await call(edge, "GET", "/v1/usage/me", headers={"authorization": "Bearer t"})
    assert down.status_code == 503 and down.json()["error"]["type"] == "service_unavailable"
    admin = await call(edge, "GET", "/v1/admin/usage", headers={"x-api-key": "k"})
    assert admin.status_code == 503


async def test_cors_answers_only_the_configured_origins_on_the_client_routes() -> None:
    preflight = {
        "origin": "https://chat.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
    }
    closed = app(StreamSettings(), "http://127.0.0.1:1")
    answer = await call(closed, "OPTIONS", "/event", headers=preflight)
    assert "access-control-allow-origin" not in answer.headers
    edge = app(
        StreamSettings(cors_origins="https://chat.example, http://localhost:5173"),
        "http://127.0.0.1:1",
    )
    for path in ("/event", "/v1/chat/completions", "/v1/usage/me"):
        answer = await call(edge, "OPTIONS", path, headers=preflight)
        assert answer.status_code == 200, path
        assert answer.headers["access-control-allow-origin"] == "https://chat.example"
        assert "authorization" in answer.headers["access-control-allow-headers"].lower()
    other = await call(edge, "OPTIONS", "/event", headers={**preflight, "origin": "https://evil"})
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    published = await call(
        edge,
        "POST",
        "/event",
        headers={"origin": "http://localhost:5173"},
        json={"channel": "/Inbound-Messages/alice", "events": ["{}"]},
    )
    assert published.headers["access-control-allow-origin"] == "http://localhost:5173"
    health = await call(edge, "GET", "/healthz", headers={"origin": "https://chat.example"})
    assert "access-control-allow-origin" not in health.headers


async def test_the_page_and_its_configuration() -> None:
    edge = app(StreamSettings(web_sign_in="local"), "http://127.0.0.1:1")
    page = await call(edge, "GET", "/")
    assert page.status_code == 200 and 'role="log"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert (await call(edge, "GET", "/web/app.js")).status_code == 200
    config = (await call(edge, "GET", "/web/config.json")).json()
    assert config == {
        "signIn": "local",
        "inboundNamespace": "Inbound-Messages",
        "outboundNamespace": "Outbound-Messages",
    }
    for body in ({"user": "a/b"}, {"user": "ok", "groups": ["bad group"]}, {"nope": 1}):
        refused = await call(edge, "POST", "/web/dev-token", json=body)
        assert refused.status_code == 400 and refused.json()["error"]["type"] == "validation_error"
    # no auth service to ask (auth mode none): a clear answer, not a crash
    assert (await call(edge, "POST", "/web/dev-token", json={"user": "ok"})).status_code == 404
    token_mode = app(StreamSettings(), "http://127.0.0.1:1")
    assert (await call(token_mode, "POST", "/web/dev-token", json={"user": "ok"})).status_code in (
        404,
        405,
    )


def test_oidc_sign_in_needs_its_endpoints() -> None:
    with pytest.raises(ValueError, match="oidc"):
        StreamSettings(web_sign_in="oidc", oidc_client_id="web")
    with pytest.raises(ValueError, match="usage_warning_thresholds"):
        StreamSettings(usage_warning_thresholds="0.8,1.5")
    settings = StreamSettings(
        web_sign_in="oidc",
        oidc_authorize_url="https://id.example/oauth2/authorize",
        oidc_token_url="https://id.example/oauth2/token",
        oidc_client_id="web",
    )
    assert settings.warning_thresholds() == (0.8, 0.95)
    assert parse_channel("/Outbound-Messages/alice/*", allow_wildcard=True).wildcard


class Held:
    """An annotator whose meter answers only when released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def annotate(self, reply: ReplyDoneV1, event: dict[str, Any]) -> None:
        await self.release.wait()
        event["tokenUsage"] = {}


async def test_past_the_pending_bound_answers_go_out_without_waiting_for_usage() -> None:
    sink, held = Sink(), Held()
    dispatcher = ReplyDispatcher(sink, usage=held, max_annotating=1)
    for n in range(2):
        done = ReplyDoneV1(
            request_id=f"r{n}",
            principal="alice",
            seq=0,
            channel="/Outbound-Messages/alice",
            usage=Usage(input_tokens=1, output_tokens=1),
        )
        await dispatcher(Delivered(done, topics.REPLIES, 0, n, "alice"))
    # the second answer's metadata did not wait behind the first one's meter call
    assert [("metadata" in e, "tokenUsage" in e) for e in sink.events] == [
        (False, False),
        (False, False),
        (True, False),
    ]
    held.release.set()
    await dispatcher.drain()
    assert "tokenUsage" in sink.events[-1] and sink.events[-1]["requestId"] == "r0"

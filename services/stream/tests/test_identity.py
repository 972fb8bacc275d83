"""The edge's client of the auth service: decisions, their cache, and error mapping."""

from __future__ import annotations

import json

import httpx
import pytest

from tollgate_stream.appsync.channels import parse_channel
from tollgate_stream.errors import AppSyncError
from tollgate_stream.identity import AuthServiceAuthorizer, Identity

ALLOW = {"principal": "alice", "groups": ["premium"], "models": ["m1"], "expires_at": None}


class FakeAuth:
    def __init__(self, status: int = 200, body: object = ALLOW) -> None:
        self.status = status
        self.body = body
        self.requests: list[dict[str, object]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(json.loads(request.content))
        if self.status == 0:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(self.status, json=self.body)


def authorizer(fake: FakeAuth, ttl_s: float = 60) -> AuthServiceAuthorizer:
    client = httpx.AsyncClient(transport=httpx.MockTransport(fake), base_url="http://auth")
    return AuthServiceAuthorizer(
        client,
        inbound_namespace="Inbound-Messages",
        outbound_namespace="Outbound-Messages",
        ttl_s=ttl_s,
    )


async def test_an_allowed_publish_carries_groups_and_models() -> None:
    fake = FakeAuth()
    identity = await authorizer(fake).for_channel(
        parse_channel("/Inbound-Messages/alice", allow_wildcard=False),
        {"authorization": "tok", "host": "h", "x-amz-date": "d"},
    )
    assert identity == Identity("alice", ("premium",), frozenset({"m1"}))
    assert identity.allows("m1") and identity.allows(None) and not identity.allows("m2")
    assert fake.requests == [
        {
            "headers": {"authorization": "tok"},
            "operation": "publish",
            "channel": "/Inbound-Messages/alice",
            "model": None,
        }
    ]


async def test_subscribe_is_asked_as_subscribe() -> None:
    fake = FakeAuth()
    await authorizer(fake).for_channel(
        parse_channel("/Outbound-Messages/alice/*", allow_wildcard=True), {"authorization": "t"}
    )
    assert fake.requests[0]["operation"] == "subscribe"


async def test_decisions_are_cached_per_credential_and_channel() -> None:
    fake = FakeAuth()
    auth = authorizer(fake)
    channel = parse_channel("/Inbound-Messages/alice", allow_wildcard=False)
    for _ in range(3):
        await auth.for_channel(channel, {"authorization": "t1", "x-amz-date": "changes"})
    await auth.for_channel(channel, {"authorization": "t2"})
    assert len(fake.requests) == 2


async def test_a_zero_ttl_asks_every_time() -> None:
    fake = FakeAuth()
    auth = authorizer(fake, ttl_s=0)
    channel = parse_channel("/Inbound-Messages/alice", allow_wildcard=False)
    await auth.for_channel(channel, {"authorization": "t"})
    await auth.for_channel(channel, {"authorization": "t"})
    assert len(fake.requests) == 2


@pytest.mark.parametrize(
    ("status", "error_type", "code"),
    [
        (401, "UnauthorizedException", 401),
        (403, "Unauthorized", 403),
        (400, "BadRequestException", 400),
        (500, "ServiceUnavailableException", 503),
        (0, "ServiceUnavailableException", 503),
    ],
)
async def test_denials_map_to_appsync_errors(status: int, error_type: str, code: int) -> None:
    fake = FakeAuth(status, {"error": {"type": "x", "message": "because"}})
    auth = authorizer(fake)
    channel = parse_channel("/Inbound-Messages/alice", allow_wildcard=False)
    for _ in range(2):
        with pytest.raises(AppSyncError) as caught:
            await auth.for_channel(channel, {"authorization": "t"})
        assert (caught.value.appsync_type, caught.value.http_status) == (error_type, code)
    # denials are cached like allows; an unreachable auth service is asked again
    assert len(fake.requests) == (2 if code == 503 else 1)


async def test_an_unreadable_allow_is_unavailable_not_an_allow() -> None:
    auth = authorizer(FakeAuth(200, {"groups": []}))
    with pytest.raises(AppSyncError) as caught:
        await auth.authenticate({"authorization": "t"})
    assert caught.value.http_status == 503


async def test_a_namespace_with_no_operation_is_forbidden() -> None:
    fake = FakeAuth()
    with pytest.raises(AppSyncError) as caught:
        await authorizer(fake).for_channel(
            parse_channel("/Other/alice", allow_wildcard=False), {"authorization": "t"}
        )
    assert caught.value.http_status == 403 and fake.requests == []

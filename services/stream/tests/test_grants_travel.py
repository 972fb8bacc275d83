"""The auth policy's decision travels with the request: the models it grants (the router
keeps fallbacks within them) and the tier it names (the meter's limits)."""

from __future__ import annotations

import json

from tollgate_core import topics
from tollgate_core.bus import InMemoryPublisher
from tollgate_core.contracts import ChatRequestV1
from tollgate_stream.appsync.channels import Channel
from tollgate_stream.gateway import Gateway
from tollgate_stream.identity import Identity
from tollgate_stream.settings import StreamSettings


class Granting:
    async def for_channel(self, channel: Channel, headers: dict[str, str]) -> Identity:
        return Identity("alice", ("research",), frozenset({"m2", "m1"}), tier="premium")

    async def connect(self, headers: dict[str, str]) -> None:
        return None


async def test_the_policy_grants_and_tier_reach_the_request() -> None:
    publisher = InMemoryPublisher()
    gateway = Gateway(StreamSettings(), publisher, Granting(), reply_partitions=[0])
    chat = {"messages": [{"role": "user", "content": [{"text": "hi"}]}], "modelId": "m1"}
    result = await gateway.publish("/Inbound-Messages/alice", [json.dumps(chat)], {})
    assert result.failed == []
    [request] = publisher.on(topics.REQUESTS)
    assert isinstance(request, ChatRequestV1)
    assert request.allowed_models == ("m1", "m2")
    assert request.tier == "premium"

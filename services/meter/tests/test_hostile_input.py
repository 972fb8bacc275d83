"""Client input the database cannot store is a bad request, never a Postgres outage: it is
refused as ``validation_error``, changes no state, keeps the meter ready, and is never
admitted without a reservation (even with fail-open)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tollgate_core import topics
from tollgate_core.bus import Delivered, InMemoryPublisher
from tollgate_core.bus.codec import encode
from tollgate_core.contracts import (
    ChatMessage,
    ChatRequestV1,
    ReplyErrorV1,
    ReplyTo,
    TextBlock,
    Usage,
    UsageRecordV1,
)
from tollgate_core.errors import RequestError
from tollgate_core.health import Health
from tollgate_core.limits import Limits
from tollgate_meter.adapters.postgres import PostgresLedger
from tollgate_meter.batching import AdmissionBatcher
from tollgate_meter.handlers import AdmissionHandler, SettlementHandler

from .conftest import Inspect

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def request(principal: str = "mallory", *, model: str | None = None, max_tokens: int | None = 10):
    event = ChatRequestV1(
        principal=principal,
        model=model,
        max_tokens=max_tokens,
        messages=(ChatMessage(role="user", content=(TextBlock(text="hello"),)),),
        reply_to=ReplyTo(topic=topics.REPLIES, partition=3),
    )
    return Delivered(event=event, topic=topics.REQUESTS, partition=0, offset=0, key=principal)


HOSTILE = [
    pytest.param({"max_tokens": 2**31}, "max_tokens", id="max_tokens-2^31"),
    pytest.param({"max_tokens": 10**30}, "max_tokens", id="max_tokens-huge"),
    pytest.param({"model": "bad\x00model"}, "model", id="nul-in-model"),
    pytest.param({"principal": "mal\x00lory"}, "principal", id="nul-in-principal"),
]


@pytest.mark.parametrize("fail_open", [False, True], ids=["fail-closed", "fail-open"])
@pytest.mark.parametrize(("fields", "field"), HOSTILE)
async def test_hostile_request_is_refused_as_a_bad_request(
    ledger: PostgresLedger,
    inspect: Inspect,
    fields: dict[str, object],
    field: str,
    fail_open: bool,
) -> None:
    publisher, health = InMemoryPublisher(), Health()
    health.register("postgres")
    health.ok("postgres")
    admit = AdmissionHandler(
        AdmissionBatcher(ledger, lambda: NOW),
        publisher,
        health,
        default_max_tokens=100,
        fail_open=fail_open,
    )
    await admit(request(**fields))  # type: ignore[arg-type]
    assert publisher.on(topics.ADMITTED) == []  # never admitted, not even failing open
    [refusal] = publisher.on(topics.REPLIES)
    assert isinstance(refusal, ReplyErrorV1)
    assert refusal.error.type == "validation_error"
    assert field in refusal.error.message
    assert not refusal.error.retriable
    assert health.ready  # a bad request is not an outage
    assert await inspect.rows("SELECT count(*) FROM meter.reservations") == [(0,)]
    assert await inspect.rows("SELECT count(*) FROM meter.buckets") == [(0,)]


async def test_the_ledger_calls_data_postgres_refuses_a_bad_request(
    ledger: PostgresLedger,
) -> None:
    """Defence behind the domain check: a data error from Postgres is a RequestError."""
    usage = UsageRecordV1(
        request_id="r-nul",
        principal="eve",
        model="m\x00",
        provider="local",
        usage=Usage(input_tokens=1, output_tokens=1),
    )
    with pytest.raises(RequestError):
        await ledger.settle(usage, NOW)
    huge = UsageRecordV1(
        request_id="r-huge",
        principal="eve",
        model="m",
        provider="local",
        usage=Usage(input_tokens=2**40, output_tokens=1),
        cost_usd=Decimal(0),
    )
    with pytest.raises(RequestError):
        await ledger.settle(huge, NOW)


async def test_a_bad_usage_record_is_not_retried_forever(ledger: PostgresLedger) -> None:
    settle = SettlementHandler(ledger, lambda: NOW)
    usage = UsageRecordV1(
        request_id="r-1",
        principal="eve",
        model="m\x00",
        provider="local",
        usage=Usage(input_tokens=1, output_tokens=1),
    )
    with pytest.raises(RequestError) as caught:  # not retriable: the consumer dead-letters it
        await settle(Delivered(event=usage, topic=topics.USAGE, partition=0, offset=0, key="eve"))
    assert not caught.value.retriable


async def test_a_request_whose_admission_would_not_fit_a_record_is_refused(
    ledger: PostgresLedger, inspect: Inspect
) -> None:
    """It fits the request topic, but the admission carrying it would not fit the admitted
    topic: refused before the ledger, instead of a publish retried for ever."""
    limits = Limits(max_record_bytes=20_000)
    delivered = request()

    def with_text(text: str) -> ChatRequestV1:
        return delivered.event.model_copy(
            update={"messages": (ChatMessage(role="user", content=(TextBlock(text=text),)),)}
        )

    room = limits.max_record_bytes - len(encode(with_text("")))
    event = with_text("x" * (room - 50))  # the request fits a record; its admission does not
    assert len(encode(event)) <= limits.max_record_bytes
    publisher = InMemoryPublisher()
    admit = AdmissionHandler(
        AdmissionBatcher(ledger, lambda: NOW),
        publisher,
        Health(),
        default_max_tokens=100,
        fail_open=False,
        limits=limits,
    )
    await admit(Delivered(event=event, topic=topics.REQUESTS, partition=0, offset=0, key="m"))
    assert publisher.on(topics.ADMITTED) == []
    [refusal] = publisher.on(topics.REPLIES)
    assert isinstance(refusal, ReplyErrorV1) and refusal.error.type == "validation_error"
    assert "messages" in refusal.error.message
    assert await inspect.rows("SELECT count(*) FROM meter.reservations") == [(0,)]


async def test_the_auth_policys_tier_chooses_the_limits(ledger: PostgresLedger) -> None:
    """A caller in no meter group but whose auth policy names the premium tier gets it."""
    publisher = InMemoryPublisher()
    admit = AdmissionHandler(
        AdmissionBatcher(ledger, lambda: NOW),
        publisher,
        Health(),
        default_max_tokens=100,
        fail_open=False,
    )
    delivered = request("pat", max_tokens=5_000)  # over standard's 1,000, within premium's
    event = delivered.event.model_copy(update={"tier": "premium"})
    await admit(Delivered(event=event, topic=topics.REQUESTS, partition=0, offset=0, key="pat"))
    assert len(publisher.on(topics.ADMITTED)) == 1
    unknown = request("quinn", max_tokens=5_000).event.model_copy(update={"tier": "gold"})
    await admit(Delivered(event=unknown, topic=topics.REQUESTS, partition=0, offset=0, key="q"))
    [refusal] = publisher.on(topics.REPLIES)
    assert isinstance(refusal, ReplyErrorV1) and refusal.error.type == "token_limit_exceeded"


async def test_a_group_named_like_a_tier_does_not_choose_one(ledger: PostgresLedger) -> None:
    """The policy's tier is a field of its own: an identity provider group called
    ``tier:premium`` (which an IdP's administrator, not Tollgate's, names) is just a group."""
    publisher = InMemoryPublisher()
    admit = AdmissionHandler(
        AdmissionBatcher(ledger, lambda: NOW),
        publisher,
        Health(),
        default_max_tokens=100,
        fail_open=False,
    )
    delivered = request("rex", max_tokens=5_000)  # over standard's 1,000, within premium's
    event = delivered.event.model_copy(update={"groups": ("tier:premium",)})
    await admit(Delivered(event=event, topic=topics.REQUESTS, partition=0, offset=0, key="rex"))
    assert publisher.on(topics.ADMITTED) == []
    [refusal] = publisher.on(topics.REPLIES)
    assert isinstance(refusal, ReplyErrorV1) and refusal.error.type == "token_limit_exceeded"
    assert refusal.error.details["tier"] == "standard"

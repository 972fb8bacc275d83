from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import REGISTRY

from tollgate_core import topics
from tollgate_core.bus import Delivered, InMemoryPublisher
from tollgate_core.contracts import (
    AdmissionV1,
    ChatMessage,
    ChatRequestV1,
    ReplyChunkV1,
    ReplyDoneV1,
    ReplyErrorV1,
    ReplyTo,
    RequestLogV1,
    TextBlock,
    UsageRecordV1,
    utcnow,
)
from tollgate_core.errors import DependencyUnavailable
from tollgate_router.catalog import Catalog, CatalogSource, LocalProviderConfig, ModelSpec
from tollgate_router.errors import ProviderUnavailable, RequestInProgress
from tollgate_router.handlers import TERMINAL_SEQ, GenerationHandler
from tollgate_router.journal import InMemoryJournal
from tollgate_router.prepared import InMemoryPreparedStore, PreparedResponse, prepared_key
from tollgate_router.providers.local import LocalProvider
from tollgate_router.resilience import ResilientRouter, RetryPolicy, Timeouts
from tollgate_router.streaming import Coalescing
from tollgate_router.testing import ScriptedProvider, Step

CATALOG = Catalog(
    default_model="tollgate-local",
    providers={"local": LocalProviderConfig(), "cloud": LocalProviderConfig()},
    models=(
        ModelSpec(id="tollgate-local", provider="local"),
        ModelSpec(
            id="priced",
            provider="cloud",
            input_price_per_mtok=Decimal(3),
            output_price_per_mtok=Decimal(15),
            fallbacks=("tollgate-local",),
        ),
        ModelSpec(id="vip", provider="cloud", groups=("vip",)),
        ModelSpec(id="open", provider="cloud", fallbacks=("vip", "tollgate-local")),
    ),
)


def message(text: str, role: str = "user") -> ChatMessage:
    return ChatMessage(role=role, content=[TextBlock(text=text)])  # type: ignore[arg-type]


def admission(
    model: str | None = None,
    *,
    principal: str = "alice",
    messages: tuple[ChatMessage, ...] = (message("hello"),),
    request_id: str | None = None,
    groups: tuple[str, ...] = (),
    allowed_models: tuple[str, ...] | None = None,
    max_tokens: int | None = None,
    reserved_output: int = 10,
) -> Delivered[AdmissionV1]:
    request = ChatRequestV1(
        principal=principal,
        groups=groups,
        allowed_models=allowed_models,
        max_tokens=max_tokens,
        model=model,
        messages=messages,
        reply_to=ReplyTo(topic=topics.REPLIES, partition=4),
        channel=f"/Outbound-Messages/{principal}",
        conversation_id="c",
        **({"request_id": request_id} if request_id else {}),
    )
    event = AdmissionV1(
        request=request, reserved_input_tokens=1, reserved_output_tokens=reserved_output
    )
    return Delivered(event=event, topic=topics.ADMITTED, partition=0, offset=0, key=principal)


async def _no_sleep(_: float) -> None:
    return None


class Rig:
    def __init__(
        self,
        cloud: ScriptedProvider | None = None,
        *,
        coalescing: Coalescing | None = None,
        prepared: InMemoryPreparedStore | None = None,
    ) -> None:
        self.publisher = InMemoryPublisher()
        self.journal = InMemoryJournal()
        self.cloud = cloud or ScriptedProvider("cloud")
        self.local = LocalProvider(
            time_to_first_token_ms=0, tokens_per_second=10_000, output_tokens=3
        )
        providers = {"local": self.local, "cloud": self.cloud}
        self.handler = GenerationHandler(
            CatalogSource(CATALOG),
            providers.__getitem__,
            self.publisher,
            journal=self.journal,
            prepared=prepared,
            router=ResilientRouter(
                providers.__getitem__,
                retry=RetryPolicy(max_retries=1),
                timeouts=Timeouts(),
                sleep=_no_sleep,
            ),
            coalescing=coalescing or Coalescing(delay_s=0, max_chars=1),
        )

    def replies(self) -> list[object]:
        return self.publisher.on(topics.REPLIES)

    def one_usage(self) -> UsageRecordV1:
        [usage] = self.publisher.on(topics.USAGE)
        assert isinstance(usage, UsageRecordV1)
        return usage

    def one_log(self) -> RequestLogV1:
        [log] = self.publisher.on(topics.LOGS)
        assert isinstance(log, RequestLogV1)
        return log


async def test_streams_chunks_then_done_to_the_reply_partition_and_reports_usage() -> None:
    rig = Rig()
    delivered = admission()
    await rig.handler(delivered)
    replies = [p for p in rig.publisher.events if p.topic == topics.REPLIES]
    assert {p.partition for p in replies} == {4}
    kinds = [type(p.event) for p in replies]
    assert kinds == [ReplyChunkV1, ReplyChunkV1, ReplyChunkV1, ReplyDoneV1]
    assert [p.event.seq for p in replies] == [0, 1, 2, 3]  # type: ignore[attr-defined]
    done = replies[-1].event
    assert isinstance(done, ReplyDoneV1) and done.usage.output_tokens == 3
    assert done.channel == "/Outbound-Messages/alice" and done.conversation_id == "c"
    assert rig.one_usage().usage == done.usage
    log = rig.one_log()
    assert log.status == "ok" and log.output_tokens == 3 and log.time_to_first_token_ms is not None
    assert log.request_id == delivered.event.request_id and log.model == "tollgate-local"
    assert rig.journal.rows[log.request_id][0] == "settled"


async def test_cost_comes_from_the_catalog_prices() -> None:
    rig = Rig(ScriptedProvider("cloud", [Step(chunks=("x",) * 4, input_tokens=1000)]))
    await rig.handler(admission("priced"))
    # 1000 x $3/M + 4 x $15/M
    assert rig.one_usage().cost_usd == Decimal("0.00306")
    assert rig.one_log().cost_usd == Decimal("0.00306")


async def test_the_first_token_goes_out_alone_and_later_ones_are_coalesced() -> None:
    cloud = ScriptedProvider("cloud", [Step(chunks=tuple(f"t{i} " for i in range(10)))])
    rig = Rig(cloud, coalescing=Coalescing(delay_s=60, max_chars=12))
    await rig.handler(admission("priced"))
    chunks = [r.text for r in rig.replies() if isinstance(r, ReplyChunkV1)]
    assert chunks[0] == "t0 "
    assert "".join(chunks) == "".join(f"t{i} " for i in range(10))
    assert all(len(c) >= 12 for c in chunks[1:-1]) and len(chunks) == 4


async def test_unknown_model_ends_with_a_typed_error_and_a_zero_usage_record() -> None:
    rig = Rig()
    await rig.handler(admission(model="no-such-model"))
    [reply] = rig.replies()
    assert isinstance(reply, ReplyErrorV1) and reply.error.type == "model_not_found"
    assert rig.one_usage().usage.total_tokens == 0
    assert rig.one_log().error_type == "model_not_found"


async def test_a_model_outside_the_callers_groups_is_refused() -> None:
    rig = Rig()
    await rig.handler(admission("vip", groups=("staff",)))
    [reply] = rig.replies()
    assert isinstance(reply, ReplyErrorV1) and reply.error.type == "model_not_allowed"
    assert rig.cloud.calls == []
    allowed = Rig()
    await allowed.handler(admission("vip", groups=("vip",)))
    done = allowed.replies()[-1]
    assert isinstance(done, ReplyDoneV1) and done.model == "vip"
    assert [c.model for c in allowed.cloud.calls] == ["vip"]


async def test_a_fallback_outside_the_callers_groups_is_skipped() -> None:
    down = ProviderUnavailable("down")
    # "open" fails on both tries; "vip" would answer next, "tollgate-local" after it
    outsider = Rig(ScriptedProvider("cloud", [Step(error=down), Step(error=down), Step()]))
    await outsider.handler(admission("open", groups=("staff",)))
    done = outsider.replies()[-1]
    assert isinstance(done, ReplyDoneV1) and done.model == "tollgate-local"
    assert [c.model for c in outsider.cloud.calls] == ["open", "open"]
    assert outsider.one_log().fallback_used

    member = Rig(ScriptedProvider("cloud", [Step(error=down), Step(error=down), Step()]))
    await member.handler(admission("open", groups=("vip",)))
    done = member.replies()[-1]
    assert isinstance(done, ReplyDoneV1) and done.model == "vip"
    assert [c.model for c in member.cloud.calls] == ["open", "open", "vip"]


async def test_a_fallback_outside_the_auth_policys_grants_is_skipped() -> None:
    """The catalog lets the caller's groups use "vip", but the auth policy does not grant
    it: flooding "open" into failure must not serve, or bill, "vip"."""
    down = ProviderUnavailable("down")
    rig = Rig(ScriptedProvider("cloud", [Step(error=down), Step(error=down), Step()]))
    await rig.handler(admission("open", groups=("vip",), allowed_models=("open",)))
    assert [c.model for c in rig.cloud.calls] == ["open", "open"]
    assert all(r.model != "vip" for r in rig.replies())
    assert rig.one_usage().model != "vip"

    granted = Rig(ScriptedProvider("cloud", [Step(error=down), Step(error=down), Step()]))
    await granted.handler(admission("open", groups=("vip",), allowed_models=("*",)))
    assert [c.model for c in granted.cloud.calls] == ["open", "open", "vip"]


async def test_a_failure_after_the_first_token_ends_with_an_error_and_settles_what_was_sent() -> (
    None
):
    cloud = ScriptedProvider("cloud", [Step(error=ProviderUnavailable("cut"), fail_after=2)])
    rig = Rig(cloud)
    await rig.handler(admission("priced"))
    replies = rig.replies()
    assert [type(r) for r in replies] == [ReplyChunkV1, ReplyChunkV1, ReplyErrorV1]
    error = replies[-1]
    assert isinstance(error, ReplyErrorV1) and error.seq == 2
    assert error.error.type == "provider_unavailable"
    usage = rig.one_usage()
    assert (
        usage.status == "error" and usage.usage.output_tokens == 2 and usage.usage.input_tokens > 0
    )
    log = rig.one_log()
    assert log.status == "error" and log.error_type == "provider_unavailable"
    assert not log.fallback_used


async def test_retries_and_fallback_are_recorded_and_the_fallback_model_is_billed() -> None:
    cloud = ScriptedProvider("cloud", [Step(error=ProviderUnavailable("down"))])
    rig = Rig(cloud)
    await rig.handler(admission("priced"))
    log = rig.one_log()
    assert log.status == "ok" and log.fallback_used and log.retries == 1
    assert log.model == "tollgate-local" and log.provider == "local" and log.cost_usd == 0
    done = rig.replies()[-1]
    assert isinstance(done, ReplyDoneV1) and done.model == "tollgate-local"


# -- redelivery ------------------------------------------------------------------------------


async def test_a_redelivered_finished_request_publishes_nothing_again() -> None:
    rig = Rig()
    delivered = admission()
    await rig.handler(delivered)
    before = len(rig.publisher.events)
    await rig.handler(delivered)
    assert len(rig.publisher.events) == before
    rig.one_usage()


async def test_a_request_whose_router_died_mid_stream_is_ended_and_settled_once() -> None:
    rig = Rig()
    delivered = admission("priced", request_id="r-killed")
    # what a router killed after its first token leaves behind: a lease it no longer renews
    await rig.journal.claim("r-killed", "alice", owner="dead", lease_s=0)
    await rig.journal.streaming("r-killed")
    await rig.handler(delivered)
    await rig.handler(delivered)
    assert rig.cloud.calls == []
    [reply] = rig.replies()
    assert isinstance(reply, ReplyErrorV1) and reply.error.type == "stream_interrupted"
    assert reply.seq == TERMINAL_SEQ
    assert rig.one_usage().status == "error"
    assert rig.one_log().error_type == "stream_interrupted"


async def test_a_request_that_died_while_settling_republishes_the_same_records() -> None:
    first = Rig()
    delivered = admission(request_id="r-settling")
    await first.handler(delivered)
    records = first.journal.rows["r-settling"][2]
    assert records is not None
    second = Rig()
    second.journal.rows["r-settling"] = ("settling", 1, records)
    await second.handler(delivered)
    # the terminal reply goes again (same seq; the client may never have had it)
    assert second.replies() == [first.replies()[-1]]
    assert second.one_usage() == first.one_usage()
    assert second.one_log() == first.one_log()


async def test_a_request_still_streaming_elsewhere_is_neither_served_nor_interrupted() -> None:
    # a rebalance hands the partition to a second router while the first still streams
    journal = InMemoryJournal()
    slow = ScriptedProvider("cloud", [Step(chunks=("a", " b", " c"), gap_s=0.2)])
    first, second = Rig(slow), Rig()
    first.journal = second.journal = journal
    first.handler._journal = second.handler._journal = journal
    delivered = admission("priced", request_id="r-moved")
    streaming = asyncio.create_task(first.handler(delivered))
    async with asyncio.timeout(10):
        while journal.rows.get("r-moved", ("started",))[0] != "streaming":
            await asyncio.sleep(0.01)
    with pytest.raises(RequestInProgress) as raised:
        await second.handler(delivered)
    assert raised.value.retriable  # the consumer tries again later
    assert second.publisher.events == [] and second.cloud.calls == []
    await streaming
    await second.handler(delivered)  # by then the first has settled: nothing to do
    assert second.publisher.events == []
    assert isinstance(first.replies()[-1], ReplyDoneV1) and first.one_usage().status == "ok"


async def test_a_request_that_died_before_its_first_token_is_served_again() -> None:
    rig = Rig()
    await rig.journal.claim("r-early", "alice", owner="dead", lease_s=0)
    await rig.handler(admission(request_id="r-early"))
    assert isinstance(rig.replies()[-1], ReplyDoneV1)
    assert rig.one_usage().status == "ok"


# -- prepared responses ----------------------------------------------------------------------


def prepared(
    messages: tuple[ChatMessage, ...],
    *,
    principal: str | None = None,
    model: str = "*",
    ttl: timedelta = timedelta(hours=1),
    response: str = "We open at nine and close at five.",
) -> PreparedResponse:
    now = utcnow()
    return PreparedResponse(
        id=f"p-{principal}-{model}-{len(messages)}-{response[:5]}",
        key=prepared_key((), messages),
        model_scope=model,
        principal=principal,
        response=response,
        expires_at=now + ttl,
        created_at=now,
    )


async def test_a_prepared_answer_streams_like_a_model_at_no_provider_cost() -> None:
    store = InMemoryPreparedStore()
    convo = (message("  What are   your hours? "),)
    await store.add(prepared((message("What are your hours?"),)))
    rig = Rig(prepared=store)
    await rig.handler(admission("priced", messages=convo))
    replies = rig.replies()
    assert isinstance(replies[-1], ReplyDoneV1) and replies[-1].usage.total_tokens == 0
    text = "".join(r.text for r in replies if isinstance(r, ReplyChunkV1))
    assert text == "We open at nine and close at five."
    assert rig.cloud.calls == []
    log = rig.one_log()
    assert log.cache_hit and log.provider == "cache" and log.cost_usd == 0
    assert rig.one_usage().usage.total_tokens == 0


async def test_a_personal_prepared_answer_is_never_served_to_another_principal() -> None:
    store = InMemoryPreparedStore()
    convo = (message("what is my balance?"),)
    await store.add(prepared(convo, principal="alice", response="Alice, you have $5."))
    bob = Rig(prepared=store)
    await bob.handler(admission("priced", principal="bob", messages=convo))
    assert not bob.one_log().cache_hit and len(bob.cloud.calls) == 1
    alice = Rig(prepared=store)
    await alice.handler(admission("priced", principal="alice", messages=convo))
    assert alice.one_log().cache_hit


async def test_the_whole_conversation_is_the_key_not_just_the_last_message() -> None:
    store = InMemoryPreparedStore()
    await store.add(prepared((message("what about tomorrow?"),)))
    other = (
        message("is the shop open today?"),
        message("yes", "assistant"),
        message("what about tomorrow?"),
    )
    rig = Rig(prepared=store)
    await rig.handler(admission("priced", messages=other))
    assert not rig.one_log().cache_hit


async def test_an_expired_or_other_model_prepared_answer_is_not_served() -> None:
    store = InMemoryPreparedStore()
    convo = (message("hours?"),)
    await store.add(prepared(convo, ttl=timedelta(seconds=-1)))
    await store.add(prepared(convo, model="tollgate-local", response="local only"))
    rig = Rig(prepared=store)
    await rig.handler(admission("priced", messages=convo))
    assert not rig.one_log().cache_hit
    assert await store.purge_expired(utcnow()) == 1


class DiesOnTheDoneReply(InMemoryPublisher):
    """A router that is killed as it sends the done reply (Kafka gone, SIGKILL…)."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = True

    async def publish(
        self, topic: str, event: object, *, key: str | None = None, partition: int | None = None
    ) -> None:
        if self.armed and isinstance(event, ReplyDoneV1):
            self.armed = False
            raise DependencyUnavailable("killed")
        await super().publish(topic, event, key=key, partition=partition)  # type: ignore[arg-type]


async def test_a_crash_at_the_done_reply_is_settled_with_the_real_usage_on_redelivery() -> None:
    rig = Rig()
    rig.publisher = DiesOnTheDoneReply()
    rig.handler._publisher = rig.publisher
    delivered = admission("priced")
    with pytest.raises(DependencyUnavailable):
        await rig.handler(delivered)
    assert rig.publisher.on(topics.USAGE) == []
    await rig.handler(delivered)  # redelivered: the journal says settling
    done = rig.replies()[-1]
    assert isinstance(done, ReplyDoneV1) and done.usage.output_tokens == 3
    usage = rig.one_usage()
    assert usage.status == "ok" and usage.usage == done.usage and usage.cost_usd > 0
    assert not any(isinstance(r, ReplyErrorV1) for r in rig.replies())
    assert rig.journal.rows[delivered.event.request_id][0] == "settled"


@pytest.mark.parametrize(
    ("max_tokens", "reserved", "sent"),
    [
        (None, 7, 7),  # the catalog's default (1024) would outgrow the reservation
        (5000, 300, 300),  # the request's own limit likewise
        (100, 300, 100),  # the request's limit when it is smaller
        (None, 100_000, 1024),  # the catalog's default when the reservation is larger
        (50_000, 100_000, 4096),  # never past the model's maximum
    ],
)
async def test_the_model_is_never_asked_for_more_than_the_meter_reserved(
    max_tokens: int | None, reserved: int, sent: int
) -> None:
    rig = Rig()
    await rig.handler(admission("priced", max_tokens=max_tokens, reserved_output=reserved))
    [call] = rig.cloud.calls
    assert call.max_tokens == sent


async def test_an_admission_older_than_its_reservation_can_last_is_not_run() -> None:
    """The sweeper may already have given its reservation back: running it now could take
    the caller past a limit. It is answered request_expired and settled at zero."""
    rig = Rig()
    handler = GenerationHandler(
        CatalogSource(CATALOG),
        {"local": rig.local, "cloud": rig.cloud}.__getitem__,
        rig.publisher,
        admission_max_age_s=600,
        clock=lambda: utcnow() + timedelta(seconds=601),
    )
    await handler(admission("priced"))
    assert rig.cloud.calls == []
    [reply] = rig.replies()
    assert isinstance(reply, ReplyErrorV1) and reply.error.type == "request_expired"
    assert reply.error.retriable
    assert rig.one_usage().usage.total_tokens == 0

    fresh = Rig()
    await GenerationHandler(
        CatalogSource(CATALOG),
        {"local": fresh.local, "cloud": fresh.cloud}.__getitem__,
        fresh.publisher,
        admission_max_age_s=600,
        clock=lambda: utcnow() + timedelta(seconds=500),
    )(admission("priced"))
    assert len(fresh.cloud.calls) == 1


@pytest.mark.parametrize(("left_s", "runs"), [(299, False), (301, True)])
async def test_an_admission_whose_reservation_runs_out_before_an_answer_could_end_is_not_run(
    left_s: int, runs: bool
) -> None:
    """The meter says when it may release the reservation at the earliest; an answer started
    now may last the router's total timeout (300 s): with less time left it is answered
    request_expired and settled at zero, as a stale admission is."""
    rig = Rig()
    now = utcnow()
    delivered = admission("priced")
    expiring = delivered.event.model_copy(
        update={"reservation_expires_at": now + timedelta(seconds=left_s)}
    )
    await GenerationHandler(
        CatalogSource(CATALOG),
        {"local": rig.local, "cloud": rig.cloud}.__getitem__,
        rig.publisher,
        admission_max_age_s=600,
        longest_answer_s=300,
        clock=lambda: now,
    )(replace(delivered, event=expiring))
    assert len(rig.cloud.calls) == (1 if runs else 0)
    if not runs:
        [reply] = rig.replies()
        assert isinstance(reply, ReplyErrorV1) and reply.error.type == "request_expired"
        assert rig.one_usage().usage.total_tokens == 0


async def test_the_genai_semantic_convention_metrics_are_reported_beside_ours() -> None:
    def sample(name: str, **labels: str) -> float:
        base = {"gen_ai_operation_name": "chat", "gen_ai_system": "tollgate.local"}
        value = REGISTRY.get_sample_value(name, {**base, **labels})
        return value or 0.0

    model = {"gen_ai_request_model": "tollgate-local"}
    before_output = sample("gen_ai_client_token_usage_sum", **model, gen_ai_token_type="output")
    before_ttft = sample("gen_ai_server_time_to_first_token_seconds_count", **model)
    before_calls = sample("gen_ai_client_operation_duration_seconds_count", **model, error_type="")
    rig = Rig()
    await rig.handler(admission())
    after_output = sample("gen_ai_client_token_usage_sum", **model, gen_ai_token_type="output")
    assert after_output - before_output == 3
    assert sample("gen_ai_server_time_to_first_token_seconds_count", **model) == before_ttft + 1
    assert (
        sample("gen_ai_client_operation_duration_seconds_count", **model, error_type="")
        == before_calls + 1
    )


async def test_each_provider_attempt_is_a_client_span_inside_the_requests_span(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    monkeypatch.setattr("tollgate_router.handlers.tracer", tracer)
    monkeypatch.setattr("tollgate_router.resilience.tracer", tracer)
    down = ProviderUnavailable("down")
    rig = Rig(ScriptedProvider("cloud", [Step(error=down), Step(chunks=("a", "b"))]))
    await rig.handler(admission("open"))
    spans = {s.name: s for s in exporter.get_finished_spans()}
    request = spans["chat open"]
    attempts = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert len(attempts) == 2
    for attempt in attempts:
        assert attempt.parent is not None
        assert attempt.parent.span_id == request.context.span_id
        assert attempt.attributes is not None
        assert attempt.attributes["gen_ai.operation.name"] == "chat"
        assert attempt.attributes["gen_ai.system"] == "tollgate.cloud"
    failed, served = attempts
    assert failed.status.status_code == StatusCode.ERROR
    assert served.attributes is not None and served.attributes["gen_ai.usage.output_tokens"] > 0
    assert request.attributes is not None
    assert (
        request.attributes["gen_ai.usage.output_tokens"]
        == (served.attributes["gen_ai.usage.output_tokens"])
    )

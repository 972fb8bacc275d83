"""A source offset is committed only when the aggregates' changelog writes made before it are
stored: Faust's producer buffer on its own gives up flushing after 0.1 s without a message
sent. The app, its producer and the producer's buffer are Faust's own (the buffer started as
the worker starts it); the consumer is a stand-in that records the commit, and each buffered
write takes longer to send than that 0.1 s, as it can on a busy machine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from faust.types import TP
from faust.types.tuples import FutureMessage, PendingMessage

from tollgate_analytics import source as source_module
from tollgate_analytics.settings import AnalyticsSettings
from tollgate_analytics.source import Source, create_faust_app

SEND_S = 0.15  # longer than the 0.1 s Faust's buffer flush waits for a message to go


class SlowWrite:
    """A changelog write whose sending takes ``SEND_S`` (or forever); notes when it went."""

    def __init__(self, events: list[Any], name: str, *, hang: bool = False) -> None:
        self._events, self._name, self._hang = events, name, hang

    async def publish_message(self, fut: FutureMessage, wait: bool = False) -> FutureMessage:
        await asyncio.sleep(3600 if self._hang else SEND_S)
        self._events.append(self._name)
        return fut


def write(channel: SlowWrite) -> FutureMessage:
    return FutureMessage(
        PendingMessage(channel, None, None, None, None, None, None, None, None)  # type: ignore[arg-type]
    )


class Consumer:
    def __init__(self, events: list[Any], topic: str) -> None:
        self._events, self._topic = events, topic

    def assignment(self) -> set[TP]:
        return {TP(self._topic, 0)}

    async def _commit(self, offsets: dict[TP, int]) -> bool:
        self._events.append(("commit", offsets))
        return True


@pytest.fixture
async def job(tmp_path: Path) -> AsyncIterator[tuple[Source, list[Any], Any]]:
    settings = AnalyticsSettings(state_dir=str(tmp_path / "state"))
    app = create_faust_app(settings, partitions=2)
    source = Source(app, settings)
    events: list[Any] = []
    app.consumer = Consumer(events, settings.logs_topic)  # type: ignore[assignment]
    buffer = app.producer.buffer
    await buffer.start()
    try:
        yield source, events, buffer
    finally:
        while not buffer.pending.empty():  # what a stuck write left behind is not to be sent
            buffer.pending.get_nowait()
        await buffer.stop()


async def test_the_commit_waits_for_every_changelog_write_before_it(
    job: tuple[Source, list[Any], Any],
) -> None:
    source, events, buffer = job
    for name in ("a", "b", "c"):
        buffer.put(write(SlowWrite(events, name)))
    await buffer.flush()  # Faust's own flush: back after 0.1 s with writes still waiting
    assert buffer.size > 0 and events == []
    await source.commit(source.logs.get_topic_name(), 0, 7)
    assert events == ["a", "b", "c", ("commit", {TP(source.logs.get_topic_name(), 0): 7})]


async def test_no_commit_while_the_changelog_writes_are_stuck(
    job: tuple[Source, list[Any], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    source, events, buffer = job
    monkeypatch.setattr(source_module, "FLUSH_TIMEOUT_S", 0.3)
    buffer.put(write(SlowWrite(events, "stuck", hang=True)))
    await source.commit(source.logs.get_topic_name(), 0, 7)
    assert events == []  # not committed: a later segment's commit covers it

"""Starting a dependency: retried with backoff while it is missing, never for a bad setting."""

from __future__ import annotations

import asyncio

import pytest

from tollgate_core.errors import ConfigurationError, DependencyUnavailable
from tollgate_core.health import Health
from tollgate_core.runtime import start_with_retry


async def test_a_missing_dependency_is_retried_and_reported_until_it_starts() -> None:
    health = Health()
    health.register("kafka")
    reasons: list[object] = []
    attempts = 0

    async def start() -> None:
        nonlocal attempts
        attempts += 1
        reasons.append(health.report()["kafka"])
        if attempts < 3:
            raise DependencyUnavailable("Kafka unreachable: no broker")

    started = await start_with_retry("kafka", start, health, asyncio.Event(), initial_delay=0.01)
    assert started and attempts == 3 and health.ready
    assert "Kafka unreachable" in str(reasons[-1])


async def test_a_configuration_error_is_not_retried() -> None:
    health = Health()
    health.register("kafka")
    attempts = 0

    async def start() -> None:
        nonlocal attempts
        attempts += 1
        raise ConfigurationError("replica 3 owns none of 2 partitions")

    with pytest.raises(ConfigurationError, match="owns none"):
        await start_with_retry("kafka", start, health, asyncio.Event(), initial_delay=0.01)
    assert attempts == 1


async def test_stop_ends_the_wait() -> None:
    stop = asyncio.Event()

    async def start() -> None:
        stop.set()
        raise DependencyUnavailable("down")

    assert await start_with_retry("kafka", start, Health(), stop, initial_delay=10) is False

"""Process lifecycle: run a service's main coroutine until SIGTERM/SIGINT, then stop it
gracefully; retry a dependency's start with backoff while reporting not-ready."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable

from tollgate_core import telemetry
from tollgate_core.errors import ConfigurationError
from tollgate_core.health import Health
from tollgate_core.http import metrics_server
from tollgate_core.retry import Backoff
from tollgate_core.settings import TelemetrySettings

logger = logging.getLogger(__name__)


def run_service(
    service: str,
    telemetry_settings: TelemetrySettings,
    main: Callable[[asyncio.Event], Awaitable[None]],
) -> None:
    """A service's whole process: logging and tracing set up, ``/metrics`` served on a port
    of its own when one is configured, ``main`` run until SIGTERM or SIGINT, traces flushed
    on the way out."""
    tel = telemetry.setup(telemetry_settings, service)

    async def main_and_metrics(stop: asyncio.Event) -> None:
        metrics = metrics_server(telemetry_settings)
        if metrics is not None:
            await metrics.start()
        try:
            await main(stop)
        finally:
            if metrics is not None:
                await metrics.stop()

    try:
        run(main_and_metrics)
    finally:
        tel.shutdown()


def run(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)`` in a fresh event loop; SIGTERM or SIGINT sets ``stop``."""

    async def _runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _on_signal, stop, sig)
        await main(stop)

    asyncio.run(_runner())


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    if stop.is_set():
        logger.warning("second %s: already stopping", sig.name)
        return
    logger.info("received %s, stopping", sig.name)
    stop.set()


async def start_with_retry(
    name: str,
    start: Callable[[], Awaitable[None]],
    health: Health,
    stop: asyncio.Event,
    *,
    initial_delay: float = 0.5,
    max_delay: float = 15.0,
) -> bool:
    """Call ``start`` until it succeeds or ``stop`` is set, with jittered exponential backoff.

    While it fails, readiness check ``name`` is not ready and says why. Returns whether the
    dependency started. A :class:`ConfigurationError` is not retried: waiting cannot fix a
    setting, so it ends the process with its message.
    """
    backoff = Backoff(initial_delay, max_delay, jitter=True)
    while not stop.is_set():
        try:
            await start()
        except ConfigurationError:
            raise
        except Exception as exc:  # noqa: BLE001 - any start failure is retried and reported
            reason = f"{type(exc).__name__}: {exc}"
            health.fail(name, reason)
            logger.warning(
                "cannot start %s (attempt %d): %s; retrying in about %.1fs",
                name,
                backoff.failures + 1,
                reason,
                backoff.delay,
            )
            await backoff.wait(stop)
        else:
            health.ok(name)
            return True
    return False


async def watch_dependency(
    name: str,
    check: Callable[[], Awaitable[None]],
    health: Health,
    stop: asyncio.Event,
    *,
    interval_s: float = 5.0,
) -> None:
    """After start-up, run ``check`` every ``interval_s`` until ``stop``: a failure makes
    readiness check ``name`` not ready with the reason, the next success makes it ready
    again. A dependency that comes back needs nothing else: the clients reconnect by
    themselves, this only tells the load balancer in the meantime."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
        if stop.is_set():
            return
        try:
            await check()
        except Exception as exc:  # noqa: BLE001 - any failure means not ready, and why
            health.fail(name, f"{type(exc).__name__}: {exc}")  # logged when it changes
        else:
            health.ok(name)


class BackgroundLoop:
    """A component whose :meth:`_run` runs as a task between :meth:`start` and :meth:`stop`
    (a refresh or a sweep every so often)."""

    task_name = "background"
    _task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self.task_name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

"""Liveness and readiness, reported on ``/healthz`` and ``/readyz``."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import Gauge

logger = logging.getLogger(__name__)

READY = Gauge("tollgate_dependency_ready", "1 when a dependency is usable", ["dependency"])


@dataclass
class _Check:
    ready: bool
    reason: str


class Health:
    """Named readiness checks that components flip as their dependencies come and go.

    A process is ready when every registered check is ready. Registering a check as not
    ready at construction time keeps ``/readyz`` at 503 until the component says otherwise.
    """

    def __init__(self) -> None:
        self._checks: dict[str, _Check] = {}
        self.live = True

    def register(self, name: str, reason: str = "starting") -> None:
        self._checks[name] = _Check(False, reason)
        READY.labels(name).set(0)

    def ok(self, name: str) -> None:
        previous = self._checks.get(name)
        if previous is None or not previous.ready:
            logger.info("%s is ready", name)
        self._checks[name] = _Check(True, "ok")
        READY.labels(name).set(1)

    def fail(self, name: str, reason: str) -> None:
        previous = self._checks.get(name)
        if previous is None or previous.ready or previous.reason != reason:
            logger.warning("%s is not ready: %s", name, reason)
        self._checks[name] = _Check(False, reason)
        READY.labels(name).set(0)

    @property
    def ready(self) -> bool:
        return all(c.ready for c in self._checks.values())

    def report(self) -> dict[str, dict[str, object]]:
        return {name: {"ready": c.ready, "reason": c.reason} for name, c in self._checks.items()}

    def liveness(self) -> tuple[dict[str, object], int]:
        """The ``/healthz`` answer: its JSON body and HTTP status."""
        return {"status": "ok" if self.live else "dead"}, 200 if self.live else 503

    def readiness(self) -> tuple[dict[str, object], int]:
        """The ``/readyz`` answer: its JSON body and HTTP status."""
        ready = self.ready
        return {"ready": ready, "checks": self.report()}, 200 if ready else 503

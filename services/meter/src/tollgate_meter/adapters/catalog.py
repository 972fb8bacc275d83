"""The router's model catalog as the meter needs it: how much output each model may write.

The router caps every answer at the catalog's ``max_max_tokens`` and gives a request without
``max_tokens`` the catalog's ``default_max_tokens`` (and never more than was reserved). So
that the reservation is what the router will allow — no larger, which would refuse requests
that fit, and no smaller, which would cut answers — the meter reads those two numbers from
the router's ``GET /v1/models`` every ``refresh_s`` (sooner until it first answers). While
the router cannot be reached the last answer is kept; before any answer, the meter reserves
``max_tokens`` or its own ``default_max_tokens`` as it always did. A catalog change reaches
the meter within ``refresh_s``; until then the router still caps the answer at the
reservation.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from tollgate_core.retry import Backoff
from tollgate_core.runtime import BackgroundLoop
from tollgate_meter.domain import OutputLimit

logger = logging.getLogger(__name__)


def parse_models(body: Any) -> tuple[dict[str, OutputLimit], str | None]:
    """Each model's output limit and the default model, from a ``/v1/models`` body; entries
    without usable limits are left out."""
    data = body.get("data") if isinstance(body, dict) else None
    limits: dict[str, OutputLimit] = {}
    default: str | None = None
    for entry in data if isinstance(data, list) else ():
        tokens = entry.get("max_tokens") if isinstance(entry, dict) else None
        if not isinstance(tokens, dict) or not isinstance(entry.get("id"), str):
            continue
        first, most = tokens.get("default"), tokens.get("max")
        if isinstance(first, int) and isinstance(most, int) and first > 0 and most > 0:
            limits[entry["id"]] = OutputLimit(first, most)
            if entry.get("default") is True:
                default = entry["id"]
    return limits, default


class RouterCatalog(BackgroundLoop):
    """Output limits by model, refreshed from the router in the background."""

    task_name = "router-catalog"

    def __init__(self, client: httpx.AsyncClient, router_url: str, *, refresh_s: float) -> None:
        self._client = client
        self._url = router_url.rstrip("/") + "/v1/models"
        self._refresh_s = refresh_s
        self._limits: dict[str, OutputLimit] = {}
        self._default: str | None = None

    def output_limit(self, model: str | None) -> OutputLimit | None:
        """The limit of ``model`` (the catalog's default model when None); None when the
        catalog has not been read or does not know the model (the router then refuses it)."""
        return self._limits.get(model or self._default or "")

    async def refresh(self) -> bool:
        """Read the catalog once; False (and the last answer kept) when that failed."""
        try:
            response = await self._client.get(self._url)
            response.raise_for_status()
            limits, default = parse_models(response.json())
        except (httpx.HTTPError, ValueError) as exc:
            logger.warning("router catalog unavailable (%s); keeping the last one", exc)
            return False
        self._limits, self._default = limits, default
        return True

    async def _run(self) -> None:
        """Every ``refresh_s``; until the first answer, sooner (from half a second, doubling),
        since the router may start after the meter."""
        backoff = Backoff(0.5, self._refresh_s)
        while True:
            if await self.refresh() or self._limits:
                await asyncio.sleep(self._refresh_s)
            else:
                await asyncio.sleep(backoff.next_delay())

"""The caller's usage and limits, from the meter, as the edge's clients see them.

- ``GET /v1/usage/me`` (the caller's windows) and the admin views ``GET /v1/admin/usage`` and
  ``GET /v1/usage/{principal}`` are answered through the edge with the caller's own
  credential, which the meter checks with the auth service: the meter stays internal and a
  browser page needs one origin.
- :func:`token_usage` turns the meter's report into the ``tokenUsage`` object the AWS sample
  puts on an answer's ``metadata`` event, with the soft-limit warnings the answer crossed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tollgate_core.contracts import ReplyDoneV1, Usage
from tollgate_core.errors import DependencyUnavailable
from tollgate_stream.appsync.auth_headers import CREDENTIAL_HEADERS

logger = logging.getLogger(__name__)

USAGE_WARNINGS = Counter(
    "tollgate_stream_usage_warnings_total",
    "usage_warning events: answers that took a window past a warning threshold",
    ["window", "threshold"],
)

#: the meter's names of a window's dimensions → the AWS sample's
_FIELDS = {
    "input": "inputTokens",
    "output": "outputTokens",
    "total": "totalTokens",
    "requests": "requests",
}
_TOKEN_DIMENSIONS = ("input", "output", "total")


class MeterClient:
    """The meter's HTTP API, from the edge."""

    def __init__(
        self,
        meter_url: str,
        *,
        admin_token: str | None,
        timeout_s: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = httpx.AsyncClient(
            base_url=meter_url.rstrip("/"), timeout=timeout_s, transport=transport
        )
        self._admin_token = admin_token
        self._timeout_s = timeout_s

    @property
    def reports_usage(self) -> bool:
        """Whether answers can carry ``tokenUsage`` (the edge holds the meter's admin token)."""
        return self._admin_token is not None

    async def get(self, path: str, headers: dict[str, str], params: dict[str, str]) -> Response:
        """Forward a GET to the meter; an unreachable meter is a 503, never the caller's
        fault."""
        try:
            answer = await self._client.get(path, headers=headers, params=params)
        except httpx.HTTPError as exc:
            logger.warning("meter unavailable: %s", exc)
            return unavailable("the usage service is unavailable")
        if answer.status_code >= 500 or "json" not in answer.headers.get("content-type", ""):
            return unavailable("the usage service is unavailable")
        return Response(answer.content, answer.status_code, media_type="application/json")

    async def settled_report(
        self, principal: str, groups: tuple[str, ...], request_id: str
    ) -> dict[str, Any]:
        """The principal's windows once ``request_id`` is settled (or the wait ran out)."""
        if self._admin_token is None:
            raise DependencyUnavailable("the edge has no meter admin token")
        wait_s = max(0.0, min(5.0, self._timeout_s - 0.5))
        try:
            answer = await self._client.get(
                f"/v1/usage/{quote(principal, safe='')}",
                params={"groups": ",".join(groups), "settled": request_id, "wait_s": str(wait_s)},
                headers={"authorization": f"Bearer {self._admin_token}"},
            )
            answer.raise_for_status()
            report: dict[str, Any] = answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise DependencyUnavailable(f"the meter did not report usage: {exc}") from exc
        return report

    async def aclose(self) -> None:
        await self._client.aclose()


class MeterUsageAnnotator:
    """Puts ``tokenUsage`` on an answer's ``metadata`` event: the principal's windows once the
    meter has settled the answer. ``groups_of`` names the groups this edge last saw the
    principal with (they decide the tier). When the meter cannot say, the event goes out
    without ``tokenUsage``."""

    def __init__(
        self,
        meter: MeterClient,
        groups_of: Callable[[str], tuple[str, ...]],
        thresholds: tuple[float, ...],
    ) -> None:
        self._meter = meter
        self._groups_of = groups_of
        self._thresholds = thresholds

    async def annotate(self, reply: ReplyDoneV1, event: dict[str, Any]) -> None:
        groups = self._groups_of(reply.principal)
        try:
            report = await self._meter.settled_report(reply.principal, groups, reply.request_id)
        except DependencyUnavailable as exc:
            logger.warning("answer %s goes without tokenUsage: %s", reply.request_id, exc)
            return
        event["tokenUsage"] = token_usage(report, reply.usage, self._thresholds)


def unavailable(message: str) -> Response:
    return JSONResponse({"error": {"type": "service_unavailable", "message": message}}, 503)


class UsageRoutes:
    """The meter's client-facing routes, answered through the edge."""

    def __init__(self, meter: MeterClient) -> None:
        self._meter = meter

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/usage/me", self._forward, methods=["GET"]),
            Route("/v1/usage/{principal}", self._forward, methods=["GET"]),
            Route("/v1/admin/usage", self._forward, methods=["GET"]),
        ]

    async def _forward(self, request: Request) -> Response:
        credentials = {
            k: v
            for k, v in ((k.lower(), v) for k, v in request.headers.items())
            if k in CREDENTIAL_HEADERS
        }
        if not credentials:
            return JSONResponse(
                {
                    "error": {
                        "type": "unauthorized",
                        "message": "send a token in Authorization or an API key in x-api-key",
                    }
                },
                401,
            )
        params = dict(request.query_params)
        params.pop("settled", None)  # the settlement wait is the edge's own
        return await self._meter.get(request.url.path, credentials, params)


def token_usage(
    report: dict[str, Any], usage: Usage, thresholds: tuple[float, ...]
) -> dict[str, Any]:
    """The AWS sample's ``tokenUsage``, from the meter's report of the principal's windows
    after this answer: ``currentUsage`` (the answer's own tokens), ``totalUsage`` (daily and
    monthly input/output, as the sample names them), ``meterLimits`` (each window's input
    limit) and ``tokenLimit``; and Tollgate's ``windows`` (limit, used and remaining per
    window) and ``warnings``. Should the meter not yet have settled the answer, its tokens
    are added to what the report says was used."""
    settled = bool(report.get("settled", True))
    own = {"input": usage.input_tokens, "output": usage.output_tokens}
    own["total"] = own["input"] + own["output"]
    windows = [_window(w, own, settled) for w in report.get("windows", [])]
    daily = _pick(windows, daily=True)
    monthly = _pick(windows, daily=False)
    return {
        "tier": report.get("tier"),
        "settled": settled,
        "currentUsage": {_FIELDS[d]: own[d] for d in _TOKEN_DIMENSIONS},
        "totalUsage": {
            "inputTokens": max((w["used"]["inputTokens"] for w in windows), default=0),
            "outputTokens": max((w["used"]["outputTokens"] for w in windows), default=0),
            "dailyInputTokens": daily["used"]["inputTokens"] if daily else 0,
            "dailyOutputTokens": daily["used"]["outputTokens"] if daily else 0,
            "monthlyInputTokens": monthly["used"]["inputTokens"] if monthly else 0,
            "monthlyOutputTokens": monthly["used"]["outputTokens"] if monthly else 0,
        },
        "meterLimits": {w["name"]: w["limit"]["inputTokens"] for w in windows},
        "tokenLimit": (daily or {}).get("limit", {}).get("outputTokens"),
        "windows": windows,
        "warnings": warnings(windows, own, thresholds),
    }


def _window(raw: dict[str, Any], own: dict[str, int], settled: bool) -> dict[str, Any]:
    limit = {_FIELDS[d]: raw.get("limit", {}).get(d) for d in _FIELDS}
    used = {_FIELDS[d]: int(raw.get("used", {}).get(d, 0)) for d in _FIELDS}
    if not settled:
        for d in _TOKEN_DIMENSIONS:
            used[_FIELDS[d]] += own[d]
    remaining = {_FIELDS[d]: raw.get("remaining", {}).get(d) for d in _FIELDS}
    return {
        "name": raw.get("name"),
        "kind": raw.get("kind"),
        "seconds": raw.get("seconds"),
        "limit": limit,
        "used": used,
        "remaining": remaining,
        "resetsAt": raw.get("resets_at"),
    }


def _pick(windows: list[dict[str, Any]], *, daily: bool) -> dict[str, Any] | None:
    """The sample's "daily" window (the 24-hour trailing one, else the longest trailing)
    or its "monthly" one (the calendar month)."""
    if not daily:
        return next((w for w in windows if w["kind"] == "calendar-month"), None)
    trailing = [w for w in windows if w["kind"] == "trailing"]
    exact = [w for w in trailing if w["seconds"] == 86_400]
    if exact:
        return exact[0]
    return max(trailing, key=lambda w: w["seconds"] or 0, default=None)


def warnings(
    windows: list[dict[str, Any]], own: dict[str, int], thresholds: tuple[float, ...]
) -> list[dict[str, Any]]:
    """For each window this answer took past a threshold (its usage was below it before the
    answer and is at or above it after), the highest threshold crossed; each is counted in
    ``tollgate_stream_usage_warnings_total``."""
    found: list[dict[str, Any]] = []
    for window in windows:
        crossed = _crossed(window, own, thresholds)
        if crossed is None:
            continue
        found.append(crossed)
        USAGE_WARNINGS.labels(str(window["name"]), f"{crossed['threshold']:g}").inc()
    return found


def _crossed(
    window: dict[str, Any], own: dict[str, int], thresholds: tuple[float, ...]
) -> dict[str, Any] | None:
    best: dict[str, Any] | None = None
    for d in _TOKEN_DIMENSIONS:
        limit = window["limit"][_FIELDS[d]]
        if not limit:
            continue
        after = window["used"][_FIELDS[d]] / limit
        before = (window["used"][_FIELDS[d]] - own[d]) / limit
        for threshold in thresholds:
            if before < threshold <= after and (best is None or threshold > best["threshold"]):
                best = {
                    "type": "usage_warning",
                    "window": window["name"],
                    "dimension": _FIELDS[d],
                    "threshold": threshold,
                    "fraction": round(after, 4),
                    "used": window["used"][_FIELDS[d]],
                    "limit": limit,
                    "resetsAt": window["resetsAt"],
                }
    return best

"""The job's HTTP pages, on Faust's web server: the probes and ``/metrics`` every service has
(answered by :class:`~tollgate_core.health.Health` as everywhere else) and the admin-only data
pages — SQL over the dataset, canned reports and the live aggregates."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import faust
from faust.web import View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tollgate_analytics import aggregates, reports
from tollgate_analytics.access import AdminAccess
from tollgate_analytics.errors import QueryError
from tollgate_analytics.query import Catalog, Limits, render
from tollgate_core.errors import NotFound, RequestError, TollgateError
from tollgate_core.health import Health
from tollgate_core.http import error_body

_FORMATS = ("json", "csv", "table")


def error_response(view: Any, exc: TollgateError) -> Any:
    """:func:`tollgate_core.http.error_response`, on Faust's web server."""
    headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else None
    return view.json(error_body(exc), status=exc.http_status, headers=headers)


class DataPages:
    """The admin-only pages; each answers a typed error as ``{"error": {...}}``."""

    def __init__(self, catalog: Catalog, access: AdminAccess, limits: Limits, table: Any) -> None:
        self._catalog = catalog
        self._access = access
        self._limits = limits
        self._table = table

    async def sql(self, view: Any, request: Any, body: str | None) -> Any:
        try:
            self._access.check(request.headers.get("Authorization"))
            sql = body or request.query.get("sql")
            if not sql:
                raise RequestError("give sql")
            fmt = _format(request)
        except RequestError as exc:
            return error_response(view, exc)
        return await self._answer(view, fmt, lambda: self._catalog.query(sql, limits=self._limits))

    async def report(self, view: Any, request: Any, name: str) -> Any:
        try:
            self._access.check(request.headers.get("Authorization"))
            canned = reports.REPORTS.get(name)
            if canned is None:
                raise NotFound(f"no report {name!r}", details={"reports": sorted(reports.REPORTS)})
            fmt = _format(request)
            params = _report_window(request)
        except RequestError as exc:
            return error_response(view, exc)
        return await self._answer(
            view, fmt, lambda: self._catalog.query(canned.sql, params, self._limits)
        )

    async def aggregates(self, view: Any, request: Any) -> Any:
        try:
            self._access.check(request.headers.get("Authorization"))
            minutes = _whole_number(request.query.get("minutes", "60"), "minutes")
        except RequestError as exc:
            return error_response(view, exc)
        dimension = request.query.get("dimension", "model")
        since = int(time.time()) // 60 * 60 - (minutes - 1) * 60
        items = [(k, v) for k, v in list(self._table.items()) if v]
        merged = aggregates.rollup(items, dimension, since)
        return view.json({name: agg.summary() for name, agg in sorted(merged.items())})

    async def _answer(self, view: Any, fmt: str, run: Callable[[], Any]) -> Any:
        """Run a query in a thread (DuckDB blocks); the limits interrupt it and cap it."""
        try:
            result = await asyncio.to_thread(run)
        except QueryError as exc:
            return error_response(view, exc)
        if fmt == "json":
            return view.json(list(json.loads(render(result, "json"))))
        text = render(result, fmt)
        return view.text(text, content_type="text/csv" if fmt == "csv" else "text/plain")


def _format(request: Any) -> str:
    fmt: str = request.query.get("format", "json")
    if fmt not in _FORMATS:
        raise RequestError("format is json, csv or table")
    return fmt


def _whole_number(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise RequestError(f"{name} is a whole number") from None


def _report_window(request: Any) -> dict[str, Any]:
    try:
        return reports.window(request.query.get("day"), int(request.query.get("days", "1")))
    except ValueError as exc:
        raise RequestError(str(exc)) from exc


def register(app: faust.App, health: Health, pages: DataPages) -> None:
    @app.page("/healthz")
    async def healthz(self: Any, request: Any) -> Any:
        body, status = health.liveness()
        return self.json(body, status=status)

    @app.page("/readyz")
    async def readyz(self: Any, request: Any) -> Any:
        body, status = health.readiness()
        return self.json(body, status=status)

    @app.page("/metrics")
    async def prometheus(self: Any, request: Any) -> Any:
        return self.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/query")
    class Query(View):
        """GET with ``?sql=``, or POST with the SQL as the body."""

        async def get(self, request: Any) -> Any:
            return await pages.sql(self, request, None)

        async def post(self, request: Any) -> Any:
            return await pages.sql(self, request, await request.text())

    @app.page("/reports/{name}")
    async def report(self: Any, request: Any, name: str) -> Any:
        return await pages.report(self, request, name)

    @app.page("/aggregates")
    async def live_aggregates(self: Any, request: Any) -> Any:
        return await pages.aggregates(self, request)

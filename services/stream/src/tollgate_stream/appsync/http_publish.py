"""``POST /event``: AppSync's HTTP publish API."""

from __future__ import annotations

import hashlib

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tollgate_core.limits import count_bad_input
from tollgate_stream import limits
from tollgate_stream.appsync import auth_headers
from tollgate_stream.errors import AppSyncError
from tollgate_stream.state import EdgeState


def _error(exc: AppSyncError) -> Response:
    if exc.code == 400:
        count_bad_input("stream.http_publish", "body")
    return JSONResponse({"errors": [exc.as_error()]}, status_code=exc.code)


async def publish_endpoint(request: Request) -> Response:
    edge = EdgeState.of(request.app)
    gateway, settings = edge.gateway, edge.settings
    try:
        body = await limits.read_body(request, settings.max_body_bytes)
    except limits.BodyTooLarge as exc:
        count_bad_input("stream.http_publish", "body")
        too_large = AppSyncError("BadRequestException", str(exc), 413)
        return JSONResponse({"errors": [too_large.as_error()]}, status_code=413)
    try:
        payload = limits.loads(body, settings.max_json_depth)
    except ValueError as exc:
        return _error(AppSyncError.bad_request(f"body is not valid JSON: {exc}"))
    if not isinstance(payload, dict):
        return _error(AppSyncError.bad_request("body must be a JSON object"))
    headers = auth_headers.pick({k.lower(): v for k, v in request.headers.items()})
    try:
        result = await gateway.publish(
            payload.get("channel"),
            payload.get("events"),
            headers,
            body_sha256=hashlib.sha256(body).hexdigest(),
        )
    except AppSyncError as exc:
        return _error(exc)
    return JSONResponse({"successful": result.successful, "failed": result.failed})

"""``POST /event``: AppSync's HTTP publish API."""

from __future__ import annotations

import hashlib
import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tollgate_stream.appsync import auth_headers
from tollgate_stream.errors import AppSyncError
from tollgate_stream.gateway import Gateway

MAX_BODY_BYTES = 2 * 1024 * 1024


def _error(exc: AppSyncError) -> Response:
    return JSONResponse({"errors": [exc.as_error()]}, status_code=exc.code)


async def publish_endpoint(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        return _error(AppSyncError.bad_request("request body too large"))
    try:
        payload = json.loads(body)
    except ValueError:
        return _error(AppSyncError.bad_request("body is not valid JSON"))
    if not isinstance(payload, dict):
        return _error(AppSyncError.bad_request("body must be a JSON object"))
    headers = auth_headers.pick({k.lower(): v for k, v in request.headers.items()})
    headers[auth_headers.PAYLOAD_SHA256] = hashlib.sha256(body).hexdigest()
    try:
        result = await gateway.publish(payload.get("channel"), payload.get("events"), headers)
    except AppSyncError as exc:
        return _error(exc)
    return JSONResponse({"successful": result.successful, "failed": result.failed})

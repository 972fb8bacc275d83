"""The one client of the auth service's decision endpoint (``POST /v1/authorize``).

Every service that must know who is calling (the edge for each publish and subscribe, the
meter for its usage API) asks through :class:`AuthorizeClient`, so all read the answer by
the same rules:

* ``200`` with a readable body is a :class:`Grant`;
* ``400``/``401``/``403`` are a :class:`Denial` with the auth service's error type;
* anything else — unreachable, a 5xx, a body that is not the documented shape — raises
  :class:`~tollgate_core.errors.DependencyUnavailable`: never an allow, never taken for the
  caller's fault.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

from tollgate_core.errors import DependencyUnavailable

tracer = trace.get_tracer("tollgate.authorize")

logger = logging.getLogger(__name__)

Operation = Literal["publish", "subscribe", "invoke"]

#: the request headers that carry a credential
CREDENTIAL_HEADERS = ("authorization", "x-api-key")


@dataclass(frozen=True, slots=True)
class Grant:
    principal: str
    groups: tuple[str, ...] = ()
    #: models the caller's groups allow ("*" = any)
    models: frozenset[str] = frozenset()
    #: the tier the auth policy gives the caller's groups, if it names one
    tier: str | None = None
    admin: bool = False
    #: when the credential stops being valid (epoch seconds), if it says
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class Denial:
    status: int
    type: str
    message: str


class AuthorizeClient:
    def __init__(self, client: httpx.AsyncClient, auth_url: str = "") -> None:
        self._client = client
        self._url = auth_url.rstrip("/") + "/v1/authorize"

    async def decide(
        self,
        headers: Mapping[str, str],
        operation: Operation,
        *,
        channel: str | None = None,
        model: str | None = None,
    ) -> Grant | Denial:
        credentials = {k: headers[k] for k in CREDENTIAL_HEADERS if k in headers}
        body = {"headers": credentials, "operation": operation, "channel": channel, "model": model}
        # a CLIENT span, and its context in the request, so the auth service's span is its child
        with tracer.start_as_current_span(
            "POST /v1/authorize",
            kind=SpanKind.CLIENT,
            attributes={"http.request.method": "POST", "tollgate.operation": operation},
        ):
            context: dict[str, str] = {}
            propagate.inject(context)
            try:
                response = await self._client.post(self._url, json=body, headers=context)
                data: Any = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                raise DependencyUnavailable(
                    f"auth service unreachable: {type(exc).__name__}: {exc}"
                ) from exc
        if response.status_code == 200:
            return _grant(data)
        if response.status_code in (400, 401, 403):
            error = data.get("error") if isinstance(data, dict) else None
            if isinstance(error, dict):
                return Denial(
                    response.status_code,
                    str(error.get("type", "unauthorized")),
                    str(error.get("message", "not authorized"))[:500],
                )
        raise DependencyUnavailable(f"auth service answered {response.status_code}")


def _grant(data: Any) -> Grant:
    try:
        if not isinstance(data, dict) or not isinstance(data["principal"], str):
            raise TypeError("no principal")
        expires_at = data.get("expires_at")
        tier = data.get("tier")
        return Grant(
            principal=data["principal"],
            groups=tuple(str(g) for g in data.get("groups") or ()),
            models=frozenset(str(m) for m in data.get("models") or ()),
            tier=tier if isinstance(tier, str) else None,
            admin=data.get("admin") is True,
            expires_at=float(expires_at) if isinstance(expires_at, int | float) else None,
        )
    except (KeyError, TypeError) as exc:
        logger.error("auth service answered an unreadable decision: %s", exc)
        raise DependencyUnavailable("the auth service answered an unreadable decision") from exc

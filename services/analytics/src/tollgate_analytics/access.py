"""Who may read the dataset over HTTP. The data endpoints (``/query``, ``/reports``,
``/aggregates``) answer every user's records, so they take the admin bearer token
(``TOLLGATE_ANALYTICS_ADMIN_TOKEN``), compared in constant time; with no token configured
they are disabled. ``/healthz``, ``/readyz`` and ``/metrics`` stay open."""

from __future__ import annotations

import hmac

from pydantic import SecretStr

from tollgate_analytics.errors import AdminDisabled, Unauthorized


class AdminAccess:
    def __init__(self, token: SecretStr | None) -> None:
        secret = token.get_secret_value() if token is not None else ""
        self._token = secret.encode() if secret else None

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def check(self, authorization: str | None) -> None:
        """Raise unless ``authorization`` (the header) is ``Bearer <the admin token>``."""
        if self._token is None:
            raise AdminDisabled(
                "the analytics data endpoints are disabled: set TOLLGATE_ANALYTICS_ADMIN_TOKEN"
                " to enable them (they answer every user's records)"
            )
        scheme, _, given = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self._token
        ):
            raise Unauthorized("give the analytics admin token as Authorization: Bearer <token>")

"""Who may read the dataset over HTTP. The data endpoints (``/query``, ``/reports``,
``/aggregates``) answer every user's records, so they take the admin bearer token
(``TOLLGATE_ANALYTICS_ADMIN_TOKEN``), compared in constant time; with no token configured
they are disabled. ``/healthz``, ``/readyz`` and ``/metrics`` stay open."""

from __future__ import annotations

from pydantic import SecretStr

from tollgate_analytics.errors import AdminDisabled
from tollgate_core.errors import Unauthenticated
from tollgate_core.http import bearer_matches


class AdminAccess:
    def __init__(self, token: SecretStr | None) -> None:
        self._token = token.get_secret_value() if token is not None else ""

    @property
    def enabled(self) -> bool:
        return bool(self._token)

    def check(self, authorization: str | None) -> None:
        """Raise unless ``authorization`` (the header) is ``Bearer <the admin token>``."""
        if not self._token:
            raise AdminDisabled(
                "the analytics data endpoints are disabled: set TOLLGATE_ANALYTICS_ADMIN_TOKEN"
                " to enable them (they answer every user's records)"
            )
        if not bearer_matches(authorization, self._token):
            raise Unauthenticated("give the analytics admin token as Authorization: Bearer <token>")

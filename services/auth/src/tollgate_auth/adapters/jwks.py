"""Fetching an issuer's JWKS over HTTP."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from tollgate_core.errors import DependencyUnavailable


class HttpKeySource:
    def __init__(self, url: str, client: httpx.AsyncClient) -> None:
        self._url = url
        self._client = client

    async def fetch(self) -> Mapping[str, Any]:
        try:
            response = await self._client.get(self._url)
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise DependencyUnavailable(f"cannot fetch JWKS from {self._url}: {exc}") from exc
        if not isinstance(document, dict):
            raise DependencyUnavailable(f"{self._url} did not serve a JWKS document")
        return document

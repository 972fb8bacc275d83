"""The model list of ``GET /v1/models``: the router's catalog, or the configured defaults."""

from __future__ import annotations

import logging
from typing import Any, Protocol

import httpx

logger = logging.getLogger(__name__)


class ModelCatalog(Protocol):
    async def list_models(self) -> list[dict[str, Any]]:
        """OpenAI model objects (``{"id","object":"model","created","owned_by"}``)."""
        ...


def model_object(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "tollgate"}


def public_model(entry: dict[str, Any]) -> dict[str, Any]:
    """Only what OpenAI's model object holds: the router's catalog also says what a model
    costs, which groups may use it and what it falls back to, which is not for clients."""
    model = model_object(entry["id"])
    if isinstance(entry.get("created"), int):
        model["created"] = entry["created"]
    if isinstance(entry.get("owned_by"), str):
        model["owned_by"] = entry["owned_by"]
    return model


class StaticModelCatalog:
    def __init__(self, models: list[str]) -> None:
        self._models = [model_object(m) for m in models]

    async def list_models(self) -> list[dict[str, Any]]:
        return list(self._models)


class RouterModelCatalog:
    """Asks the router's ``GET /v1/models``; falls back to ``fallback`` when the router cannot
    be reached or answers something that is not an OpenAI model list."""

    def __init__(
        self,
        router_url: str,
        fallback: ModelCatalog,
        *,
        timeout: float = 2.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._url = router_url.rstrip("/") + "/v1/models"
        self._fallback = fallback
        self._client = httpx.AsyncClient(timeout=timeout, transport=transport)

    async def list_models(self) -> list[dict[str, Any]]:
        try:
            response = await self._client.get(self._url)
            response.raise_for_status()
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            logger.info("router model list unavailable (%s); using the defaults", exc)
            return await self._fallback.list_models()
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or not all(
            isinstance(m, dict) and isinstance(m.get("id"), str) for m in data
        ):
            logger.warning("router %s answered no model list; using the defaults", self._url)
            return await self._fallback.list_models()
        return [public_model(m) for m in data]

    async def aclose(self) -> None:
        await self._client.aclose()

"""Reading each model's output limit from the router's ``GET /v1/models`` body."""

from __future__ import annotations

import httpx

from tollgate_dev.platform import free_port
from tollgate_meter.adapters.catalog import RouterCatalog, parse_models
from tollgate_meter.domain import OutputLimit

#: the shape of the router's answer (services/router/src/tollgate_router/api.py)
MODELS = {
    "object": "list",
    "data": [
        {"id": "small", "max_tokens": {"default": 256, "max": 1024}, "default": True},
        {"id": "large", "max_tokens": {"default": 1024, "max": 8192}, "default": False},
        {"id": "broken", "max_tokens": {"default": "many"}},
        {"id": "bare"},
        "not a model",
    ],
}


def test_each_model_s_limits_and_the_default_model_are_read() -> None:
    limits, default = parse_models(MODELS)
    assert limits == {"small": OutputLimit(256, 1024), "large": OutputLimit(1024, 8192)}
    assert default == "small"
    assert parse_models({"error": "x"}) == ({}, None)
    assert parse_models([1, 2]) == ({}, None)


async def test_an_unreachable_router_leaves_the_limits_unknown() -> None:
    async with httpx.AsyncClient(timeout=1) as client:
        catalog = RouterCatalog(client, f"http://127.0.0.1:{free_port()}", refresh_s=60)
        assert await catalog.refresh() is False
    assert catalog.output_limit(None) is None
    assert catalog.output_limit("small") is None

"""``/metrics`` on the service's port or on a port of its own."""

from __future__ import annotations

import httpx
from starlette.testclient import TestClient

from tollgate_core.health import Health
from tollgate_core.http import metrics_server, ops_app
from tollgate_core.settings import TelemetrySettings


def test_metrics_are_on_the_service_port_by_default() -> None:
    assert metrics_server(TelemetrySettings()) is None
    with TestClient(ops_app(Health())) as client:
        assert client.get("/metrics").status_code == 200


async def test_a_metrics_port_serves_metrics_alone_and_the_service_port_drops_them() -> None:
    settings = TelemetrySettings.model_validate({"TOLLGATE_METRICS_PORT": 0})
    server = metrics_server(settings)
    assert server is not None
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            response = await client.get("/metrics")
            assert response.status_code == 200
            assert "python_info" in response.text
            assert (await client.get("/healthz")).status_code == 404
    finally:
        await server.stop()
    with TestClient(ops_app(Health(), metrics=False)) as client:
        assert client.get("/metrics").status_code == 404
        assert client.get("/healthz").status_code == 200

"""The composition root: the router serves its catalog on its port, follows the file when it
changes, and re-reads it on SIGHUP."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx

from tollgate_core.settings import KafkaSettings
from tollgate_dev.platform import free_port
from tollgate_router.main import serve
from tollgate_router.settings import RouterSettings

CATALOG = """
default_model: {default}
providers: {{l: {{type: local, time_to_first_token_ms: 0}}}}
models: [{{id: a, provider: l}}, {{id: b, provider: l}}]
"""


async def model_ids(client: httpx.AsyncClient, url: str) -> dict[str, bool]:
    body = (await client.get(f"{url}/v1/models")).json()
    return {m["id"]: m["default"] for m in body["data"]}


async def wait_for_default(client: httpx.AsyncClient, url: str, default: str) -> None:
    async with asyncio.timeout(20):
        while (await model_ids(client, url)).get(default) is not True:
            await asyncio.sleep(0.05)


async def test_serves_the_catalog_and_reloads_it_on_change_and_on_sighup(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(CATALOG.format(default="a"))
    settings = RouterSettings(
        port=free_port(),
        catalog_file=path,
        use_database=False,
        kafka=KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}"),  # not needed here
    )
    url = f"http://127.0.0.1:{settings.port}"
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop))
    try:
        async with httpx.AsyncClient() as client:
            async with asyncio.timeout(20):
                while True:
                    try:
                        assert await model_ids(client, url) == {"a": True, "b": False}
                        break
                    except httpx.TransportError:
                        await asyncio.sleep(0.05)
            path.write_text(CATALOG.format(default="b"))
            os.utime(path, (1000, 1000))
            await wait_for_default(client, url, "b")
            # same mtime as before: only SIGHUP can make the router see this edit
            path.write_text(CATALOG.format(default="a"))
            os.utime(path, (1000, 1000))
            os.kill(os.getpid(), signal.SIGHUP)
            await wait_for_default(client, url, "a")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)

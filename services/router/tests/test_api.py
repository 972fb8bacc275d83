"""``GET /v1/models``, the prepared-response admin API, and the admin CLI over real HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from tollgate_core.contracts import ChatMessage, TextBlock, utcnow
from tollgate_core.health import Health
from tollgate_core.http import HttpServer, ops_app
from tollgate_dev.platform import free_port
from tollgate_router import cli
from tollgate_router.api import admin_routes, models_route
from tollgate_router.catalog import CatalogSource, load_catalog
from tollgate_router.prepared import InMemoryPreparedStore, prepared_key

EXAMPLE = Path(__file__).parents[3] / "config" / "models.example.yaml"
TOKEN = "admin-secret"


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, InMemoryPreparedStore]]:
    store = InMemoryPreparedStore()
    catalog = CatalogSource(load_catalog(EXAMPLE))
    app = ops_app(Health(), [models_route(catalog), *admin_routes(store, SecretStr(TOKEN))])
    server = HttpServer(app, host="127.0.0.1", port=free_port())
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.port}", store
    finally:
        await server.stop()


async def test_models_are_listed_in_the_openai_format_with_prices(
    served: tuple[str, InMemoryPreparedStore],
) -> None:
    url, _ = served
    async with httpx.AsyncClient() as client:
        body = (await client.get(f"{url}/v1/models")).json()
    assert body["object"] == "list"
    by_id = {m["id"]: m for m in body["data"]}
    assert by_id["tollgate-local"]["default"] is True
    assert by_id["claude-haiku"]["owned_by"] == "bedrock"
    assert by_id["claude-haiku"]["pricing"]["output_per_mtok_usd"] == "4.0"
    assert by_id["nova-pro"]["groups"] == ["premium"]


async def test_the_admin_api_adds_lists_and_removes_and_needs_the_token(
    served: tuple[str, InMemoryPreparedStore],
) -> None:
    url, store = served
    auth = {"authorization": f"Bearer {TOKEN}"}
    body = {
        "model": "claude-haiku",
        "principal": "alice",
        "system": ["be nice"],
        "messages": [{"role": "user", "content": [{"text": "hours?"}]}],
        "response": "nine to five",
        "ttl_seconds": 60,
    }
    async with httpx.AsyncClient() as client:
        assert (await client.post(f"{url}/admin/prepared", json=body)).status_code == 401
        wrong = {"authorization": "Bearer nope"}
        assert (await client.get(f"{url}/admin/prepared", headers=wrong)).status_code == 401
        both = {**body, "expires_at": "2030-01-01T00:00:00Z"}
        bad = await client.post(f"{url}/admin/prepared", json=both, headers=auth)
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "validation_error"
        created = await client.post(f"{url}/admin/prepared", json=body, headers=auth)
        assert created.status_code == 201
        entry = created.json()
        listed = (await client.get(f"{url}/admin/prepared", headers=auth)).json()["data"]
        assert [e["id"] for e in listed] == [entry["id"]]
        msgs = (ChatMessage(role="user", content=[TextBlock(text="hours?")]),)
        hit = await store.lookup(
            prepared_key(("be nice",), msgs), model="claude-haiku", principal="alice", now=utcnow()
        )
        assert hit is not None and hit.response == "nine to five"
        gone = await client.delete(f"{url}/admin/prepared/{entry['id']}", headers=auth)
        assert gone.status_code == 204
        again = await client.delete(f"{url}/admin/prepared/{entry['id']}", headers=auth)
        assert again.status_code == 404


async def test_the_cli_drives_the_admin_api(
    served: tuple[str, InMemoryPreparedStore],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, store = served
    base = ["--url", url, "--token", TOKEN]
    convo = tmp_path / "convo.json"
    convo.write_text(
        json.dumps(
            [
                {"role": "user", "content": "open today?"},
                {"role": "assistant", "content": "yes"},
                {"role": "user", "content": "and tomorrow?"},
            ]
        )
    )
    code = await asyncio.to_thread(
        cli.run,
        [*base, "add", "--messages-file", str(convo), "--response", "also", "--ttl", "60"],
    )
    assert code == 0
    code = await asyncio.to_thread(
        cli.run,
        [
            *base,
            "add",
            "--question",
            "hi",
            "--principal",
            "bob",
            "--response",
            "hey bob",
            "--expires-at",
            "2099-01-01T00:00:00+00:00",
        ],
    )
    assert code == 0
    capsys.readouterr()
    assert await asyncio.to_thread(cli.run, [*base, "list", "--principal", "bob"]) == 0
    listed = json.loads(capsys.readouterr().out)["data"]
    assert [e["response"] for e in listed] == ["hey bob"]
    assert await asyncio.to_thread(cli.run, [*base, "remove", listed[0]["id"]]) == 0
    assert [e.response for e in store.entries.values()] == ["also"]
    assert await asyncio.to_thread(cli.run, [*base, "remove", "nope"]) == 1
    assert await asyncio.to_thread(cli.run, ["--url", url, "--token", "bad", "list"]) == 1

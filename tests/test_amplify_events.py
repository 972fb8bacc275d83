"""The AWS Amplify JS ``events`` client (npm ``aws-amplify``, pinned in tests/amplify) against
the edge over TLS: connect, subscribe, publish over the socket, post over HTTP, with the
``apiKey`` and ``lambda`` auth modes, run by Node as a web app would run it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.appsync_client import dev_token
from tests.edges import Edge
from tollgate_dev.stack import Stack

pytestmark = pytest.mark.e2e

AMPLIFY = Path(__file__).parent / "amplify"


@pytest.fixture(scope="session")
def amplify_script() -> Path:
    if not (AMPLIFY / "node_modules" / "aws-amplify").is_dir():
        npm = shutil.which("npm")
        assert npm is not None, "npm is needed for the Amplify compatibility tests"
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=AMPLIFY, check=True)
    return AMPLIFY / "events-client.mjs"


def node_command() -> list[str]:
    node = shutil.which("node")
    assert node is not None, "node is needed for the Amplify compatibility tests"
    probe = subprocess.run(
        [node, "-e", "process.stdout.write(typeof WebSocket)"], capture_output=True, check=True
    )
    # Node 20 has the global WebSocket Amplify uses behind a flag; 22+ has it by default
    return [node] if probe.stdout == b"function" else [node, "--experimental-websocket"]


async def run_amplify(script: Path, edge: Edge, **config: Any) -> dict[str, Any]:
    assert edge.certificate is not None
    process = await asyncio.create_subprocess_exec(
        *node_command(),
        "--no-warnings",
        str(script),
        json.dumps({"endpoint": f"{edge.url}/event", **config}),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NODE_EXTRA_CA_CERTS": str(edge.certificate.cert)},
    )
    try:
        async with asyncio.timeout(120):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, f"{err.decode()}\n{edge.logs()[-3000:]}"
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def assert_answered(result: dict[str, Any]) -> None:
    for conversation in ("over-socket", "over-http"):
        events = [e for e in result["received"] if e.get("conversationId") == conversation]
        assert events[0]["messageStart"] == {"role": "assistant"}
        deltas = [
            e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e
        ]
        assert len(deltas) == 12
        assert events[-1]["metadata"]["usage"]["outputTokens"] == 12
        assert len({e["requestId"] for e in events}) == 1
    assert result["published"] is True
    assert result["postFailed"] is None  # events.post returns the failed list only on failure
    rejected = result["rejected"]
    assert rejected is not None
    assert rejected["message"] == "Publish errors: BadRequestException", rejected


async def test_amplify_events_with_api_key(
    amplify_script: Path, tls_edge: Edge, stack: Stack
) -> None:
    # an API key issued by the auth service's admin API, bound to the channel's principal
    admin = await dev_token(stack.url("auth"), "root", ("admin",))
    async with httpx.AsyncClient() as client:
        created = await client.post(
            f"{stack.url('auth')}/v1/admin/api-keys",
            headers={"Authorization": admin},
            json={"principal": "amp-key", "name": "amplify test"},
        )
    assert created.status_code == 201, created.text
    result = await run_amplify(
        amplify_script, tls_edge, authMode="apiKey", apiKey=created.json()["key"], sub="amp-key"
    )
    assert_answered(result)


async def test_amplify_events_with_lambda_auth(
    amplify_script: Path, tls_edge: Edge, stack: Stack
) -> None:
    # lambda mode sends the token as Authorization, as Cognito/OIDC tokens are sent
    token = await dev_token(stack.url("auth"), "amp-lambda")
    result = await run_amplify(
        amplify_script, tls_edge, authMode="lambda", authToken=token, sub="amp-lambda"
    )
    assert_answered(result)

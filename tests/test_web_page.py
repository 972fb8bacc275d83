"""The web page at the edge's ``/``, driven in Debian's Chromium with Playwright.

Chromium is the system package (``scripts/ensure-chromium.sh``, run by ``make test``);
Playwright's own browser downloads are never used. Every page talks to the edge of the
session's stack (or, for the reconnect test, to it through a TCP proxy the test cuts).
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.appsync_client import dev_token
from tests.conftest import METER_ADMIN_TOKEN
from tests.edges import edge_process
from tests.ledger import wait_settled
from tests.tcpproxy import TcpProxy
from tollgate_core.http import HttpServer
from tollgate_dev.platform import EmbeddedPostgres, free_port
from tollgate_dev.stack import Stack

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: where the test run leaves the page's screenshot (docs/web-page.png is one such copy)
SCREENSHOT = Path(__file__).parents[1] / "var" / "screenshots" / "web-page.png"
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"the browser tests need Debian's chromium at {CHROMIUM}: run "
            "scripts/ensure-chromium.sh as root (make test does), or apt-get install chromium"
        )
    # each launch runs on a fresh temporary profile (user-data dir) Playwright creates, and
    # each page below in a context of its own
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


async def open_page(browser: Browser, url: str) -> Page:
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    await page.goto(url)
    return page


async def sign_in(page: Page, user: str, groups: str = "") -> None:
    await page.get_by_role("textbox", name="User").fill(user)
    if groups:
        await page.get_by_role("textbox", name="Groups").fill(groups)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("status", name="Connection")).to_have_text("Connected")
    await expect(page.get_by_role("combobox", name="Model")).to_have_value("tollgate-local")


async def count_answer_updates(page: Page) -> None:
    """Count, in the page, each change of an answer's text while it streams in."""
    await page.evaluate(
        """() => {
            window.answerUpdates = {};
            new MutationObserver((records) => {
              for (const r of records) {
                const turn = r.target.closest && r.target.closest('.turn.assistant');
                if (turn && !turn.querySelector('.meta')) {
                  const id = turn.dataset.requestId;
                  window.answerUpdates[id] = (window.answerUpdates[id] || 0) + 1;
                }
              }
            }).observe(document.getElementById('log'), {childList: true, subtree: true,
                                                         characterData: true});
        }"""
    )


async def send(page: Page, text: str, answers_before: int) -> str:
    """Send a message and wait for its whole answer; the answer's request id."""
    await page.get_by_role("textbox", name="Message").fill(text)
    await page.get_by_role("button", name="Send").click()
    finished = page.get_by_role("log").locator(".turn.assistant:has(.meta)")
    await expect(finished).to_have_count(answers_before + 1)
    request_id = await finished.nth(answers_before).get_attribute("data-request-id")
    assert request_id
    return request_id


async def used(page: Page, window: str) -> tuple[int, int]:
    bar = page.get_by_role("region", name="Usage").locator(f'.window[data-window="{window}"]')
    return int(await bar.get_attribute("data-used-input") or -1), int(
        await bar.get_attribute("data-used-output") or -1
    )


async def test_two_answers_stream_in_and_the_usage_bars_move_by_the_settled_tokens(
    browser: Browser, stack: Stack, embedded_postgres: EmbeddedPostgres
) -> None:
    page = await open_page(browser, stack.url("stream"))
    await sign_in(page, "web-wendy")
    usage = page.get_by_role("region", name="Usage")
    await expect(usage.locator(".window")).not_to_have_count(0)
    windows = await usage.locator(".window").evaluate_all("ws => ws.map(w => w.dataset.window)")
    before = {w: await used(page, w) for w in windows}
    await count_answer_updates(page)
    spent = [0, 0]
    for turn, text in enumerate(["Hello there", "And a second question"]):
        request_id = await send(page, text, turn)
        settled = await wait_settled(embedded_postgres.url, request_id)
        spent = [spent[0] + settled.input_tokens, spent[1] + settled.output_tokens]
        for window in windows:
            bar = usage.locator(f'.window[data-window="{window}"]')
            await expect(bar).to_have_attribute(
                "data-used-input", str(before[window][0] + spent[0])
            )
            await expect(bar).to_have_attribute(
                "data-used-output", str(before[window][1] + spent[1])
            )
        updates = await page.evaluate(f"window.answerUpdates[{request_id!r}] || 0")
        assert updates >= 3, f"the answer came in {updates} piece(s), not streamed"
    assert spent[1] == 24  # 12 tokens per answer from the local model
    assert await page.get_by_role("alert").count() == 0
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOT), full_page=True)
    await page.context.close()


async def test_a_second_user_never_sees_the_first_users_answers(
    browser: Browser, stack: Stack
) -> None:
    first = await open_page(browser, stack.url("stream"))
    second = await open_page(browser, stack.url("stream"))
    frames: list[str] = []
    second.on(
        "websocket",
        lambda ws: ws.on("framereceived", lambda frame: frames.append(str(frame))),
    )
    await sign_in(first, "web-xavier")
    await sign_in(second, "web-yolanda")
    theirs = await send(first, "Something for xavier only", 0)
    mine = await send(second, "Something for yolanda", 0)
    await expect(second.get_by_role("log").locator(".turn.assistant")).to_have_count(1)
    await expect(first.get_by_role("log").locator(".turn.assistant")).to_have_count(1)
    assert theirs != mine
    assert not any(theirs in frame for frame in frames)
    assert any(mine in frame for frame in frames)
    await first.context.close()
    await second.context.close()


async def test_an_exhausted_limit_shows_the_time_to_retry(browser: Browser, stack: Stack) -> None:
    user = "web-zack"
    async with httpx.AsyncClient(base_url=stack.url("meter")) as meter:
        answer = await meter.put(
            f"/v1/admin/principals/{user}",
            headers={"authorization": f"Bearer {METER_ADMIN_TOKEN}"},
            json={"windows": [{"name": "tiny", "kind": "trailing", "seconds": 600, "requests": 1}]},
        )
        answer.raise_for_status()
    page = await open_page(browser, stack.url("stream"))
    await sign_in(page, user)
    await send(page, "The only one I may send", 0)
    await page.get_by_role("textbox", name="Message").fill("One too many")
    await page.get_by_role("button", name="Send").click()
    alert = page.get_by_role("alert")
    await expect(alert).to_have_text(
        re.compile(r"Limit reached: tiny limit of 1 requests .*Try again in \d+ (s|min) \(at .+\)")
    )
    await expect(page.get_by_role("log").locator(".turn.assistant")).to_have_count(1)
    await page.context.close()


async def test_the_page_reconnects_after_its_socket_drops(browser: Browser, stack: Stack) -> None:
    edge_port = int(stack.url("stream").rsplit(":", 1)[1])
    with TcpProxy(edge_port) as proxy:
        page = await open_page(browser, f"http://127.0.0.1:{proxy.port}/")
        await sign_in(page, "web-victor")
        await send(page, "Before the drop", 0)
        status = page.get_by_role("status", name="Connection")
        proxy.cut()
        await expect(status).to_have_text("Reconnecting…")
        await expect(page.get_by_role("button", name="Send")).to_be_disabled()
        proxy.restore()
        await expect(status).to_have_text("Connected")
        await send(page, "After the drop", 1)
        await expect(page.get_by_role("alert")).to_have_count(0)
        await page.context.close()


async def test_admins_see_every_principals_usage_and_the_top_models(
    browser: Browser, stack: Stack, embedded_postgres: EmbeddedPostgres
) -> None:
    admin = await open_page(browser, stack.url("stream"))
    await sign_in(admin, "web-root", "admin")
    request_id = await send(admin, "Count me in the admin view", 0)
    settled = await wait_settled(embedded_postgres.url, request_id)
    region = admin.get_by_role("region", name="Administration")
    await expect(region).to_be_visible()
    await admin.get_by_role("button", name="Refresh").click()
    row = region.get_by_role("table", name="Usage by principal").locator(
        "tr", has=admin.get_by_role("cell", name="web-root", exact=True)
    )
    await expect(row.get_by_role("cell").nth(1)).to_have_text(
        f"{settled.input_tokens + settled.output_tokens:,}"
    )
    models = region.get_by_role("table", name="Top models")
    await expect(models.get_by_role("cell", name="tollgate-local", exact=True)).to_be_visible()
    user = await open_page(browser, stack.url("stream"))
    await sign_in(user, "web-ursula")
    await expect(user.get_by_role("region", name="Administration")).to_be_hidden()
    await admin.context.close()
    await user.context.close()


class AuthorizationServer:
    """An OAuth 2.0 authorization server as Cognito's hosted UI plays it, for one public
    client: ``/authorize`` signs ``user`` in at once and redirects back with a code;
    ``/token`` gives the token only for the code's PKCE verifier (S256), redirect URI and
    client. The token itself is a real one from the development IdP the stack's auth service
    trusts."""

    def __init__(self, auth_url: str, user: str, client_id: str) -> None:
        self.auth_url, self.user, self.client_id = auth_url, user, client_id
        self.codes: dict[str, dict[str, str]] = {}
        self.exchanged: list[str] = []

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/authorize", self.authorize, methods=["GET"]),
                Route("/token", self.token, methods=["POST"]),
            ],
            middleware=[Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["POST"])],
        )

    async def authorize(self, request: Request) -> Response:
        q = request.query_params
        if q.get("client_id") != self.client_id or q.get("code_challenge_method") != "S256":
            return JSONResponse({"error": "invalid_request"}, 400)
        code = secrets.token_urlsafe(16)
        self.codes[code] = {"challenge": q["code_challenge"], "redirect_uri": q["redirect_uri"]}
        target = f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q['state']})}"
        return RedirectResponse(target, 302)

    async def token(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        grant = self.codes.pop(form.get("code", ""), None)
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        if (
            grant is None
            or form.get("grant_type") != "authorization_code"
            or form.get("client_id") != self.client_id
            or form.get("redirect_uri") != grant["redirect_uri"]
            or challenge.decode().rstrip("=") != grant["challenge"]
        ):
            return JSONResponse({"error": "invalid_grant"}, 400)
        self.exchanged.append(verifier)
        return JSONResponse(
            {"access_token": await dev_token(self.auth_url, self.user), "token_type": "Bearer"}
        )


async def test_oidc_sign_in_with_the_authorization_code_and_pkce(
    browser: Browser, stack: Stack, tmp_path: Path
) -> None:
    issuer = AuthorizationServer(stack.url("auth"), "web-olga", "web-app")
    server = HttpServer(issuer.app(), host="127.0.0.1", port=free_port())
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    env = {
        "TOLLGATE_STREAM_WEB_SIGN_IN": "oidc",
        "TOLLGATE_STREAM_OIDC_AUTHORIZE_URL": f"{base}/authorize",
        "TOLLGATE_STREAM_OIDC_TOKEN_URL": f"{base}/token",
        "TOLLGATE_STREAM_OIDC_CLIENT_ID": "web-app",
    }
    try:
        with edge_process(stack, tmp_path, name="stream-oidc", env=env) as edge:
            page = await open_page(browser, f"{edge.url}/")
            await page.get_by_role("button", name="Sign in").click()
            await expect(page.get_by_text("Signed in as web-olga")).to_be_visible()
            await expect(page.get_by_role("status", name="Connection")).to_have_text("Connected")
            assert len(issuer.exchanged) == 1 and len(issuer.exchanged[0]) >= 43
            assert "code=" not in page.url  # the code leaves the address bar
            await send(page, "Signed in through the issuer", 0)
            # an answer whose state is not the one the page sent is refused
            forged = await open_page(browser, f"{edge.url}/?code=stolen&state=forged")
            await expect(forged.get_by_role("alert")).to_have_text(
                re.compile("Sign-in failed: the sign-in answer does not match")
            )
            await page.context.close()
            await forged.context.close()
    finally:
        await server.stop()

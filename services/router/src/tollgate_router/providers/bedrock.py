"""Amazon Bedrock ConverseStream, async with no thread per stream.

Design choice: botocore signs (SigV4, the standard AWS credential chain, the region and
profile resolution of every AWS SDK) and decodes (``botocore.eventstream.EventStreamBuffer``,
the same CRC-checked decoder boto3 uses), while httpx carries the bytes on the event loop.
aiobotocore would also be async, but it pins botocore to a narrow range that conflicts with
the boto3 the workspace pins, and wraps every stream in its own aiohttp session layer; with
httpx one pooled client serves thousands of concurrent streams on one loop, exactly as the
OpenAI-compatible and Anthropic adapters do. Credentials are resolved off the loop (the chain
may read files or call IMDS/SSO) once, and again only when refreshable ones near expiry.

Mapping: content blocks to Converse's ``text``/``image`` (inline ``bytes``; Converse takes no
image URL, so one is refused)/``toolUse``/``toolResult`` blocks, tools to ``toolConfig``
(``auto``/``any``/``tool`` choices: there is no ``none``, refused), ``stop`` and ``top_p`` to
``inferenceConfig``, extras to ``additionalModelRequestFields``; ``seed`` and
``response_format`` have no Converse field and are refused. ``contentBlockStart`` with
``toolUse`` and the ``toolUse.input`` pieces of ``contentBlockDelta`` become
:class:`ToolUseDelta`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials, RefreshableCredentials
from botocore.eventstream import EventStreamBuffer, ParserError
from botocore.session import Session

from tollgate_core.contracts import (
    ContentBlock,
    ImageContent,
    TextContent,
    ToolChoice,
    ToolUseContent,
    Usage,
)
from tollgate_core.errors import ConfigurationError
from tollgate_router.errors import (
    InvalidProviderRequest,
    ModelNotAllowed,
    ModelNotFound,
    ProviderError,
    ProviderThrottled,
    ProviderTimeout,
    ProviderUnavailable,
    from_http_status,
)
from tollgate_router.providers._http import Clients, error_message, translate_httpx
from tollgate_router.providers.base import (
    Capabilities,
    Finished,
    ProviderEvent,
    ProviderRequest,
    TextDelta,
    ToolUseDelta,
    stop_reason,
)

#: ``x-amzn-ErrorType`` before the stream and ``:exception-type`` inside it, case-folded
_ERRORS: dict[str, type[ProviderError]] = {
    "throttlingexception": ProviderThrottled,
    "servicequotaexceededexception": ProviderThrottled,
    "validationexception": InvalidProviderRequest,
    "accessdeniedexception": ModelNotAllowed,
    "resourcenotfoundexception": ModelNotFound,
    "modeltimeoutexception": ProviderTimeout,
    "modelnotreadyexception": ProviderUnavailable,
    "serviceunavailableexception": ProviderUnavailable,
    "internalserverexception": ProviderUnavailable,
    "modelstreamerrorexception": ProviderUnavailable,
    "modelerrorexception": ProviderUnavailable,
}


def bedrock_error(code: str, message: str, status: int | None = None) -> ProviderError:
    cls = _ERRORS.get(code.split(":", 1)[0].strip().lower())
    if cls is None:
        return from_http_status(status or 500, f"bedrock {code}: {message}")
    return cls(f"bedrock {code.split(':', 1)[0]}: {message}", details={"aws_error": code})


def block_of(block: ContentBlock) -> dict[str, Any]:
    if isinstance(block, TextContent):
        return {"text": block.text}
    if isinstance(block, ImageContent):
        image_format = (block.media_type or "").removeprefix("image/")
        return {"image": {"format": image_format, "source": {"bytes": block.data}}}
    if isinstance(block, ToolUseContent):
        return {"toolUse": {"toolUseId": block.id, "name": block.name, "input": block.input}}
    return {
        "toolResult": {
            "toolUseId": block.tool_use_id,
            "content": [{"text": block.content}],
            "status": "error" if block.is_error else "success",
        }
    }


def tool_config(request: ProviderRequest) -> dict[str, Any]:
    tools: list[dict[str, Any]] = []
    for t in request.tools:
        spec: dict[str, Any] = {"name": t.name, "inputSchema": {"json": t.input_schema}}
        if t.description:
            spec["description"] = t.description
        tools.append({"toolSpec": spec})
    config: dict[str, Any] = {"tools": tools}
    if request.tool_choice is not None:
        config["toolChoice"] = tool_choice_of(request.tool_choice)
    return config


def tool_choice_of(choice: ToolChoice) -> dict[str, Any]:
    if choice.mode == "tool":
        return {"tool": {"name": choice.name}}
    return {"any": {}} if choice.mode == "required" else {"auto": {}}


class _ToolBlocks:
    """contentBlockIndex → the tool call's position among the answer's calls."""

    def __init__(self) -> None:
        self._calls: dict[int, int] = {}

    def start(self, payload: dict[str, Any]) -> ToolUseDelta | None:
        tool = (payload.get("start") or {}).get("toolUse")
        if not tool:
            return None
        index = int(payload.get("contentBlockIndex") or 0)
        call = self._calls.setdefault(index, len(self._calls))
        return ToolUseDelta(call, id=tool.get("toolUseId"), name=tool.get("name"))

    def delta(self, payload: dict[str, Any]) -> ToolUseDelta | None:
        tool = (payload.get("delta") or {}).get("toolUse")
        call = self._calls.get(int(payload.get("contentBlockIndex") or 0))
        if tool is None or call is None:
            return None
        return ToolUseDelta(call, arguments=str(tool.get("input") or ""))


class BedrockCredentials:
    """The AWS default credential chain, resolved off the event loop."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._credentials: Credentials | None = None
        self._frozen: ReadOnlyCredentials | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> ReadOnlyCredentials:
        creds = self._credentials
        if (
            self._frozen is not None
            and creds is not None
            and not (isinstance(creds, RefreshableCredentials) and creds.refresh_needed())
        ):
            return self._frozen
        async with self._lock:
            if self._credentials is None:
                self._credentials = await asyncio.to_thread(self._session.get_credentials)
            if self._credentials is None:
                raise ProviderUnavailable("bedrock: no AWS credentials found in the chain")
            self._frozen = await asyncio.to_thread(self._credentials.get_frozen_credentials)
            return self._frozen


class BedrockProvider:
    name = "bedrock"
    capabilities = Capabilities(
        unsupported=frozenset({"seed", "response_format", "image_url", "tool_choice.none"})
    )

    def __init__(
        self,
        client: Clients,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        profile: str | None = None,
        session: Session | None = None,
    ) -> None:
        self._client = client
        if session is None:
            session = Session(profile=profile)
            if profile is not None and profile not in session.available_profiles:
                # botocore would only say so on the first request
                raise ConfigurationError(f"bedrock: no AWS profile named {profile!r}")
        region = region or session.get_config_variable("region")
        if not region:
            raise ConfigurationError("bedrock: no region configured (region or AWS_REGION)")
        self._region = str(region)
        self._endpoint = (
            endpoint_url or f"https://bedrock-runtime.{self._region}.amazonaws.com"
        ).rstrip("/")
        self._credentials = BedrockCredentials(session)

    @staticmethod
    def body(request: ProviderRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": [
                {"role": m.role, "content": [block_of(b) for b in m.content]}
                for m in request.messages
            ]
        }
        if request.system:
            body["system"] = [{"text": s} for s in request.system]
        config: dict[str, Any] = {}
        if request.max_tokens is not None:
            config["maxTokens"] = request.max_tokens
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if request.top_p is not None:
            config["topP"] = request.top_p
        if request.stop:
            config["stopSequences"] = list(request.stop)
        if config:
            body["inferenceConfig"] = config
        if request.tools:
            body["toolConfig"] = tool_config(request)
        if request.extras:
            body["additionalModelRequestFields"] = dict(request.extras)
        return body

    async def signed(self, request: ProviderRequest) -> tuple[str, bytes, dict[str, str]]:
        url = f"{self._endpoint}/model/{quote(request.model, safe='')}/converse-stream"
        payload = json.dumps(self.body(request), separators=(",", ":")).encode()
        aws = AWSRequest(
            method="POST",
            url=url,
            data=payload,
            headers={
                "content-type": "application/json",
                "accept": "application/vnd.amazon.eventstream",
            },
        )
        SigV4Auth(await self._credentials.get(), "bedrock", self._region).add_auth(aws)
        return url, payload, dict(aws.headers.items())

    async def stream(self, request: ProviderRequest) -> AsyncIterator[ProviderEvent]:
        url, payload, headers = await self.signed(request)
        usage: Usage | None = None
        reason = "end_turn"
        tools = _ToolBlocks()
        with translate_httpx(self.name):
            async with self._client.stream(
                "POST", url, content=payload, headers=headers
            ) as response:
                if response.status_code >= 400:
                    body = await response.aread()
                    code = response.headers.get("x-amzn-errortype", "")
                    raise bedrock_error(code, error_message(body), response.status_code)
                async for event, data in _events(response):
                    if event == "contentBlockDelta":
                        text = (data.get("delta") or {}).get("text")
                        if text:
                            yield TextDelta(text)
                        elif (call := tools.delta(data)) is not None:
                            yield call
                    elif event == "contentBlockStart":
                        if (call := tools.start(data)) is not None:
                            yield call
                    elif event == "messageStop":
                        reason = data.get("stopReason") or reason
                    elif event == "metadata":
                        u = data.get("usage") or {}
                        usage = Usage(
                            input_tokens=int(u.get("inputTokens") or 0),
                            output_tokens=int(u.get("outputTokens") or 0),
                        )
        if usage is None:
            raise ProviderUnavailable("bedrock: the stream ended without its metadata event")
        yield Finished(usage, stop_reason(reason))


async def _events(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """The stream's events as (``:event-type``, JSON payload); exception frames raised."""
    buffer = EventStreamBuffer()
    async for data in response.aiter_bytes():
        buffer.add_data(data)
        try:
            messages = list(buffer)
        except ParserError as exc:
            raise ProviderUnavailable(f"bedrock: corrupt event stream: {exc}") from exc
        for message in messages:
            headers = message.headers
            try:
                payload = json.loads(message.payload or b"{}")
            except ValueError as exc:
                raise ProviderUnavailable(f"bedrock: bad event: {exc}") from exc
            kind = headers.get(":message-type")
            if kind == "exception":
                raise bedrock_error(
                    str(headers.get(":exception-type", "")), str(payload.get("message", ""))
                )
            if kind != "event":
                raise bedrock_error(
                    str(headers.get(":error-code", "InternalServerException")),
                    str(headers.get(":error-message", "")),
                )
            yield str(headers.get(":event-type")), payload

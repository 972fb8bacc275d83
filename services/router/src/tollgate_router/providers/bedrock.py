"""Amazon Bedrock ConverseStream, async with no thread per stream.

Design choice: botocore signs (SigV4, the standard AWS credential chain, the region and
profile resolution of every AWS SDK) and decodes (``botocore.eventstream.EventStreamBuffer``,
the same CRC-checked decoder boto3 uses), while httpx carries the bytes on the event loop.
aiobotocore would also be async, but it pins botocore to a narrow range that conflicts with
the boto3 the workspace pins, and wraps every stream in its own aiohttp session layer; with
httpx one pooled client serves thousands of concurrent streams on one loop, exactly as the
OpenAI-compatible and Anthropic adapters do. Credentials are resolved off the loop (the chain
may read files or call IMDS/SSO) once, and again only when refreshable ones near expiry.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials, RefreshableCredentials
from botocore.eventstream import EventStreamBuffer, ParserError
from botocore.session import Session

from tollgate_core.contracts import Usage
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
    EmbeddingCall,
    Embeddings,
    Finished,
    ProviderEvent,
    ProviderRequest,
    TextDelta,
)
from tollgate_router.providers.bedrock_embed import embed_bedrock

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
                {"role": m.role, "content": [{"text": b.text} for b in m.content]}
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
        if config:
            body["inferenceConfig"] = config
        return body

    async def signed(self, request: ProviderRequest) -> tuple[str, bytes, dict[str, str]]:
        return await self.sign(
            request.model,
            "converse-stream",
            self.body(request),
            "application/vnd.amazon.eventstream",
        )

    async def sign(
        self, model: str, action: str, body: dict[str, Any], accept: str
    ) -> tuple[str, bytes, dict[str, str]]:
        """URL, payload and SigV4-signed headers of ``POST /model/{model}/{action}``."""
        url = f"{self._endpoint}/model/{quote(model, safe='')}/{action}"
        payload = json.dumps(body, separators=(",", ":")).encode()
        aws = AWSRequest(
            method="POST",
            url=url,
            data=payload,
            headers={"content-type": "application/json", "accept": accept},
        )
        SigV4Auth(await self._credentials.get(), "bedrock", self._region).add_auth(aws)
        return url, payload, dict(aws.headers.items())

    async def invoke(self, model: str, body: dict[str, Any]) -> tuple[Any, int | None]:
        """InvokeModel: the JSON response and the input tokens Bedrock reports in its
        ``x-amzn-bedrock-input-token-count`` header."""
        url, payload, headers = await self.sign(model, "invoke", body, "application/json")
        with translate_httpx(self.name):
            async with self._client.stream(
                "POST", url, content=payload, headers=headers
            ) as response:
                raw = await response.aread()
                if response.status_code >= 400:
                    code = response.headers.get("x-amzn-errortype", "")
                    raise bedrock_error(code, error_message(raw), response.status_code)
                tokens = response.headers.get("x-amzn-bedrock-input-token-count")
                return json.loads(raw), int(tokens) if tokens is not None else None

    async def embed(self, call: EmbeddingCall) -> Embeddings:
        return await embed_bedrock(self.invoke, call)

    async def stream(self, request: ProviderRequest) -> AsyncIterator[ProviderEvent]:
        url, payload, headers = await self.signed(request)
        usage: Usage | None = None
        stop_reason = "end_turn"
        buffer = EventStreamBuffer()
        with translate_httpx(self.name):
            async with self._client.stream(
                "POST", url, content=payload, headers=headers
            ) as response:
                if response.status_code >= 400:
                    body = await response.aread()
                    code = response.headers.get("x-amzn-errortype", "")
                    raise bedrock_error(code, error_message(body), response.status_code)
                async for data in response.aiter_bytes():
                    buffer.add_data(data)
                    try:
                        messages = list(buffer)
                    except ParserError as exc:
                        raise ProviderUnavailable(f"bedrock: corrupt event stream: {exc}") from exc
                    for message in messages:
                        headers_ = message.headers
                        try:
                            payload_ = json.loads(message.payload or b"{}")
                        except ValueError as exc:
                            raise ProviderUnavailable(f"bedrock: bad event: {exc}") from exc
                        kind = headers_.get(":message-type")
                        if kind == "exception":
                            raise bedrock_error(
                                str(headers_.get(":exception-type", "")),
                                str(payload_.get("message", "")),
                            )
                        if kind != "event":
                            raise bedrock_error(
                                str(headers_.get(":error-code", "InternalServerException")),
                                str(headers_.get(":error-message", "")),
                            )
                        event = headers_.get(":event-type")
                        if event == "contentBlockDelta":
                            text = (payload_.get("delta") or {}).get("text")
                            if text:
                                yield TextDelta(text)
                        elif event == "messageStop":
                            stop_reason = payload_.get("stopReason") or stop_reason
                        elif event == "metadata":
                            u = payload_.get("usage") or {}
                            usage = Usage(
                                input_tokens=int(u.get("inputTokens") or 0),
                                output_tokens=int(u.get("outputTokens") or 0),
                            )
        if usage is None:
            raise ProviderUnavailable("bedrock: the stream ended without its metadata event")
        yield Finished(usage, stop_reason)

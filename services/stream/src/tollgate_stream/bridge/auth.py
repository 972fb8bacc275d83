"""Credentials for a remote AppSync Events API: an API key, or IAM (SigV4, botocore)."""

from __future__ import annotations

import json
from typing import Protocol
from urllib.parse import urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tollgate_core.errors import ConfigurationError


class RemoteAuth(Protocol):
    def headers(self, url: str, body: str) -> dict[str, str]:
        """The auth headers for a POST of ``body`` to ``url`` (the HTTP endpoint)."""
        ...


class ApiKeyAuth:
    def __init__(self, api_key: str) -> None:
        self._key = api_key

    def headers(self, url: str, body: str) -> dict[str, str]:
        return {"host": urlsplit(url).netloc, "x-api-key": self._key}


class IamAuth:
    """SigV4 for service ``appsync``, as AppSync expects for HTTP publish and, over the
    WebSocket, for the connect (body ``{}``) and for each subscribe (body of the channel)."""

    def __init__(self, credentials: Credentials | None, region: str) -> None:
        if credentials is None:
            raise ConfigurationError("IAM auth needs AWS credentials (botocore found none)")
        self._credentials = credentials
        self._region = region

    def headers(self, url: str, body: str) -> dict[str, str]:
        request = AWSRequest(
            method="POST",
            url=url,
            data=body.encode(),
            headers={
                "accept": "application/json, text/javascript",
                "content-encoding": "amz-1.0",
                "content-type": "application/json; charset=UTF-8",
                "host": urlsplit(url).netloc,
            },
        )
        SigV4Auth(self._credentials.get_frozen_credentials(), "appsync", self._region).add_auth(
            request
        )
        return {k.lower(): str(v) for k, v in request.headers.items()}


def subscribe_body(channel: str) -> str:
    return json.dumps({"channel": channel}, separators=(",", ":"))


def publish_body(channel: str, events: object) -> str:
    """What a publish signs, and over HTTP sends: ``{"channel", "events"}``."""
    return json.dumps({"channel": channel, "events": events}, separators=(",", ":"))

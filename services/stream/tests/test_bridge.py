"""Bridge-mode pieces in-process: remote credentials and the realtime URL."""

from __future__ import annotations

import pytest
from botocore.credentials import Credentials

from tollgate_core.errors import ConfigurationError
from tollgate_stream.bridge.auth import ApiKeyAuth, IamAuth
from tollgate_stream.bridge.remote import realtime_url
from tollgate_stream.settings import StreamSettings


def test_realtime_url_follows_appsync_and_custom_domains() -> None:
    assert (
        realtime_url("https://abc.appsync-api.eu-west-1.amazonaws.com/event")
        == "wss://abc.appsync-realtime-api.eu-west-1.amazonaws.com/event/realtime"
    )
    assert realtime_url("http://127.0.0.1:9000/event") == "ws://127.0.0.1:9000/event/realtime"


def test_api_key_headers() -> None:
    headers = ApiKeyAuth("da2-key").headers("https://h.example:8443/event", "{}")
    assert headers == {"host": "h.example:8443", "x-api-key": "da2-key"}


def test_iam_headers_are_sigv4_for_appsync_and_cover_the_body() -> None:
    auth = IamAuth(Credentials("AKIDEXAMPLE", "secret", "token"), "eu-west-1")
    one = auth.headers("https://h.example/event", '{"channel":"/a/*"}')
    other = auth.headers("https://h.example/event", '{"channel":"/b/*"}')
    assert one["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/appsync/aws4_request" in one["authorization"]
    assert "host" in one["authorization"].split("SignedHeaders=")[1]
    assert one["x-amz-security-token"] == "token"
    assert one["x-amz-date"] and one["host"] == "h.example"
    assert one["authorization"] != other["authorization"]


def test_iam_without_credentials_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        IamAuth(None, "eu-west-1")


def test_bridge_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="appsync_endpoint"):
        StreamSettings(mode="appsync")
    with pytest.raises(ValueError, match="api_key"):
        StreamSettings(mode="appsync", appsync_endpoint="https://h/event")
    StreamSettings(mode="appsync", appsync_endpoint="https://h/event", appsync_auth="iam")

"""Bridge-mode pieces in-process: remote credentials and the realtime URL."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from botocore.credentials import Credentials

from tollgate_core.errors import ConfigurationError
from tollgate_stream.bridge.auth import ApiKeyAuth, IamAuth, subscribe_body
from tollgate_stream.bridge.remote import realtime_url
from tollgate_stream.bridge.verify import SigV4Verifier
from tollgate_stream.errors import AppSyncError
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


# -- what relay mode checks of a signature ---------------------------------------------------


def _signed(body: str, secret: str = "bridge-secret", token: str | None = "tok") -> dict[str, str]:  # noqa: S107
    credentials = Credentials("AKIDBRIDGE", secret, token)
    return IamAuth(credentials, "eu-west-1").headers("https://relay.example/event", body)


def _verify(headers: dict[str, str], body: str, **kw: object) -> None:
    SigV4Verifier(Credentials("AKIDBRIDGE", "bridge-secret"), "eu-west-1").verify(
        headers,
        url="https://relay.example/event",
        payload_sha256=hashlib.sha256(body.encode()).hexdigest(),
        **kw,  # type: ignore[arg-type]
    )


def test_a_signature_of_the_bridge_verifies() -> None:
    body = subscribe_body("/Inbound-Messages/*")
    _verify(_signed(body), body)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda h, b: (h, b + " "), "does not match"),
        (lambda h, b: (_signed(b, secret="wrong"), b), "does not match"),
        (lambda h, b: ({**h, "content-type": "application/json"}, b), "does not match"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "x-amz-date"}, b), "malformed"),
        (lambda h, b: ({**h, "authorization": "Bearer x"}, b), "no SigV4"),
    ],
    ids=["body", "secret", "signed-header", "no-date", "not-sigv4"],
)
def test_a_changed_request_or_a_wrong_key_is_unauthorized(
    tamper: Callable[[dict[str, str], str], tuple[dict[str, str], str]], message: str
) -> None:
    body = '{"channel":"/Outbound-Messages/u","events":["{}"]}'
    headers, sent = tamper(_signed(body), body)
    with pytest.raises(AppSyncError, match=message) as raised:
        _verify(headers, sent)
    assert raised.value.code == 401


def test_an_old_signature_is_unauthorized() -> None:
    body = "{}"
    later = datetime.now(UTC) + timedelta(minutes=10)
    with pytest.raises(AppSyncError, match="expired"):
        _verify(_signed(body), body, now=later)

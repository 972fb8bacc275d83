"""Where AppSync clients put their credentials."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping

PROTOCOL = "aws-appsync-event-ws"
_HEADER_PREFIX = "header-"
_AUTH_KEYS = ("authorization", "x-api-key", "x-amz-date", "x-amz-security-token", "host")
#: the headers that carry a credential; the rest (host, x-amz-date) do not change a decision
CREDENTIAL_HEADERS = ("authorization", "x-api-key")
SIGV4_SCHEME = "AWS4-HMAC-SHA256 "


def from_subprotocols(subprotocols: Iterable[str]) -> dict[str, str]:
    """Decode the ``header-<base64url(JSON)>`` subprotocol, if offered."""
    for proto in subprotocols:
        if proto.startswith(_HEADER_PREFIX):
            encoded = proto[len(_HEADER_PREFIX) :]
            try:
                raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
                data = json.loads(raw)
            except ValueError:
                return {}
            if isinstance(data, dict):
                return normalize(data)
    return {}


def normalize(headers: Mapping[str, object]) -> dict[str, str]:
    """Lower-cased auth headers with string values only."""
    return {k.lower(): v for k, v in headers.items() if isinstance(v, str)}


def pick(headers: Mapping[str, str]) -> dict[str, str]:
    """The auth-related subset of HTTP request headers: the credentials, and for a SigV4
    signature every header it signs."""
    keys = set(_AUTH_KEYS)
    sigv4 = sigv4_fields(headers.get("authorization", ""))
    if sigv4 is not None and "SignedHeaders" in sigv4:
        keys.update(sigv4["SignedHeaders"].split(";"))
    return {k: headers[k] for k in keys if k in headers}


def sigv4_fields(authorization: str) -> dict[str, str] | None:
    """``Credential``, ``SignedHeaders`` and ``Signature`` of a SigV4 ``Authorization``
    header; None when it is not one."""
    if not authorization.startswith(SIGV4_SCHEME):
        return None
    fields: dict[str, str] = {}
    for part in authorization[len(SIGV4_SCHEME) :].split(","):
        name, _, value = part.strip().partition("=")
        fields[name] = value
    return fields

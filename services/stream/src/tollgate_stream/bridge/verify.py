"""Checking AWS Signature Version 4 as AppSync does: the counterpart of :class:`IamAuth`,
used by relay mode so that what bridge mode signs is verified, not just sent."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tollgate_stream.appsync.auth_headers import sigv4_fields
from tollgate_stream.errors import AppSyncError


class _KnownPayload(SigV4Auth):  # type: ignore[misc]
    """SigV4 with the payload's SHA-256 given rather than read from the request."""

    def __init__(self, credentials: Credentials, service: str, region: str, sha256: str) -> None:
        super().__init__(credentials, service, region)
        self._sha256 = sha256

    def payload(self, request: AWSRequest) -> str:
        return self._sha256


@dataclass(frozen=True)
class SigV4Verifier:
    """What an API checks of a SigV4-signed ``method`` request: signed by ``credentials``
    for ``service`` in ``region``, dated within ``max_skew_s``."""

    credentials: Credentials
    region: str
    service: str = "appsync"
    method: str = "POST"
    max_skew_s: float = 300.0

    def verify(
        self,
        headers: Mapping[str, str],
        *,
        url: str,
        payload_sha256: str,
        now: datetime | None = None,
    ) -> None:
        """Raise ``UnauthorizedException`` unless ``headers`` carry a valid signature of a
        request to ``url`` with that payload."""
        fields = sigv4_fields(headers.get("authorization", ""))
        if fields is None:
            raise AppSyncError.unauthorized("no SigV4 authorization")
        try:
            access_key, _date, region, service, terminator = fields["Credential"].split("/")
            signed = fields["SignedHeaders"].split(";")
            stamp = headers["x-amz-date"]
            signed_at = datetime.strptime(stamp, SIGV4_TIMESTAMP).replace(tzinfo=UTC)
            values = {name: headers[name] for name in signed}
        except (KeyError, ValueError) as exc:
            raise AppSyncError.unauthorized(f"malformed SigV4 authorization: {exc}") from exc
        if access_key != self.credentials.access_key:
            raise AppSyncError.unauthorized("unknown access key")
        if (region, service, terminator) != (self.region, self.service, "aws4_request"):
            raise AppSyncError.unauthorized("signature scope is not this API's")
        if "host" not in signed:
            raise AppSyncError.unauthorized("the host header must be signed")
        if abs(((now or datetime.now(UTC)) - signed_at).total_seconds()) > self.max_skew_s:
            raise AppSyncError.unauthorized("signature expired or dated in the future")
        request = AWSRequest(method=self.method, url=url, headers=values)
        request.context["timestamp"] = stamp
        if not hmac.compare_digest(self._signature(request, payload_sha256), fields["Signature"]):
            raise AppSyncError.unauthorized("signature does not match")

    def _signature(self, request: AWSRequest, payload_sha256: str) -> str:
        signer = _KnownPayload(self.credentials, self.service, self.region, payload_sha256)
        canonical = signer.canonical_request(request)
        return str(signer.signature(signer.string_to_sign(request, canonical), request))

"""AppSync Events channel paths: parsing, limits and wildcard matching."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tollgate_stream.errors import AppSyncError

MAX_SEGMENTS = 5
_SEGMENT = re.compile(r"[A-Za-z0-9-]{1,50}")
_NAMESPACE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,48}[A-Za-z0-9])?")


@dataclass(frozen=True, slots=True)
class Channel:
    """A channel path such as ``/Outbound-Messages/alice/chat-1`` (``wildcard`` when it ends
    in ``/*``)."""

    segments: tuple[str, ...]
    wildcard: bool = False

    @property
    def namespace(self) -> str:
        return self.segments[0]

    @property
    def path(self) -> str:
        return "/" + "/".join(self.segments) + ("/*" if self.wildcard else "")

    def matches(self, concrete: Channel) -> bool:
        """Whether a subscription on ``self`` receives events published on ``concrete``."""
        if self.wildcard:
            return concrete.segments[: len(self.segments)] == self.segments
        return concrete.segments == self.segments


def parse_channel(path: object, *, allow_wildcard: bool) -> Channel:
    if not isinstance(path, str) or not path:
        raise AppSyncError.bad_request("channel must be a non-empty string")
    raw = path if path.startswith("/") else "/" + path
    parts = raw[1:].split("/")
    wildcard = parts[-1] == "*"
    if wildcard:
        if not allow_wildcard:
            raise AppSyncError.bad_request("wildcards are not allowed when publishing")
        parts = parts[:-1]
    if not parts or len(parts) > MAX_SEGMENTS:
        raise AppSyncError.bad_request(f"a channel has 1 to {MAX_SEGMENTS} segments")
    if not _NAMESPACE.fullmatch(parts[0]):
        raise AppSyncError.bad_request(f"invalid namespace {parts[0][:60]!r}")
    for part in parts[1:]:
        if not _SEGMENT.fullmatch(part):
            raise AppSyncError.bad_request(
                "channel segments are 1-50 characters of A-Z, a-z, 0-9 and '-'"
            )
    return Channel(tuple(parts), wildcard)

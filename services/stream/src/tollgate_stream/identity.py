"""Who is calling. The edge resolves an :class:`Identity` for every connection and message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tollgate_stream.appsync.channels import Channel
from tollgate_stream.errors import AppSyncError


@dataclass(frozen=True, slots=True)
class Identity:
    principal: str
    groups: tuple[str, ...] = ()


class Authorizer(Protocol):
    async def for_channel(self, channel: Channel, headers: dict[str, str]) -> Identity:
        """The identity allowed to use ``channel`` with these auth headers, or raise
        :class:`AppSyncError`."""
        ...


class ChannelOwnerAuthorizer:
    """Development authorizer: trusts the ``<sub>`` segment of the channel as the caller.

    It enforces the channel shape (``/<namespace>/<sub>[/…]``, no wildcard above a sub) but
    verifies no credential; it is what ``TOLLGATE_STREAM_AUTH_MODE=none`` selects.
    """

    async def for_channel(self, channel: Channel, headers: dict[str, str]) -> Identity:
        if len(channel.segments) < 2:
            raise AppSyncError.forbidden(f"{channel.path}: the second segment must be your sub")
        return Identity(principal=channel.segments[1])

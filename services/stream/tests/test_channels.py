from __future__ import annotations

import pytest

from tollgate_stream.appsync.channels import Channel, parse_channel
from tollgate_stream.errors import AppSyncError


@pytest.mark.parametrize(
    ("path", "segments", "wildcard"),
    [
        ("/Inbound-Messages/alice", ("Inbound-Messages", "alice"), False),
        ("Outbound-Messages/alice/chat-1", ("Outbound-Messages", "alice", "chat-1"), False),
        ("/Outbound-Messages/alice/*", ("Outbound-Messages", "alice"), True),
        ("/a/b/c/d/e", ("a", "b", "c", "d", "e"), False),
    ],
)
def test_valid_channels(path: str, segments: tuple[str, ...], wildcard: bool) -> None:
    channel = parse_channel(path, allow_wildcard=True)
    assert channel == Channel(segments, wildcard)


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/",
        "//",
        "/a//b",
        "/a/b/c/d/e/f",
        "/a/" + "x" * 51,
        "/a/b c",
        "/a/b_c",
        "/-a/b",
        "/a/*/b",
        "/a/é",
        42,
        None,
    ],
)
def test_invalid_channels_are_bad_requests(path: object) -> None:
    with pytest.raises(AppSyncError) as info:
        parse_channel(path, allow_wildcard=True)
    assert info.value.appsync_type == "BadRequestException"


def test_wildcards_only_when_subscribing() -> None:
    with pytest.raises(AppSyncError):
        parse_channel("/Inbound-Messages/alice/*", allow_wildcard=False)


def test_wildcard_matches_the_subtree_only() -> None:
    sub = parse_channel("/Outbound-Messages/alice/*", allow_wildcard=True)
    assert sub.matches(parse_channel("/Outbound-Messages/alice", allow_wildcard=False))
    assert sub.matches(parse_channel("/Outbound-Messages/alice/x/y", allow_wildcard=False))
    assert not sub.matches(parse_channel("/Outbound-Messages/alicia", allow_wildcard=False))
    assert not sub.matches(parse_channel("/Outbound-Messages/bob", allow_wildcard=False))

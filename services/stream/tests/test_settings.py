from __future__ import annotations

import pytest
from pydantic import ValidationError

from tollgate_stream.settings import StreamSettings

PARTITIONS = set(range(12))


def test_all_partitions_by_default() -> None:
    assert StreamSettings().owned_partitions(PARTITIONS) == list(range(12))


def test_an_explicit_list() -> None:
    assert StreamSettings(reply_partitions="3, 1").owned_partitions(PARTITIONS) == [1, 3]
    with pytest.raises(ValueError, match="do not exist"):
        StreamSettings(reply_partitions="12").owned_partitions(PARTITIONS)


def test_replicas_split_the_partitions_without_overlap() -> None:
    owned = [
        StreamSettings(
            reply_partitions="replica", replica_index=i, replica_count=3
        ).owned_partitions(PARTITIONS)
        for i in range(3)
    ]
    assert owned[1] == [1, 4, 7, 10]
    assert sorted(p for o in owned for p in o) == list(range(12))
    with pytest.raises(ValueError):
        StreamSettings(
            reply_partitions="replica", replica_index=3, replica_count=3
        ).owned_partitions(PARTITIONS)


def test_nonsense_is_refused() -> None:
    with pytest.raises(ValidationError):
        StreamSettings(reply_partitions="some")

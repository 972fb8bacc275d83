"""Group commit: what arrives while a commit runs shares the next one; failures reach every
caller of the batch that failed, and only them."""

from __future__ import annotations

import asyncio

import pytest

from tollgate_core.batching import GroupCommit
from tollgate_core.errors import DependencyUnavailable


async def test_items_submitted_while_a_commit_runs_share_the_next_commit() -> None:
    commits: list[list[int]] = []
    gate = asyncio.Event()

    async def commit(key: str, items: list[int]) -> list[str]:
        commits.append(items)
        await gate.wait()
        return [f"{key}{i}" for i in items]

    group: GroupCommit[int, str] = GroupCommit("test", commit)
    first = asyncio.create_task(group.submit("k", 0))
    await asyncio.sleep(0.01)  # alone: committed at once
    assert commits == [[0]]
    rest = [asyncio.create_task(group.submit("k", i)) for i in (1, 2, 3)]
    other = asyncio.create_task(group.submit("j", 9))  # another key does not wait
    await asyncio.sleep(0.01)
    assert commits == [[0], [9]]
    gate.set()
    assert await first == "k0"
    assert [await t for t in rest] == ["k1", "k2", "k3"]
    assert await other == "j9"
    assert commits == [[0], [9], [1, 2, 3]]


async def test_an_outage_fails_the_whole_batch_and_a_bad_item_only_itself() -> None:
    down = True

    async def commit(_: str, items: list[int]) -> list[int]:
        await asyncio.sleep(0)
        if down:
            raise DependencyUnavailable("database down")
        if -1 in items:
            raise ValueError("cannot store -1")
        return items

    group: GroupCommit[int, int] = GroupCommit("test", commit)
    failed = await asyncio.gather(*(group.submit("", i) for i in (1, 2)), return_exceptions=True)
    assert all(isinstance(r, DependencyUnavailable) for r in failed), failed
    down = False
    batch = (group.submit("", i) for i in (1, -1, 2))
    results = await asyncio.gather(*batch, return_exceptions=True)
    assert results[0] == 1 and results[2] == 2
    assert isinstance(results[1], ValueError)
    with pytest.raises(ValueError):
        await group.submit("", -1)

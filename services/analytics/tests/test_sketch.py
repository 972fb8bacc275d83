"""The mergeable quantile sketch: relative accuracy, merging, serialisation."""

from __future__ import annotations

import random

from tollgate_analytics.aggregates import Aggregate, rollup, table_key
from tollgate_analytics.sketch import Sketch


def exact(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


def test_quantiles_are_within_the_relative_accuracy() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(5, 1) for _ in range(20_000)]
    sketch = Sketch(0.01)
    for v in values:
        sketch.add(v)
    for q in (0.5, 0.95, 0.99):
        got = sketch.quantile(q)
        assert got is not None
        assert abs(got - exact(values, q)) <= 0.011 * exact(values, q)


def test_merged_sketches_equal_one_sketch_of_all_values() -> None:
    rng = random.Random(3)
    a, b, whole = Sketch(), Sketch(), Sketch()
    for i in range(5000):
        v = rng.uniform(0, 2000)
        (a if i % 3 else b).add(v)
        whole.add(v)
    a.merge(b)
    assert a.to_dict() == whole.to_dict()
    assert Sketch.from_dict(a.to_dict()).quantile(0.95) == whole.quantile(0.95)


def test_empty_and_zero_values() -> None:
    sketch = Sketch()
    assert sketch.quantile(0.5) is None
    sketch.add(0)
    sketch.add(0)
    sketch.add(100)
    assert sketch.quantile(0.5) == 0.0
    assert abs((sketch.quantile(1.0) or 0) - 100) <= 1


def test_an_aggregate_counts_each_offset_once_and_rolls_up_across_partitions(
    make_request: object,
) -> None:
    from datetime import UTC, datetime

    log, _ = make_request(9, finished_at=datetime(2026, 1, 1, tzinfo=UTC))  # type: ignore[operator]
    first = Aggregate()
    assert first.apply(log, 10)
    assert not first.apply(log, 10)  # redelivered
    second = Aggregate.from_dict(Aggregate().to_dict())
    assert second.apply(log, 3)
    items = [
        (table_key(60, "model", log.model, 0), first.to_dict()),
        (table_key(60, "model", log.model, 1), second.to_dict()),
        (table_key(0, "model", log.model, 1), second.to_dict()),  # before the window
    ]
    merged = rollup(items, "model", since_minute=60)[log.model].summary()
    assert merged["requests"] == 2
    assert merged["input_tokens"] == 2 * log.input_tokens
    assert merged["errors"] == {"provider_throttled": 2}
    assert merged["latency_ms_p50"] is not None

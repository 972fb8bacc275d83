"""A mergeable quantile sketch (DDSketch-style log-bucket histogram), written by hand.

Values ``v > 0`` fall in bucket ``ceil(log_gamma(v))`` with ``gamma = (1 + a) / (1 - a)``; a
quantile read back from its bucket is within relative error ``a`` of the true value. Two
sketches with the same accuracy merge by adding bucket counts, so per-partition, per-minute
sketches combine into any larger window exactly as if one sketch had seen every value. The
state is a small dict, serialisable as JSON for Faust's changelog.
"""

from __future__ import annotations

import math
from typing import Any

DEFAULT_ACCURACY = 0.01


class Sketch:
    def __init__(self, accuracy: float = DEFAULT_ACCURACY) -> None:
        if not 0 < accuracy < 1:
            raise ValueError("accuracy must be in (0, 1)")
        self.accuracy = accuracy
        self._gamma = (1 + accuracy) / (1 - accuracy)
        self._log_gamma = math.log(self._gamma)
        self.buckets: dict[int, int] = {}
        self.zeros = 0
        self.count = 0

    def add(self, value: float) -> None:
        if value < 0:
            raise ValueError("the sketch holds non-negative values")
        self.count += 1
        if value == 0:
            self.zeros += 1
            return
        index = math.ceil(math.log(value) / self._log_gamma)
        self.buckets[index] = self.buckets.get(index, 0) + 1

    def merge(self, other: Sketch) -> None:
        if other.accuracy != self.accuracy:
            raise ValueError("only sketches of the same accuracy merge")
        for index, n in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + n
        self.zeros += other.zeros
        self.count += other.count

    def quantile(self, q: float) -> float | None:
        """The value at quantile ``q`` (0..1), or None when the sketch is empty."""
        if self.count == 0:
            return None
        rank = q * (self.count - 1)
        seen = self.zeros
        if rank < seen:
            return 0.0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if rank < seen:
                return 2 * self._gamma**index / (self._gamma + 1)
        return 2 * self._gamma ** max(self.buckets) / (self._gamma + 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.accuracy,
            "z": self.zeros,
            "b": {str(k): v for k, v in self.buckets.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sketch:
        sketch = cls(float(data.get("a", DEFAULT_ACCURACY)))
        sketch.zeros = int(data.get("z", 0))
        sketch.buckets = {int(k): int(v) for k, v in dict(data.get("b", {})).items()}
        sketch.count = sketch.zeros + sum(sketch.buckets.values())
        return sketch

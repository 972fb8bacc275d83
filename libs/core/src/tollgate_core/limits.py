"""The limits every service agrees on, read once from ``TOLLGATE_LIMIT_*``.

A request must be refused at the edge, with an error naming the field, if any later hop
could not carry or store it: an output-token budget the meter's INTEGER columns cannot hold,
a text Postgres cannot store, a record larger than the broker accepts. The edge and the meter
read the same :class:`Limits`, so the two agree; the meter checks again before its ledger,
since a request may come from an older or a foreign producer.
"""

from __future__ import annotations

from prometheus_client import Counter
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tollgate_core.errors import RequestError

BAD_INPUT = Counter(
    "tollgate_bad_input_total",
    "Requests, messages or records refused as malformed or out of bounds (they change no state)",
    ["where", "field"],
)

#: Postgres INTEGER, the type of a reservation's token columns
INT32_MAX = 2**31 - 1

#: the default limit of a Kafka record's value: below the broker's default
#: ``message.max.bytes`` (1 MiB) with room for the key and headers
DEFAULT_MAX_RECORD_BYTES = 1_000_000

#: what an admission record adds around the request it carries (its envelope, the reserved
#: counts, a timestamp); the edge keeps requests this much below the record limit
ADMISSION_HEADROOM_BYTES = 4096


class Limits(BaseSettings):
    """Limits shared by the edge, the meter and every Kafka producer."""

    model_config = SettingsConfigDict(env_prefix="TOLLGATE_LIMIT_", frozen=True, extra="ignore")

    #: the largest ``max_tokens`` (``maxTokens``, ``max_completion_tokens``) a request may ask for
    max_tokens: int = Field(default=1_000_000, ge=1, le=INT32_MAX // 2)
    #: the largest value of any Kafka record Tollgate produces; keep it below the broker's
    #: ``message.max.bytes`` (1 MiB by default) minus room for the key and headers
    max_record_bytes: int = Field(default=DEFAULT_MAX_RECORD_BYTES, ge=16 * 1024)

    @property
    def max_request_bytes(self) -> int:
        """The largest encoded request the edge accepts: its admission must still fit."""
        return self.max_record_bytes - ADMISSION_HEADROOM_BYTES


def count_bad_input(where: str, field: object) -> None:
    """Count one refused input, by its top-level field (bounded label values)."""
    name = str(field or "?").split(".", 1)[0][:64] or "?"
    BAD_INPUT.labels(where, name).inc()


def check_text(field: str, value: str | None, *, max_chars: int | None = None) -> None:
    """Refuse a text Postgres cannot store (a NUL character) or that is too long."""
    if value is None:
        return
    if "\x00" in value:
        raise RequestError(f"{field} must not contain a NUL character", details={"field": field})
    if max_chars is not None and len(value) > max_chars:
        raise RequestError(
            f"{field} is longer than {max_chars} characters", details={"field": field}
        )


def check_tokens(field: str, value: int | None, *, limit: int) -> None:
    if value is not None and not 0 <= value <= limit:
        raise RequestError(f"{field} must be between 0 and {limit}", details={"field": field})

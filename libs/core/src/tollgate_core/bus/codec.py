"""Encoding events to Kafka records and decoding them back, by schema header."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Generic, TypeVar

from pydantic import TypeAdapter, ValidationError

from tollgate_core.contracts import Contract
from tollgate_core.errors import ContractError, UnsupportedSchemaError

T = TypeVar("T")


def encode(event: Contract) -> bytes:
    return event.model_dump_json().encode()


class Decoder(Generic[T]):
    """Decodes record values of the schemas it accepts into ``T``.

    ``Decoder.of(ChatRequestV1)`` accepts that one contract; ``Decoder.union(REPLY_SCHEMA,
    ReplyV1)`` accepts a discriminated union sharing one schema name.
    """

    def __init__(self, adapters: Mapping[str, TypeAdapter[Any]]) -> None:
        self._adapters = dict(adapters)

    @classmethod
    def of(cls, *contracts: type[Contract]) -> Decoder[Any]:
        return cls({c.SCHEMA: TypeAdapter(c) for c in contracts})

    @classmethod
    def union(cls, schema: str, type_: Any) -> Decoder[Any]:
        return cls({schema: TypeAdapter(type_)})

    @property
    def schemas(self) -> frozenset[str]:
        return frozenset(self._adapters)

    def decode(self, value: bytes | None, schema: str | None) -> T:
        if schema is None:
            raise UnsupportedSchemaError("record has no tollgate-schema header")
        adapter = self._adapters.get(schema)
        if adapter is None:
            raise UnsupportedSchemaError(
                f"schema {schema!r} is not one of {sorted(self._adapters)}"
            )
        if value is None:
            raise ContractError("record has no value")
        try:
            result: T = adapter.validate_json(value)
        except ValidationError as exc:
            raise ContractError(
                f"record does not match {schema}: {exc.error_count()} error(s)",
                details={"errors": exc.errors(include_url=False, include_input=False)},
            ) from exc
        return result

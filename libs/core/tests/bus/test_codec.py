from __future__ import annotations

import pytest

from tollgate_core.bus import Decoder, encode
from tollgate_core.contracts import REPLY_SCHEMA, ReplyChunkV1, ReplyV1, UsageRecordV1
from tollgate_core.errors import ContractError, UnsupportedSchemaError


def test_decodes_by_schema_header() -> None:
    chunk = ReplyChunkV1(request_id="r", principal="p", seq=0, text="x")
    decoder = Decoder.union(REPLY_SCHEMA, ReplyV1)
    assert decoder.decode(encode(chunk), REPLY_SCHEMA) == chunk


@pytest.mark.parametrize(
    ("value", "schema", "error"),
    [
        (b"{}", None, UnsupportedSchemaError),
        (b"{}", "tollgate.usage.v2", UnsupportedSchemaError),
        (b"not json", UsageRecordV1.SCHEMA, ContractError),
        (b'{"request_id": 1}', UsageRecordV1.SCHEMA, ContractError),
        (None, UsageRecordV1.SCHEMA, ContractError),
    ],
)
def test_refuses_what_it_cannot_decode(
    value: bytes | None, schema: str | None, error: type[Exception]
) -> None:
    with pytest.raises(error):
        Decoder.of(UsageRecordV1).decode(value, schema)

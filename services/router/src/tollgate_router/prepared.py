"""Prepared responses: answers an operator stores in advance, served instead of calling a
model when a request matches exactly.

The key is a SHA-256 over the *normalized* system prompt and the *whole* message list (role
and text of every turn, in order), so two conversations that end with the same question do
not share an answer. Model scope (a model id or ``*``) and principal scope (a principal or
public) are columns of the entry, matched on lookup: a per-principal answer is only ever
served to that principal, and it wins over a public one. Every entry has one ``expires_at``;
an expired entry is never served and is purged by the sweeper.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from tollgate_core.contracts import ChatMessage

ANY_MODEL = "*"


def normalize_text(text: str) -> str:
    """NFC, whitespace runs collapsed to one space, ends stripped; case is kept."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def prepared_key(system: Sequence[str], messages: Sequence[ChatMessage]) -> str:
    canonical = {
        "system": [normalize_text(s) for s in system if normalize_text(s)],
        "messages": [
            [m.role, normalize_text("".join(b.text for b in m.content))] for m in messages
        ],
    }
    blob = json.dumps(canonical, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class PreparedResponse:
    id: str
    key: str
    model_scope: str
    principal: str | None
    response: str
    expires_at: datetime
    created_at: datetime
    description: str = ""


class PreparedStore(Protocol):
    async def add(self, entry: PreparedResponse) -> PreparedResponse:
        """Insert, or replace the entry with the same key, model scope and principal."""
        ...

    async def list(self, *, principal: str | None = None) -> list[PreparedResponse]: ...

    async def remove(self, entry_id: str) -> bool: ...

    async def lookup(
        self, key: str, *, model: str, principal: str, now: datetime
    ) -> PreparedResponse | None:
        """The live entry for ``key`` the principal may see: own before public, exact model
        before ``*``."""
        ...

    async def purge_expired(self, now: datetime) -> int: ...


class InMemoryPreparedStore:
    def __init__(self) -> None:
        self.entries: dict[str, PreparedResponse] = {}

    async def add(self, entry: PreparedResponse) -> PreparedResponse:
        for other in list(self.entries.values()):
            if (other.key, other.model_scope, other.principal) == (
                entry.key,
                entry.model_scope,
                entry.principal,
            ):
                del self.entries[other.id]
        self.entries[entry.id] = entry
        return entry

    async def list(self, *, principal: str | None = None) -> list[PreparedResponse]:
        return [e for e in self.entries.values() if principal is None or e.principal == principal]

    async def remove(self, entry_id: str) -> bool:
        return self.entries.pop(entry_id, None) is not None

    async def lookup(
        self, key: str, *, model: str, principal: str, now: datetime
    ) -> PreparedResponse | None:
        live = [
            e
            for e in self.entries.values()
            if e.key == key
            and e.model_scope in (model, ANY_MODEL)
            and e.principal in (principal, None)
            and e.expires_at > now
        ]
        live.sort(key=lambda e: (e.principal is None, e.model_scope == ANY_MODEL))
        return live[0] if live else None

    async def purge_expired(self, now: datetime) -> int:
        dead = [i for i, e in self.entries.items() if e.expires_at <= now]
        for i in dead:
            del self.entries[i]
        return len(dead)

"""API keys: ``tg_<prefix>_<secret>``. The full key is shown once, at creation; only its
SHA-256 is stored (the secret is 256 random bits, so a fast hash is enough), next to the
prefix used to find the row."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol

from tollgate_auth.domain import Principal
from tollgate_auth.errors import InvalidApiKey
from tollgate_core.contracts import utcnow

KEY_PREFIX = "tg_"


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    principal: str
    groups: tuple[str, ...]
    name: str
    key_hash: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    def public(self) -> dict[str, object]:
        """What the admin API and CLI show of a key (never the hash)."""
        return {
            "id": self.key_id,
            "principal": self.principal,
            "groups": list(self.groups),
            "name": self.name,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(
    principal: str,
    groups: tuple[str, ...],
    *,
    name: str = "",
    expires_at: datetime | None = None,
) -> tuple[str, ApiKey]:
    """A fresh secret and the record to store for it."""
    key_id = secrets.token_hex(6)
    secret = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    record = ApiKey(
        key_id=key_id,
        principal=principal,
        groups=groups,
        name=name,
        key_hash=hash_key(secret),
        created_at=utcnow(),
        expires_at=expires_at,
    )
    return secret, record


def key_id_of(secret: str) -> str | None:
    if not secret.startswith(KEY_PREFIX):
        return None
    key_id, sep, rest = secret[len(KEY_PREFIX) :].partition("_")
    return key_id if sep and key_id and rest else None


def looks_like_key(value: str) -> bool:
    return key_id_of(value) is not None


class ApiKeyStore(Protocol):
    async def add(self, key: ApiKey) -> None: ...

    async def get(self, key_id: str) -> ApiKey | None: ...

    async def list(self, principal: str | None = None) -> list[ApiKey]: ...

    async def revoke(self, key_id: str) -> bool:
        """Mark revoked; False when no such key or already revoked."""
        ...


class InMemoryApiKeyStore:
    def __init__(self) -> None:
        self._keys: dict[str, ApiKey] = {}

    async def add(self, key: ApiKey) -> None:
        self._keys[key.key_id] = key

    async def get(self, key_id: str) -> ApiKey | None:
        return self._keys.get(key_id)

    async def list(self, principal: str | None = None) -> list[ApiKey]:
        return [k for k in self._keys.values() if principal is None or k.principal == principal]

    async def revoke(self, key_id: str) -> bool:
        key = self._keys.get(key_id)
        if key is None or key.revoked_at is not None:
            return False
        self._keys[key_id] = replace(key, revoked_at=utcnow())
        return True


#: how long a key lives when its creator does not say (90 days)
DEFAULT_KEY_TTL_S = 90 * 86_400


class ApiKeys:
    """Creating, checking and revoking keys over a store. A key created without an expiry
    expires after ``default_ttl_s`` (``None``: never)."""

    def __init__(
        self, store: ApiKeyStore, *, default_ttl_s: int | None = DEFAULT_KEY_TTL_S
    ) -> None:
        self.store = store
        self._default_ttl_s = default_ttl_s

    async def create(
        self,
        principal: str,
        groups: tuple[str, ...] = (),
        *,
        name: str = "",
        expires_at: datetime | None = None,
    ) -> tuple[str, ApiKey]:
        if expires_at is None and self._default_ttl_s:
            expires_at = utcnow() + timedelta(seconds=self._default_ttl_s)
        secret, record = new_key(principal, groups, name=name, expires_at=expires_at)
        await self.store.add(record)
        return secret, record

    async def verify(self, secret: str) -> Principal:
        key_id = key_id_of(secret)
        record = await self.store.get(key_id) if key_id else None
        if record is None or not hmac.compare_digest(record.key_hash, hash_key(secret)):
            raise InvalidApiKey("unknown API key")
        if record.revoked_at is not None:
            raise InvalidApiKey("API key has been revoked")
        if record.expires_at is not None and record.expires_at <= utcnow():
            raise InvalidApiKey("API key has expired")
        return Principal(
            sub=record.principal,
            groups=record.groups,
            credential="api_key",
            expires_at=record.expires_at.timestamp() if record.expires_at else None,
        )

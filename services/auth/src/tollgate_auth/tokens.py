"""JWT verification against the keys of trusted issuers (Cognito user pools, any OIDC IdP).

Only asymmetric algorithms are accepted (RS256, ES256): ``none`` and the HMAC family are
refused before any key is looked at, so a public key can never be used as an HMAC secret.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jwt

from tollgate_auth.domain import Principal
from tollgate_auth.errors import InvalidToken, TokenExpired
from tollgate_core.errors import DependencyUnavailable
from tollgate_core.retry import Backoff

logger = logging.getLogger(__name__)

ALGORITHMS = frozenset({"RS256", "ES256"})


class KeySource(Protocol):
    """Where an issuer's JSON Web Key Set comes from."""

    async def fetch(self) -> Mapping[str, Any]:
        """The JWKS document; raise :class:`DependencyUnavailable` when unreachable."""
        ...


class StaticKeys:
    """A key set known in-process (the development IdP's own keys)."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        self._jwks = jwks

    async def fetch(self) -> Mapping[str, Any]:
        return self._jwks


class JwksCache:
    """An issuer's keys by ``kid``.

    * Fresh for ``ttl_s``; after that the cached keys keep verifying while one refresh runs
      in the background, so no verification waits on the IdP.
    * A token naming a ``kid`` not in the cache (key rotation) refetches at once, but at most
      every ``min_refresh_s``.
    * A failed refresh — the IdP unreachable, or a document with no usable key (``{"keys":
      []}``) — never replaces the keys: they are served stale for up to ``max_stale_s``
      past their TTL, and the next attempt waits ``min_refresh_s`` (at least 1 s), doubling
      after each failure up to ``max_backoff_s``. Only with no usable key at all is a
      verification refused as :class:`DependencyUnavailable` (503), and then without a fetch
      of its own while the backoff runs.
    """

    def __init__(
        self,
        source: KeySource,
        *,
        ttl_s: float,
        min_refresh_s: float,
        max_backoff_s: float = 300.0,
        max_stale_s: float = 86_400.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._ttl_s = ttl_s
        self._min_refresh_s = min_refresh_s
        # a clock-driven backoff: the delay says when the next fetch may start, nobody sleeps
        self._backoff = Backoff(max(min_refresh_s, 1.0), max(max_backoff_s, 1.0))
        self._max_stale_s = max_stale_s
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._next_attempt = float("-inf")
        self._last_error = "no JWKS fetched yet"
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None

    async def key(self, kid: str) -> jwt.PyJWK | None:
        now = self._clock()
        if self._usable(now) and kid in self._keys:
            if self._expired(now) and now >= self._next_attempt:
                self._refresh_in_background()
            return self._keys[kid]
        if self._may_fetch(now, kid):
            async with self._lock:  # one fetch for a burst of tokens with a new kid
                if self._may_fetch(self._clock(), kid):
                    await self._refresh()
        if not self._usable(self._clock()):
            raise DependencyUnavailable(f"no usable JWKS: {self._last_error}")
        return self._keys.get(kid)

    async def settled(self) -> None:
        """Wait for a background refresh (tests)."""
        if self._background is not None:
            await self._background

    def _usable(self, now: float) -> bool:
        return (
            self._fetched_at is not None
            and bool(self._keys)
            and now - self._fetched_at <= self._ttl_s + self._max_stale_s
        )

    def _expired(self, now: float) -> bool:
        return self._fetched_at is None or now - self._fetched_at > self._ttl_s

    def _may_fetch(self, now: float, kid: str) -> bool:
        if now < self._next_attempt:
            return False
        if self._fetched_at is None or self._expired(now) or not self._usable(now):
            return True
        return kid not in self._keys and now - self._fetched_at >= self._min_refresh_s

    def _refresh_in_background(self) -> None:
        if self._background is not None and not self._background.done():
            return

        async def refresh() -> None:
            async with self._lock:
                if self._expired(self._clock()) and self._clock() >= self._next_attempt:
                    await self._refresh()

        self._background = asyncio.create_task(refresh(), name="jwks-refresh")

    async def _refresh(self) -> None:
        """Fetch the key set; on failure keep the old one and back off (never raises)."""
        try:
            document = await self._source.fetch()
            keys = self._parse(document)
            if not keys:
                raise DependencyUnavailable("the JWKS holds no usable key")
        except DependencyUnavailable as exc:
            wait = self._backoff.next_delay()
            self._next_attempt = self._clock() + wait
            self._last_error = exc.message
            logger.warning(
                "JWKS refresh failed (%s); %s; next attempt in %.0f s",
                exc.message,
                "serving the cached keys" if self._keys else "no keys to serve",
                wait,
            )
            return
        self._keys = keys
        self._fetched_at = self._clock()
        self._backoff.reset()
        self._next_attempt = self._fetched_at + self._min_refresh_s

    @staticmethod
    def _parse(document: Mapping[str, Any]) -> dict[str, jwt.PyJWK]:
        keys: dict[str, jwt.PyJWK] = {}
        entries = document.get("keys", [])
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
                continue
            try:
                keys[entry["kid"]] = jwt.PyJWK(entry)
            except jwt.PyJWTError as exc:
                logger.warning("skipping an unusable JWKS key %s: %s", entry.get("kid"), exc)
        return keys


@dataclass(frozen=True, slots=True)
class Issuer:
    """One trusted issuer: its ``iss``, its keys and the audiences it may issue for."""

    iss: str
    keys: JwksCache
    audiences: tuple[str, ...] = ()
    token_uses: tuple[str, ...] = ("id", "access")


class TokenVerifier:
    def __init__(self, issuers: list[Issuer], *, leeway_s: int) -> None:
        self._issuers = {issuer.iss: issuer for issuer in issuers}
        self._leeway_s = leeway_s

    async def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"malformed token: {exc}") from exc
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise InvalidToken(f"algorithm {alg!r} is not accepted")
        issuer = self._issuers.get(str(unverified.get("iss")))
        if issuer is None:
            raise InvalidToken(f"issuer {unverified.get('iss')!r} is not trusted")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise InvalidToken("token has no kid")
        key = await issuer.keys.key(kid)
        if key is None:
            raise InvalidToken(f"unknown signing key {kid!r}")
        if key.algorithm_name != alg:
            raise InvalidToken(f"key {kid!r} is not a {alg} key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                issuer=issuer.iss,
                leeway=self._leeway_s,
                options={"require": ["exp", "iss", "sub"], "verify_aud": False},
            )
        except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError) as exc:
            raise TokenExpired(f"token is not valid now: {exc}") from exc
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"token does not verify: {exc}") from exc
        _check_audience(claims, issuer.audiences)
        token_use = claims.get("token_use")
        if token_use is not None and token_use not in issuer.token_uses:
            raise InvalidToken(f"token_use {token_use!r} is not accepted")
        return principal_from_claims(claims)


def _check_audience(claims: Mapping[str, Any], audiences: tuple[str, ...]) -> None:
    if not audiences:
        return
    aud = claims.get("aud")
    offered = set(aud if isinstance(aud, list) else [aud] if isinstance(aud, str) else [])
    client_id = claims.get("client_id")  # Cognito access tokens carry client_id, not aud
    if isinstance(client_id, str):
        offered.add(client_id)
    if not offered.intersection(audiences):
        raise InvalidToken("token was not issued for this audience")


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    """Cognito's claims (``sub``, ``cognito:groups``, ``cognito:username``/``username``), with
    the usual OIDC names as fallbacks."""
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise InvalidToken("token has no sub")
    raw_groups = claims.get("cognito:groups", claims.get("groups", []))
    groups = (
        tuple(g for g in raw_groups if isinstance(g, str)) if isinstance(raw_groups, list) else ()
    )
    username = next(
        (
            v
            for k in ("cognito:username", "username", "preferred_username")
            if isinstance(v := claims.get(k), str)
        ),
        None,
    )
    exp = claims.get("exp")
    return Principal(
        sub=sub,
        groups=groups,
        credential="jwt",
        username=username,
        expires_at=float(exp) if isinstance(exp, int | float) else None,
    )

"""Where the dataset's objects go: a small interface, a local-disk and an S3 adapter, and an
in-memory fake. Every write is atomic and durable when ``put`` returns; errors of the disk or
of S3 surface as :class:`~tollgate_analytics.errors.StorageUnavailable`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from pathlib import Path
from typing import Any, Protocol

from tollgate_analytics.errors import StorageUnavailable


class ObjectStore(Protocol):
    @property
    def location(self) -> str:
        """Human-readable root (a directory or ``s3://bucket/prefix``)."""

    async def put(self, key: str, data: bytes) -> None:
        """Write ``data`` under ``key`` atomically (whole or nothing), replacing any old one."""

    async def list_keys(self, prefix: str) -> list[str]:
        """Keys under ``prefix``, sorted."""

    async def check(self) -> None:
        """Raise StorageUnavailable unless the store can be reached."""


class LocalStore:
    """Files under a directory: written to a temporary name, fsynced, renamed, dir fsynced."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def location(self) -> str:
        return str(self.root)

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, key, data)

    def _put(self, key: str, data: bytes) -> None:
        path = self.root / key
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise StorageUnavailable(f"cannot write {path}: {exc}") from exc

    async def list_keys(self, prefix: str) -> list[str]:
        return await asyncio.to_thread(self._list_keys, prefix)

    def _list_keys(self, prefix: str) -> list[str]:
        base = self.root / prefix
        directory = base if prefix.endswith("/") else base.parent
        try:
            if not directory.is_dir():
                return []
            keys = [
                str(p.relative_to(self.root))
                for p in directory.rglob("*")
                if p.is_file() and not p.name.startswith(".")
            ]
        except OSError as exc:
            raise StorageUnavailable(f"cannot list {directory}: {exc}") from exc
        return sorted(k for k in keys if k.startswith(prefix))

    async def check(self) -> None:
        def probe() -> None:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                if not os.access(self.root, os.W_OK):
                    raise StorageUnavailable(f"{self.root} is not writable")
            except OSError as exc:
                raise StorageUnavailable(f"cannot use {self.root}: {exc}") from exc

        await asyncio.to_thread(probe)


class S3Store:
    """Objects in an S3 bucket under a prefix, through boto3 (run in a thread)."""

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self._client = client
        self._bucket = bucket
        self._prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    @property
    def location(self) -> str:
        return f"s3://{self._bucket}/{self._prefix}"

    async def put(self, key: str, data: bytes) -> None:
        await self._call("put_object", Bucket=self._bucket, Key=self._prefix + key, Body=data)

    async def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self._bucket, "Prefix": self._prefix + prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = await self._call("list_objects_v2", **kwargs)
            keys += [obj["Key"][len(self._prefix) :] for obj in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return sorted(keys)
            token = page.get("NextContinuationToken")

    async def check(self) -> None:
        await self._call("head_bucket", Bucket=self._bucket)

    async def _call(self, method: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await asyncio.to_thread(getattr(self._client, method), **kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"S3 {method} on {self._bucket} failed: {exc}") from exc


class MemoryStore:
    """In-memory fake; ``fail`` makes every call raise StorageUnavailable."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.fail: str | None = None

    @property
    def location(self) -> str:
        return "memory://"

    async def put(self, key: str, data: bytes) -> None:
        await self.check()
        self.objects[key] = data

    async def list_keys(self, prefix: str) -> list[str]:
        await self.check()
        return sorted(k for k in self.objects if k.startswith(prefix))

    async def check(self) -> None:
        if self.fail is not None:
            raise StorageUnavailable(self.fail)

"""``tollgate-balancer``: a round-robin TCP balancer on 127.0.0.1 for local edge replicas.

It stands in for a Kubernetes Service in front of the edge: each new connection goes to the
next backend in turn, and the bytes are copied both ways untouched, so HTTP, WebSocket
upgrades and TLS pass through. A backend that refuses the connection is skipped for that
connection (the next one is tried), so a replica that died only loses its own sockets and
its clients' reconnects land on the living ones. Written by hand because it is a few dozen
lines of asyncio and no maintained package does just this.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import signal
from collections.abc import Sequence

logger = logging.getLogger("tollgate-balancer")

_CHUNK = 64 * 1024


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()  # half-close: the other direction may still be talking
            else:
                writer.close()


class RoundRobin:
    def __init__(self, backends: Sequence[tuple[str, int]]) -> None:
        if not backends:
            raise ValueError("at least one backend")
        self.backends = list(backends)
        self._turn = itertools.cycle(range(len(self.backends)))
        self.connections = [0] * len(self.backends)

    async def connect(self) -> tuple[int, asyncio.StreamReader, asyncio.StreamWriter]:
        """The next backend that accepts a connection (each is tried at most once)."""
        last: OSError | None = None
        for _ in self.backends:
            index = next(self._turn)
            host, port = self.backends[index]
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError as exc:
                last = exc
                continue
            self.connections[index] += 1
            return index, reader, writer
        raise ConnectionError(f"no backend accepts connections: {last}")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            _, up_reader, up_writer = await self.connect()
        except ConnectionError as exc:
            logger.warning("%s", exc)
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                with contextlib.suppress(OSError, RuntimeError):
                    w.close()


async def serve(port: int, backends: Sequence[tuple[str, int]], stop: asyncio.Event) -> None:
    balancer = RoundRobin(backends)
    server = await asyncio.start_server(balancer.handle, "127.0.0.1", port)
    logger.info(
        "127.0.0.1:%d -> %s (round robin)", port, ", ".join(f"{h}:{p}" for h, p in backends)
    )
    async with server:
        await stop.wait()


def parse_backends(value: str) -> list[tuple[str, int]]:
    backends = []
    for item in value.split(","):
        host, _, port = item.strip().rpartition(":")
        backends.append((host or "127.0.0.1", int(port)))
    return backends


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True, help="port to listen on")
    parser.add_argument(
        "--backends", required=True, help="comma-separated host:port (or port) of the replicas"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="balancer | %(message)s")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(args.port, parse_backends(args.backends), stop)

    asyncio.run(run())

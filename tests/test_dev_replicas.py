"""``TOLLGATE_DEV_REPLICAS`` and ``tollgate-balancer``: the local stand-ins for a fleet."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from tollgate_dev.balancer import serve
from tollgate_dev.platform import free_port
from tollgate_dev.run import replica_procfile
from tollgate_dev.stack import SERVICES, Instance, layout, parse_replicas

PORTS = {"stream": 8080, "auth": 8081, "router": 8082, "meter": 8083, "analytics": 8084}


def test_replicas_are_parsed_and_checked() -> None:
    assert parse_replicas("stream=3, router=2,meter=2") == {"stream": 3, "router": 2, "meter": 2}
    assert parse_replicas("") == {}
    for bad in ("stream", "gateway=2", "stream=x", "stream=0"):
        with pytest.raises(ValueError, match="TOLLGATE_DEV_REPLICAS"):
            parse_replicas(bad)


def test_layout_gives_each_replica_a_port_and_the_edge_port_to_the_balancer() -> None:
    spare = itertools.count(9000)
    instances, balancer = layout(
        SERVICES, PORTS, {"stream": 3, "router": 2}, allocate=lambda: next(spare)
    )
    assert balancer == 8080
    assert [(i.name, i.port) for i in instances] == [
        ("auth", 8081),
        ("meter", 8083),
        ("router-1", 8082),
        ("router-2", 9000),
        ("stream-1", 9001),
        ("stream-2", 9002),
        ("stream-3", 9003),
        ("analytics", 8084),
    ]
    assert layout(SERVICES, PORTS, {})[1] is None


def test_the_procfile_gets_a_line_per_replica_and_one_for_the_balancer(tmp_path: Path) -> None:
    procfile = tmp_path / "Procfile"
    procfile.write_text("auth: exec tollgate-auth\nstream: exec tollgate-stream\n")
    instances = [
        Instance("auth", "auth", 8081),
        Instance("stream-1", "stream", 9001),
        Instance("stream-2", "stream", 9002),
    ]
    written = replica_procfile(procfile, instances, 8080, tmp_path / "Procfile.replicas")
    lines = written.read_text().splitlines()
    assert lines[:3] == [
        "auth: TOLLGATE_AUTH_PORT=8081 exec tollgate-auth",
        "stream-1: TOLLGATE_STREAM_PORT=9001 exec tollgate-stream",
        "stream-2: TOLLGATE_STREAM_PORT=9002 exec tollgate-stream",
    ]
    assert lines[3].startswith("balancer: exec ")
    assert lines[3].endswith("--port 8080 --backends 127.0.0.1:9001,127.0.0.1:9002")
    single = [Instance("auth", "auth", 8081), Instance("stream", "stream", 8080)]
    assert replica_procfile(procfile, single, None, tmp_path / "unused") == procfile


async def test_the_balancer_takes_turns_and_skips_a_backend_that_is_gone() -> None:
    async def named(name: bytes) -> asyncio.Server:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            data = await reader.read(100)
            writer.write(name + b":" + data)
            await writer.drain()
            writer.close()

        return await asyncio.start_server(answer, "127.0.0.1", 0)

    servers = [await named(b"a"), await named(b"b")]
    backends = [("127.0.0.1", s.sockets[0].getsockname()[1]) for s in servers]
    dead = ("127.0.0.1", free_port())  # nothing listens there
    port = free_port()
    stop = asyncio.Event()
    balancer = asyncio.create_task(serve(port, [backends[0], dead, backends[1]], stop))

    async def ask() -> bytes:
        for _ in range(50):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.05)
        writer.write(b"hi")
        await writer.drain()
        answer = await reader.read(100)
        writer.close()
        return answer

    try:
        answers = [await ask() for _ in range(4)]
        assert answers == [b"a:hi", b"b:hi", b"a:hi", b"b:hi"]
    finally:
        stop.set()
        await balancer
        for server in servers:
            server.close()
            await server.wait_closed()

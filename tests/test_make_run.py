"""``make run`` itself: ``tollgate-dev`` brings up Kafka, Postgres and the five services under
honcho, serves a request end to end, and on Ctrl-C stops every process it started."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.appsync_client import chat_event, connect, dev_token, http_publish
from tollgate_dev.platform import free_port
from tollgate_dev.stack import SERVICES, bin_path, wait_ready

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parents[1]
READY_LINE = "Ctrl-C stops everything"


def wait_for_line(log: Path, line: str, process: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if line in text:
            return text
        if process.poll() is not None:
            raise AssertionError(f"tollgate-dev exited with {process.returncode}:\n{text[-4000:]}")
        time.sleep(0.2)
    raise AssertionError(f"no {line!r} after {timeout}s:\n{log.read_text()[-4000:]}")


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        # connections the servers closed may linger in TIME_WAIT; only a listener matters
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def one_request(stream_url: str, auth_url: str) -> list[str]:
    token = await dev_token(auth_url, "dave")
    async with connect(stream_url, {"Authorization": token}) as ws:
        await ws.subscribe("s", "/Outbound-Messages/dave")
        published = await http_publish(
            stream_url, token, "/Inbound-Messages/dave", chat_event("hi")
        )
        assert published.status_code == 200, published.text
        kinds: list[str] = []
        async with asyncio.timeout(30):
            async for event in ws.events("s"):
                kinds.extend(k for k in event if k not in ("requestId", "conversationId"))
                if "metadata" in event or "error" in event:
                    return kinds
    raise AssertionError("unreachable")


def postmaster_pid(state_dir: Path) -> int:
    [pid_file] = state_dir.glob("postgres/**/postmaster.pid")
    return int(pid_file.read_text().split()[0])


def test_make_run_serves_a_request_and_ctrl_c_leaves_no_process_behind(tmp_path: Path) -> None:
    ports = {service: free_port() for service in SERVICES}
    kafka_port = free_port()
    state_dir = tmp_path / "var"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "OTEL_EXPORTER_OTLP_ENDPOINT")
    }
    env.update({f"TOLLGATE_{service.upper()}_PORT": str(port) for service, port in ports.items()})
    env.update(
        {
            "TOLLGATE_ANALYTICS_DATA_DIR": str(tmp_path / "analytics"),
            "TOLLGATE_ANALYTICS_STATE_DIR": str(tmp_path / "analytics-state"),
            "TOLLGATE_LOCAL_MODEL_TIME_TO_FIRST_TOKEN_MS": "10",
            "TOLLGATE_LOCAL_MODEL_OUTPUT_TOKENS": "5",
        }
    )
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        # a session of its own stands in for the terminal: Ctrl-C signals its whole group
        process = subprocess.Popen(
            [
                bin_path("tollgate-dev"),
                "--root",
                str(ROOT),
                "--kafka-port",
                str(kafka_port),
                "--state-dir",
                str(state_dir),
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    started: list[psutil.Process] = []
    try:
        text = wait_for_line(log, READY_LINE, process, timeout=180)
        stream_url = f"http://127.0.0.1:{ports['stream']}"
        assert f"Web page: chat and usage     {stream_url}/" in text
        assert f"POST {stream_url}/event" in text
        assert f"{stream_url.replace('http', 'ws')}/event/realtime" in text
        for service, port in ports.items():
            assert re.search(rf"{service}\s+http://127.0.0.1:{port}/healthz", text), service
            assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200, service

        kinds = asyncio.run(one_request(stream_url, f"http://127.0.0.1:{ports['auth']}"))
        # make run shares a meter admin token with the edge: answers carry tokenUsage
        assert kinds[0] == "messageStart" and kinds[-2:] == ["metadata", "tokenUsage"], kinds
        assert kinds.count("contentBlockDelta") >= 1

        started = [*psutil.Process(process.pid).children(recursive=True)]
        started.append(psutil.Process(postmaster_pid(state_dir)))
        names = " ".join(" ".join(p.cmdline()) for p in started)
        for expected in ("honcho", "tansu", "postgres", *(f"tollgate-{s}" for s in SERVICES)):
            assert expected in names, expected

        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=90) == 0, log.read_text()[-4000:]
        _, alive = psutil.wait_procs(started, timeout=10)
        assert alive == [], [p.cmdline() for p in alive]
        assert all(port_is_free(port) for port in (*ports.values(), kafka_port))
        assert "stopped" in log.read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for leftover in started:
            if leftover.is_running():
                leftover.kill()


def test_a_supervisor_that_dies_during_start_up_fails_the_wait_at_once() -> None:
    # the name of the process need not be one of the services: honcho runs them all
    supervisor = subprocess.Popen(["false"])
    supervisor.wait()
    with pytest.raises(RuntimeError, match="honcho exited with 1"):
        wait_ready(
            {"stream": f"http://127.0.0.1:{free_port()}"},
            timeout=60,
            processes={"honcho": supervisor},
        )

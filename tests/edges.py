"""Extra edge (stream) processes next to the stack: with TLS, or owning chosen reply
partitions, so tests can run several replicas of the edge."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tollgate_dev.platform import free_port, stop_process
from tollgate_dev.stack import Stack, bin_path


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


def self_signed(directory: Path, host: str = "127.0.0.1") -> Certificate:
    """A self-signed certificate for ``host`` (and localhost), valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tollgate-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "edge.crt", directory / "edge.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Certificate(cert_path, key_path)


@dataclass
class Edge:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    certificate: Certificate | None = None

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def edge_process(
    stack: Stack,
    log_dir: Path,
    *,
    name: str,
    certificate: Certificate | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> Iterator[Edge]:
    """One more ``tollgate-stream`` process on the stack's Kafka, ready when yielded."""
    port = free_port()
    scheme = "https" if certificate else "http"
    full_env = {**stack.env, **(env or {}), "TOLLGATE_STREAM_PORT": str(port)}
    if certificate is not None:
        full_env["TOLLGATE_STREAM_TLS_CERT"] = str(certificate.cert)
        full_env["TOLLGATE_STREAM_TLS_KEY"] = str(certificate.key)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [bin_path("tollgate-stream")],
            env=full_env,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
    edge = Edge(f"{scheme}://127.0.0.1:{port}", process, log_path, certificate)
    try:
        verify: ssl.SSLContext | bool = certificate.ssl_context() if certificate else True
        deadline = time.monotonic() + timeout
        with httpx.Client(verify=verify, timeout=1.0) as client:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited during start-up:\n{edge.logs()[-3000:]}")
                try:
                    if client.get(f"{edge.url}/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} not ready:\n{edge.logs()[-3000:]}")
                time.sleep(0.1)
        yield edge
    finally:
        stop_process(process, timeout=15)

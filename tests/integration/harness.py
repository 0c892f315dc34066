"""Real servers for integration tests: certificates, config files, a `kes server` subprocess, HTTPS calls."""

from __future__ import annotations

import http.client
import os
import re
import selectors
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

READY_LINE = "=> Server is up and running"


@dataclass
class Identity:
    """A key/certificate pair on disk and its KES identity."""

    key: Path
    cert: Path
    identity: str


def make_identity(
    directory: Path,
    name: str,
    *,
    ca: bool = False,
    kind: str = "ed25519",
    san: tuple[str, ...] = (),
    issuer: tuple[Any, x509.Certificate] | None = None,
) -> Identity:
    """Write ``name.key``/``name.crt`` (self-signed, or signed by ``issuer``) and return the identity."""
    key: Any = (
        ed25519.Ed25519PrivateKey.generate() if kind == "ed25519" else ec.generate_private_key(ec.SECP256R1())
    )
    now = datetime.now(UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[1].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
    )
    if san:
        import ipaddress

        names: list[x509.GeneralName] = []
        for s in san:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(s)))
            except ValueError:
                names.append(x509.DNSName(s))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    signer = issuer[0] if issuer else key
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = builder.sign(signer, algorithm)
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.crt"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return Identity(key_path, cert_path, hashes_sha256(spki))


def hashes_sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def kes_command(*args: str) -> list[str]:
    """The `kes` CLI of the package under test, run with this interpreter."""
    return [sys.executable, "-m", "kesd", *args]


class Server:
    """A `kes server` subprocess on an ephemeral loopback port."""

    def __init__(
        self,
        workdir: Path,
        config: dict[str, Any] | str,
        *,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.config_path = workdir / "config.yml"
        text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
        self.config_path.write_text(text)
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.output: list[str] = []
        self.address = ""
        self.command = kes_command("server", "--config", str(self.config_path), *args)

    def start(self, timeout: float = 30.0) -> Server:
        """Start the server and wait (polling its output) until it says it is up."""
        self.proc = subprocess.Popen(
            self.command,
            cwd=self.workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        pending = b""
        while time.monotonic() < deadline:
            if not sel.select(timeout=0.2):
                if self.proc.poll() is not None:
                    break
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace")
                self.output.append(line + "\n")
                m = re.match(r"^(API)?\s+https://(\S+)$", line.rstrip())
                if m and not self.address:
                    self.address = m.group(2)
                if line.startswith(READY_LINE):
                    sel.close()
                    return self
        sel.close()
        self.stop()
        raise RuntimeError("server did not start:\n" + "".join(self.output))

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Stop the server; returns its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.output.append(self.proc.stdout.read().decode(errors="replace"))
            self.proc.stdout.close()
        return self.proc.returncode

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Reply:
    """One HTTP response."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.body)


def client_context(identity: Identity | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if identity is not None:
        ctx.load_cert_chain(identity.cert, identity.key)
    return ctx


def call(
    server: Server,
    method: str,
    path: str,
    body: bytes | str | None = None,
    *,
    identity: Identity | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One HTTPS request on a fresh connection."""
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=client_context(identity), timeout=15)
    try:
        conn.request(
            method, path, body=body.encode() if isinstance(body, str) else body, headers=headers or {}
        )
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()

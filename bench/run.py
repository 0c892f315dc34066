"""End-to-end HTTP benchmark: kesd against the compiled Go reference server, on pinned CPUs.

Run: ``.venv/bin/python bench/run.py [--duration 10] [--runs 3] [--loop auto|asyncio|uvloop] [--quick]``.
Prints a table, a summary line and one JSON line; the exit status never depends on the figures.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BIN_DIR = REPO / "bench" / ".bin"
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
APT_GO = Path("/usr/lib/go-1.19/bin/go")
KEY_NAME = "bench-key"
SERVER_CPU = "0"
LOADGEN_CPU = "1"
CONNECTIONS = 16
WARMUP_S = 1.0
START_TIMEOUT_S = 60.0
READY_LINE = "=> Server is up and running"
API_LINE = re.compile(r"^API\s+https://(\S+):(\d+)\s*$")
ALLOW = ("/v1/key/generate/*", "/v1/key/decrypt/*", "/v1/key/create/*", "/v1/key/import/*")

RUN_FIELDS = (
    "ok_rps",
    "p50_ms",
    "p99_ms",
    "server_cpu",
    "cpu_util",
    "background_cpu",
    "steal_cpu",
    "ok",
    "non_2xx",
    "errors",
)
NOISY_CPU = 0.15
EXIT_SERVER = 1
EXIT_SETUP = 2


class BenchError(Exception):
    """A setup step failed (build, certificates, a server start): the benchmark cannot run."""

    def __init__(self, message: str, code: int = EXIT_SETUP) -> None:
        super().__init__(message)
        self.code = code


def log(message: str) -> None:
    """Progress output: stderr, so stdout carries only the table and the JSON line."""
    print(message, file=sys.stderr, flush=True)


# --- paths, Go and the tools -----------------------------------------------------------------------


def shared_dir() -> Path:
    """The project's shared/ directory: $KESD_SHARED, else the repo's sibling ``shared``."""
    explicit = os.environ.get("KESD_SHARED")
    return Path(explicit).resolve() if explicit else (REPO.parent / "shared").resolve()


def find_go() -> str:
    """A ``go`` binary: from PATH, Debian's versioned directories, or installed with apt."""
    found = shutil.which("go")
    if found:
        return found
    for candidate in (APT_GO, *sorted(Path("/usr/lib").glob("go-*/bin/go"), reverse=True)):
        if candidate.is_file():
            return str(candidate)
    log("no Go toolchain found: installing golang-1.19-go with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "golang-1.19-go"]
    if subprocess.run(install, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=False)
        subprocess.run(install, env=env, check=False)
    if APT_GO.is_file():
        return str(APT_GO)
    raise BenchError("cannot find or install Go (apt-get install -y golang-1.19-go)")


def newest_source(directory: Path) -> float:
    """The latest modification time of the Go sources in ``directory``."""
    files = [*directory.glob("*.go"), directory / "go.mod"]
    return max(f.stat().st_mtime for f in files if f.exists())


def build_tools(tools: Path) -> dict[str, Path]:
    """Build loadgen and refserver into bench/.bin/, unless the binaries are newer than the sources."""
    BIN_DIR.mkdir(parents=True, exist_ok=True)
    built: dict[str, Path] = {}
    go: str | None = None
    for name in ("loadgen", "refserver"):
        source, target = tools / name, BIN_DIR / name
        if not source.is_dir():
            raise BenchError(f"missing tool sources: {source} (set KESD_SHARED to the shared/ directory)")
        if not target.exists() or target.stat().st_mtime <= newest_source(source):
            go = go or find_go()
            log(f"building {name} with {go}")
            env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
            if not any(env.get(v) for v in ("GOCACHE", "HOME", "XDG_CACHE_HOME")):
                env["GOCACHE"] = str(BIN_DIR / ".gocache")
            done = subprocess.run([go, "build", "-o", str(target), "."], cwd=source, env=env, check=False)
            if done.returncode != 0:
                raise BenchError(f"go build of {name} failed (exit {done.returncode})")
        built[name] = target
    return built


@dataclass(frozen=True)
class Certs:
    """The files gen-certs.sh writes, and the client's KES identity."""

    server_key: Path
    server_cert: Path
    client_key: Path
    client_cert: Path
    identity: str


def make_certs(tools: Path, directory: Path) -> Certs:
    """Ed25519 server (127.0.0.1) and client certificates made by the shared gen-certs.sh."""
    done = subprocess.run(
        ["bash", str(tools / "gen-certs.sh"), str(directory), "ed25519"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"gen-certs.sh failed: {done.stderr.strip()}")
    identity = (directory / "client.identity").read_text().strip()
    return Certs(
        directory / "server.key",
        directory / "server.cert",
        directory / "client.key",
        directory / "client.cert",
        identity,
    )


# --- processes --------------------------------------------------------------------------------------


class Children:
    """Every process the benchmark starts, so that all of them are stopped on any exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[Any]] = []

    def start(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` and remember it."""
        proc = subprocess.Popen(argv, **kwargs)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; only this one process."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        """Stop every remembered process, newest first."""
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of ``pid`` (all its threads) in clock ticks, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def machine_ticks() -> tuple[int, int]:
    """(busy, stolen) ticks of all CPUs since boot (/proc/stat); busy = user, nice, system, irq, softirq."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    return sum(fields[:3]) + sum(fields[5:7]), fields[7]


@dataclass(frozen=True)
class Sample:
    """CPU counters at one instant: the server's, the generator's and the whole machine's."""

    at: float
    server: int | None
    loadgen: int | None
    machine: int
    steal: int


def sample(server_pid: int, loadgen_pid: int) -> Sample:
    """Read the three CPU counters now."""
    return Sample(time.monotonic(), cpu_ticks(server_pid), cpu_ticks(loadgen_pid), *machine_ticks())


def cpu_shares(first: Sample, last: Sample) -> dict[str, float | None]:
    """Between two samples, in cores: the server's CPU, everything else's but the generator's, and steal.

    Steal (time the hypervisor gave to other VMs) may also be charged to the running processes, so it is
    reported apart: either figure well above zero means the machine was not quiet.
    """
    ticks = (last.at - first.at) * os.sysconf("SC_CLK_TCK")
    if (
        ticks <= 0
        or first.server is None
        or last.server is None
        or first.loadgen is None
        or last.loadgen is None
    ):
        return {"server_cpu": None, "background_cpu": None, "steal_cpu": None}
    server = (last.server - first.server) / ticks
    loadgen = (last.loadgen - first.loadgen) / ticks
    machine = (last.machine - first.machine) / ticks
    return {
        "server_cpu": round(server, 3),
        "background_cpu": round(max(0.0, machine - server - loadgen), 3),
        "steal_cpu": round((last.steal - first.steal) / ticks, 3),
    }


def free_port() -> int:
    """A port the kernel considers free right now (bind to 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file ('' if it is missing)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- HTTPS calls to set up and check the servers ----------------------------------------------------


def client_context(certs: Certs) -> ssl.SSLContext:
    """An mTLS client context: the loadgen client certificate, the bench server certificate as CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(certs.server_cert))
    ctx.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    return ctx


def call(
    ctx: ssl.SSLContext, host: str, port: int, method: str, path: str, body: bytes | None = None
) -> tuple[int, bytes]:
    """One HTTPS request on a fresh connection; returns (status, body)."""
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=10)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@dataclass
class Server:
    """A running server under test."""

    label: str
    proc: subprocess.Popen[Any]
    host: str
    port: int
    logfile: Path
    runtime: str = ""
    output: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=200))

    @property
    def url(self) -> str:
        """The base URL for loadgen."""
        return f"https://{self.host}:{self.port}"

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc.poll() is None

    def diagnostics(self) -> str:
        """The server's recent output (stdout lines kept in memory, then its stderr log)."""
        parts = [*self.output, tail(self.logfile)]
        return "\n".join(p for p in parts if p)


def wait_for_port(proc: subprocess.Popen[Any], port: int, timeout: float) -> bool:
    """Wait until 127.0.0.1:``port`` accepts connections while ``proc`` still runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return proc.poll() is None
        time.sleep(0.05)
    return False


def answers_version(certs: Certs, port: int) -> bool:
    """Whether the server on ``port`` is ours to use: it answers GET /version over our mTLS setup."""
    try:
        status, _ = call(client_context(certs), "127.0.0.1", port, "GET", "/version")
    except (OSError, http.client.HTTPException):
        return False
    return status == 200


def start_refserver(
    children: Children, binary: Path, certs: Certs, key_b64: str, work: Path, attempts: int = 5
) -> Server:
    """The Go reference server on CPU 0 with the fixed key imported, on a free ephemeral port."""
    logfile = work / "refserver.log"
    for _ in range(attempts):
        port = free_port()
        argv = [
            "taskset", "-c", SERVER_CPU, str(binary),
            "-addr", f"127.0.0.1:{port}",
            "-cert", str(certs.server_cert), "-key", str(certs.server_key),
            "-gomaxprocs", "1", "-q",
            "-keys", KEY_NAME, "-import", f"{KEY_NAME}={key_b64}",
            "-identity", certs.identity,
        ]  # fmt: skip
        with logfile.open("ab") as err:
            proc = children.start(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        if wait_for_port(proc, port, 10.0) and answers_version(certs, port):
            return Server("ref", proc, "127.0.0.1", port, logfile, runtime="go refserver GOMAXPROCS=1")
        children.stop(proc)
    raise BenchError(f"refserver did not start:\n{tail(logfile)}", EXIT_SERVER)


def server_config(certs: Certs, work: Path) -> Path:
    """A kesd config: ephemeral loopback port, no admin, the client may generate/decrypt/create/import."""
    allow = "".join(f"      - {pattern}\n" for pattern in ALLOW)
    text = (
        "address: 127.0.0.1:0\n"
        "admin:\n  identity: disabled\n"
        f"tls:\n  key: {certs.server_key}\n  cert: {certs.server_cert}\n"
        f"policy:\n  bench:\n    allow:\n{allow}    identities:\n      - {certs.identity}\n"
        f"keystore:\n  fs:\n    path: {work / 'keys'}\n"
    )
    path = work / "kesd.yml"
    path.write_text(text)
    return path


def start_kesd(children: Children, certs: Certs, loop: str, work: Path) -> Server:
    """Our server on CPU 0 (``python -m kesd server --config``); waits for its 'up and running' line."""
    config = server_config(certs, work)
    logfile = work / "kesd.stderr"
    python = str(VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable))
    argv = ["taskset", "-c", SERVER_CPU, python, "-m", "kesd", "server", "--config", str(config)]
    env = {**os.environ, "KESD_LOOP": loop, "PYTHONUNBUFFERED": "1"}
    with logfile.open("wb") as err:
        proc = children.start(
            argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True
        )
    lines: collections.deque[str] = collections.deque(maxlen=200)
    ready = threading.Event()
    found: dict[str, str] = {}

    def reader() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            lines.append(line)
            match = API_LINE.match(line)
            if match and "host" not in found:
                found["host"], found["port"] = match.group(1), match.group(2)
            if line.startswith("Runtime"):
                found["runtime"] = line.split(None, 1)[1] if " " in line else ""
            if line.strip() == READY_LINE:
                found["ready"] = line
                ready.set()
        ready.set()

    threading.Thread(target=reader, name="kesd-stdout", daemon=True).start()
    ready.wait(START_TIMEOUT_S)
    output = "\n".join(lines)
    if proc.poll() is not None or "host" not in found or "ready" not in found:
        children.stop(proc)
        raise BenchError(
            f"kesd did not start (exit {proc.returncode}):\n{output}\n{tail(logfile)}", EXIT_SERVER
        )
    host = found["host"].strip("[]")
    if host not in ("127.0.0.1", "localhost"):
        children.stop(proc)
        raise BenchError(f"kesd listens on {host}, not on loopback", EXIT_SERVER)
    server = Server("ours", proc, "127.0.0.1", int(found["port"]), logfile, found.get("runtime", ""))
    server.output = lines
    return server


def import_key(server: Server, ctx: ssl.SSLContext, key_b64: str) -> None:
    """Import the fixed bench key into our server."""
    body = json.dumps({"key": key_b64, "cipher": "AES256"}).encode()
    status, answer = call(ctx, server.host, server.port, "POST", f"/v1/key/import/{KEY_NAME}", body)
    if status != 200:
        raise BenchError(f"kesd: import of {KEY_NAME} answered {status}: {answer[:200]!r}", EXIT_SERVER)


def generate(server: Server, ctx: ssl.SSLContext) -> tuple[str, str]:
    """One generate call: (plaintext b64, ciphertext b64)."""
    status, answer = call(ctx, server.host, server.port, "POST", f"/v1/key/generate/{KEY_NAME}", b"{}")
    if status != 200:
        raise BenchError(f"{server.label}: generate answered {status}: {answer[:200]!r}", EXIT_SERVER)
    doc = json.loads(answer)
    return doc["plaintext"], doc["ciphertext"]


def decrypts_to(server: Server, ctx: ssl.SSLContext, body: bytes, plaintext: str) -> str:
    """'' if ``server`` decrypts ``body`` to ``plaintext``, else what went wrong."""
    status, answer = call(ctx, server.host, server.port, "POST", f"/v1/key/decrypt/{KEY_NAME}", body)
    if status != 200:
        return f"{server.label} answered {status}: {answer[:200]!r}"
    try:
        got = json.loads(answer)["plaintext"]
    except (ValueError, KeyError, TypeError):
        return f"{server.label} answered an unexpected body: {answer[:200]!r}"
    return "" if got == plaintext else f"{server.label} returned a different plaintext"


def decrypt_bodies(
    servers: list[Server], ctx: ssl.SSLContext, work: Path
) -> tuple[dict[str, Path], list[str]]:
    """One decrypt body file per server (from its own generate call), cross-checked on every server.

    A server whose generate call fails borrows another server's body (both hold the same key).
    """
    bodies: dict[str, Path] = {}
    problems: list[str] = []
    for origin in servers:
        try:
            plaintext, ciphertext = generate(origin, ctx)
        except (BenchError, OSError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"generate on {origin.label} failed: {exc}")
            continue
        body = json.dumps({"ciphertext": ciphertext}).encode()
        path = work / f"decrypt-{origin.label}.json"
        path.write_bytes(body)
        bodies[origin.label] = path
        for target in servers:
            problem = decrypts_to(target, ctx, body, plaintext)
            if problem:
                problems.append(f"ciphertext from {origin.label} on {target.label}: {problem}")
    if not bodies:
        raise BenchError("no server answered a generate request", EXIT_SERVER)
    for server in servers:
        bodies.setdefault(server.label, next(iter(bodies.values())))
    return bodies, problems


# --- measuring --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One load shape: an API operation on the bench key, over kept-alive or fresh connections."""

    name: str
    op: str
    handshake: bool

    def path(self) -> str:
        """The request path."""
        return f"/v1/key/{self.op}/{KEY_NAME}"


SCENARIOS = (
    Scenario("generate keep-alive", "generate", handshake=False),
    Scenario("decrypt keep-alive", "decrypt", handshake=False),
    Scenario("generate handshake", "generate", handshake=True),
)


def run_loadgen(
    children: Children,
    loadgen: Path,
    server: Server,
    scenario: Scenario,
    body: str,
    duration: float,
    certs: Certs,
) -> dict[str, Any]:
    """One pinned loadgen run; its JSON result plus the server's CPU use during the measured window."""
    argv = [
        "taskset", "-c", LOADGEN_CPU, str(loadgen),
        "-url", server.url, "-path", scenario.path(), "-body", body,
        "-cert", str(certs.client_cert), "-key", str(certs.client_key), "-insecure",
        "-c", str(CONNECTIONS), "-d", f"{duration:g}s", "-warmup", f"{WARMUP_S:g}s",
        "-gomaxprocs", "1", "-q", "-label", f"{server.label}:{scenario.name}",
    ]  # fmt: skip
    if scenario.handshake:
        argv.append("-handshake")
    margin = min(0.25, duration / 10)
    started = time.monotonic()
    proc = children.start(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    samples: list[Sample] = []
    for at in (WARMUP_S + margin, WARMUP_S + duration - margin):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.0, started + at - time.monotonic()))
        samples.append(sample(server.proc.pid, proc.pid))
    try:
        out, err = proc.communicate(timeout=duration + WARMUP_S + 60)
    except subprocess.TimeoutExpired:
        children.stop(proc)
        out, err = "", "loadgen did not finish"
    if proc in children.procs:
        children.procs.remove(proc)
    result: dict[str, Any] = {}
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            result = json.loads(line)
            break
    if not result:
        result = {"ok": 0, "ok_rps": 0.0, "requests": 0, "errors": 0, "error_kinds": {}, "status": {}}
        result["loadgen_error"] = err.strip()[-500:] or f"loadgen exit {proc.returncode}"
    result.update(cpu_shares(samples[0], samples[-1]))
    result["loadgen_exit"] = proc.returncode
    return result


def median(values: list[float | None]) -> float | None:
    """The median of the known values (rounded to 3 decimals), or None."""
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known else None


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs, plus totals of the failures (non-2xx answers and transport errors)."""
    statuses: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    for r in results:
        statuses.update({k: int(v) for k, v in (r.get("status") or {}).items()})
        kinds.update({k: int(v) for k, v in (r.get("error_kinds") or {}).items()})
    return {
        "rps": median([r.get("ok_rps") for r in results]),
        "rps_best": max((r["ok_rps"] for r in results if r.get("ok_rps") is not None), default=None),
        "p50_ms": median([r.get("p50_ms") for r in results]),
        "p99_ms": median([r.get("p99_ms") for r in results]),
        "server_cpu": median([r.get("server_cpu") for r in results]),
        "loadgen_cpu": median([r.get("cpu_util") for r in results]),
        "background_cpu": max(
            (r["background_cpu"] for r in results if r.get("background_cpu") is not None), default=None
        ),
        "steal_cpu": max((r["steal_cpu"] for r in results if r.get("steal_cpu") is not None), default=None),
        "ok": sum(int(r.get("ok") or 0) for r in results),
        "non_2xx": sum(int(r.get("non_2xx") or 0) for r in results),
        "errors": sum(int(r.get("errors") or 0) for r in results),
        "status": dict(statuses),
        "error_kinds": dict(kinds),
        "runs": [{k: r.get(k) for k in RUN_FIELDS} for r in results],
    }


def describe_run(label: str, scenario: Scenario, index: int, runs: int, r: dict[str, Any]) -> str:
    """One progress line for a finished run."""
    cpu = r.get("server_cpu")
    line = (
        f"[{label:4}] {scenario.name:<20} run {index}/{runs}: {r.get('ok_rps') or 0:>9,.0f} req/s"
        f"  p50 {r.get('p50_ms') or 0:.2f} ms  p99 {r.get('p99_ms') or 0:.2f} ms"
        f"  server cpu {fmt(cpu, '.0%')}  loadgen cpu {fmt(r.get('cpu_util'), '.0%')}"
        f"  other cpu {fmt(r.get('background_cpu'), '.0%')} (steal {fmt(r.get('steal_cpu'), '.0%')})"
    )
    if r.get("non_2xx") or r.get("errors") or r.get("loadgen_error"):
        line += (
            f"  !! non_2xx={r.get('non_2xx')} errors={r.get('errors')} status={r.get('status')}"
            f" error_kinds={r.get('error_kinds')} {r.get('loadgen_error', '')}"
        )
    return line


# --- report -----------------------------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    """Format a figure, '-' when unknown."""
    return "-" if value is None else format(value, spec)


def table(report: dict[str, dict[str, Any]]) -> str:
    """The results table: ours, the Go reference, and the ratio, per scenario."""
    head = (
        f"{'scenario':<20} | {'ours req/s':>10} {'p50 ms':>7} {'p99 ms':>7} {'cpu':>5} |"
        f" {'ref req/s':>10} {'p50 ms':>7} {'p99 ms':>7} {'cpu':>5} | {'ours/ref':>8}"
    )
    rows = [head, "-" * len(head)]
    for name, entry in report.items():
        ours, ref = entry.get("ours", {}), entry.get("ref", {})
        rows.append(
            f"{name:<20} | {fmt(ours.get('rps'), ',.0f'):>10} {fmt(ours.get('p50_ms'), '.2f'):>7}"
            f" {fmt(ours.get('p99_ms'), '.2f'):>7} {fmt(ours.get('server_cpu'), '.0%'):>5} |"
            f" {fmt(ref.get('rps'), ',.0f'):>10} {fmt(ref.get('p50_ms'), '.2f'):>7}"
            f" {fmt(ref.get('p99_ms'), '.2f'):>7} {fmt(ref.get('server_cpu'), '.0%'):>5} |"
            f" {fmt(entry.get('ratio'), '.2f'):>8}"
        )
    return "\n".join(rows)


def notes(report: dict[str, dict[str, Any]]) -> list[str]:
    """Warnings a reader needs to trust the table: failures, a busy machine, a saturated generator."""
    lines: list[str] = []
    for name, entry in report.items():
        for label in ("ours", "ref"):
            e = entry[label]
            if e["non_2xx"] or e["errors"]:
                lines.append(
                    f"note: {name} ({label}): {e['non_2xx']} non-2xx, {e['errors']} errors;"
                    f" status {e['status']}, error_kinds {e['error_kinds']}"
                )
            if max(e["background_cpu"] or 0.0, e["steal_cpu"] or 0.0) > NOISY_CPU:
                lines.append(
                    f"note: {name} ({label}): other processes used up to {fmt(e['background_cpu'], '.0%')}"
                    f" of a core and the hypervisor stole up to {fmt(e['steal_cpu'], '.0%')} during a run;"
                    " the figures are noisy"
                )
            if e["loadgen_cpu"] is not None and e["loadgen_cpu"] > 0.9:
                lines.append(
                    f"note: {name} ({label}): the load generator used {e['loadgen_cpu']:.0%} of its core;"
                    " it may be the bottleneck"
                )
    return lines


def git_commit() -> str:
    """The repo's HEAD commit, '' if unknown."""
    done = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run (default 10)")
    parser.add_argument(
        "--runs", type=int, default=3, help="runs per scenario and server; the median is reported"
    )
    parser.add_argument(
        "--loop", choices=("auto", "asyncio", "uvloop"), default="auto", help="KESD_LOOP for kesd"
    )
    parser.add_argument("--quick", action="store_true", help="smoke check: 2 s runs, 1 run each")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.runs = 2.0, 1
    if args.duration <= 0 or args.runs < 1:
        parser.error("--duration must be > 0 and --runs >= 1")
    return args


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt so the cleanup in ``finally`` runs."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@dataclass
class Setup:
    """What the measurements need: tools, certificates, both running servers and their decrypt bodies."""

    loadgen: Path
    certs: Certs
    servers: list[Server]
    bodies: dict[str, Path]
    problems: list[str]


def set_up(args: argparse.Namespace, children: Children, work: Path) -> Setup:
    """Build the tools, make certificates, start both servers with the same key, build decrypt bodies."""
    tools = shared_dir() / "tools"
    binaries = build_tools(tools)
    certs = make_certs(tools, work / "certs")
    key_b64 = base64.b64encode(os.urandom(32)).decode()
    ctx = client_context(certs)
    ref = start_refserver(children, binaries["refserver"], certs, key_b64, work)
    log(f"refserver up at {ref.url} (pid {ref.proc.pid})")
    ours = start_kesd(children, certs, args.loop, work)
    log(f"kesd up at {ours.url} (pid {ours.proc.pid}; {ours.runtime})")
    import_key(ours, ctx, key_b64)
    servers = [ref, ours]
    bodies, problems = decrypt_bodies(servers, ctx, work)
    for problem in problems:
        log(f"WARNING: decrypt cross-check: {problem}")
    if not problems:
        log("decrypt cross-check: both servers decrypt each other's ciphertexts")
    return Setup(binaries["loadgen"], certs, servers, bodies, problems)


def measure(
    args: argparse.Namespace, children: Children, setup: Setup
) -> tuple[dict[str, dict[str, list[dict[str, Any]]]], list[str]]:
    """Each scenario `args.runs` times per server, alternating who goes first; raw results and crashes."""
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {s.name: {"ours": [], "ref": []} for s in SCENARIOS}
    crashed: list[str] = []
    for scenario in SCENARIOS:
        for index in range(1, args.runs + 1):
            order = setup.servers if index % 2 else list(reversed(setup.servers))
            for server in order:
                if not server.alive():
                    continue
                body = f"@{setup.bodies[server.label]}" if scenario.op == "decrypt" else "{}"
                result = run_loadgen(
                    children, setup.loadgen, server, scenario, body, args.duration, setup.certs
                )
                raw[scenario.name][server.label].append(result)
                log(describe_run(server.label, scenario, index, args.runs, result))
                if not server.alive():
                    crashed.append(server.label)
                    log(f"!! {server.label} exited with {server.proc.returncode} during {scenario.name}:")
                    log(server.diagnostics())
    return raw, crashed


def ratio(ours: float | None, ref: float | None) -> float | None:
    """ours / ref rounded to 3 decimals, None when either is unknown or ref is zero."""
    return round(ours / ref, 3) if ours is not None and ref else None


def build_report(raw: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    """Per scenario: the summary of each server and the ratio of their median req/s."""
    report: dict[str, dict[str, Any]] = {}
    for name, by_server in raw.items():
        entry: dict[str, Any] = {label: summarise(results) for label, results in by_server.items()}
        entry["ratio"] = ratio(entry["ours"]["rps"], entry["ref"]["rps"])
        entry["ratio_best"] = ratio(entry["ours"]["rps_best"], entry["ref"]["rps_best"])
        report[name] = entry
    return report


def benchmark(args: argparse.Namespace, children: Children, work: Path) -> int:
    """Set up, measure every scenario, print the table, notes and JSON line; returns the exit status."""
    setup = set_up(args, children, work)
    raw, crashed = measure(args, children, setup)
    report = build_report(raw)
    ours = setup.servers[1]
    if ours.alive() and any(e["ours"]["non_2xx"] or e["ours"]["errors"] for e in report.values()):
        log("!! kesd answered with errors; its output:")
        log(ours.diagnostics())

    print(table(report))
    for line in notes(report):
        print(line)
    headline = report["generate keep-alive"]
    print(
        f"generate keep-alive: {fmt(headline['ratio'], '.2f')} × Go reference"
        f" (best runs: {fmt(headline['ratio_best'], '.2f')})"
    )
    summary = {
        "tool": "kesd-bench",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": git_commit(),
        "loop": args.loop,
        "kesd_runtime": ours.runtime,
        "duration_s": args.duration,
        "runs": args.runs,
        "conns": CONNECTIONS,
        "decrypt_crosscheck": setup.problems or "ok",
        "crashed": crashed,
        "scenarios": report,
    }
    print(json.dumps(summary, separators=(",", ":")), flush=True)
    no_success = [lab for lab in ("ours", "ref") if not any(e[lab]["ok"] for e in report.values())]
    if no_success:
        log(f"every request failed on: {', '.join(no_success)}")
    return EXIT_SERVER if crashed or no_success else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the benchmark and always stops what it started."""
    args = parse_args(argv)
    children = Children()
    with terminate_as_interrupt(), tempfile.TemporaryDirectory(prefix="kesd-bench-") as tmp:
        try:
            return benchmark(args, children, Path(tmp))
        except BenchError as exc:
            log(f"bench: {exc}")
            return exc.code
        except KeyboardInterrupt:
            log("bench: interrupted")
            return 130
        finally:
            children.stop_all()


if __name__ == "__main__":
    sys.exit(main())

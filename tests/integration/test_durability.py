"""The filesystem keystore under `kill -9`: acknowledged keys survive, no file is ever partial."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from kesd.crypto import parse_key_version
from tests.integration.conftest import base_config
from tests.integration.harness import Identity, Server, call


def hammer(server: Server, admin: Identity, prefix: str, acked: list[str], stop: threading.Event) -> None:
    """Create keys until the server dies; remember the ones it acknowledged."""
    i = 0
    while not stop.is_set():
        name = f"{prefix}-{i}"
        i += 1
        try:
            reply = call(server, "POST", f"/v1/key/create/{name}", identity=admin)
        except OSError:
            return
        if reply.status == 200:
            acked.append(name)


def test_kill_9_during_creates_loses_nothing_acknowledged(
    tmp_path: Path, server_id: Identity, admin: Identity
) -> None:
    keys = tmp_path / "keys"
    config = base_config(server_id, admin.identity, keys)
    acked: list[str] = []
    for round_ in range(3):
        srv = Server(tmp_path, config).start()
        stop = threading.Event()
        threads = [
            threading.Thread(target=hammer, args=(srv, admin, f"r{round_}t{t}", acked, stop))
            for t in range(4)
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while len(acked) < 20 * (round_ + 1) and time.monotonic() < deadline:
            time.sleep(0.01)
        srv.proc.send_signal(signal.SIGKILL)  # mid-flight: creates are in every stage here
        srv.stop()
        stop.set()
        for t in threads:
            t.join()

        on_disk = {p.name: p for p in keys.iterdir() if not p.name.startswith(".")}
        for path in on_disk.values():
            parse_key_version(path.read_bytes())  # complete, parsable: never partial
            assert path.stat().st_mode & 0o777 == 0o600
        missing = set(acked) - set(on_disk)
        assert not missing, f"acknowledged but lost: {sorted(missing)[:5]}"

    # A restart removes stray temporaries and serves every surviving key.
    with Server(tmp_path, config) as srv:
        assert not [p for p in keys.iterdir() if p.name.startswith(".tmp-")]
        for name in acked[:: max(1, len(acked) // 10)]:
            assert call(srv, "GET", f"/v1/key/describe/{name}", identity=admin).status == 200

"""The KES "Filesystem Keystore" guide, typed as a user would, with our `kes` command.

The guide's server listens on 0.0.0.0:7373. So that the test never collides with another process
on this machine, the whole walkthrough runs in a private network namespace (`unshare -n`), where
port 7373 is its own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r"""
set -u
ip link set lo up
cd "$WORK"

kes identity new --ip "127.0.0.1" localhost > step1.out
kes identity new --key=client.key --cert=client.crt MyApp > step2.out
kes identity of client.crt > step3.out
identity=$(awk '/Identity:/ {print $2}' step3.out)

cat > config.yml <<EOF
address: 0.0.0.0:7373 # Listen on all network interfaces on port 7373

admin:
  identity: disabled  # We disable the admin identity since we don't need it in this guide

tls:
  key: private.key    # The KES server TLS private key
  cert: public.crt    # The KES server TLS certificate

policy:
  my-app:
    allow:
    - /v1/key/create/my-key*
    - /v1/key/generate/my-key*
    - /v1/key/decrypt/my-key*
    identities:
    - $identity # Use the identity of your client.crt

keystore:
  fs:
    path: ./keys # Choose a directory for the secret keys
EOF

kes server --config config.yml --auth off > server.out 2>&1 &
server=$!
for _ in $(seq 1 300); do
  grep -q "Server is up and running" server.out && break
  kill -0 $server 2>/dev/null || break
  sleep 0.1
done

export KES_SERVER=https://127.0.0.1:7373
export KES_CLIENT_CERT=client.crt
export KES_CLIENT_KEY=client.key

kes key create my-key-1 -k > create.out 2>&1; echo $? > create.rc
# On a terminal, as in the guide (`script` gives it one); into a pipe kes prints JSON, as KES does.
script -qec "kes key dek my-key-1 -k" /dev/null | tr -d '\r' > dek.out; echo "${PIPESTATUS[0]}" > dek.rc
kes key dek my-key-1 -k > dek.json 2>&1
ciphertext=$(awk '/ciphertext:/ {print $2}' dek.out)
kes key decrypt my-key-1 "$ciphertext" -k > decrypt.out 2>&1; echo $? > decrypt.rc
kes key create other-key -k > other.out 2>&1; echo $? > other.rc

kill -TERM $server
wait $server
echo $? > server.rc
"""


def _netns_available() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False).returncode == 0


@pytest.mark.skipif(
    not _netns_available(), reason="needs root, unshare and ip for a private network namespace"
)
def test_filesystem_keystore_walkthrough(tmp_path: Path) -> None:
    bindir = Path(sys.executable).parent
    if not (bindir / "kes").exists():
        # Not an installed environment (e.g. Debian's python3 with PYTHONPATH): a stand-in `kes`.
        bindir = tmp_path / "bin"
        bindir.mkdir()
        (bindir / "kes").write_text(f'#!/bin/sh\nexec {sys.executable} -m kesd "$@"\n')
        (bindir / "kes").chmod(0o755)
    env = {**os.environ, "WORK": str(tmp_path), "PATH": f"{bindir}:{os.environ['PATH']}"}
    subprocess.run(["unshare", "-n", "bash", "-c", SCRIPT], env=env, timeout=180, check=True)

    def out(name: str) -> str:
        return (tmp_path / name).read_text()

    hexid = r"[0-9a-f]{64}"
    assert re.fullmatch(
        rf"\n  Private key:  private\.key\n  Certificate:  public\.crt\n  Identity:     {hexid}\n",
        out("step1.out"),
    )
    assert re.fullmatch(
        rf"\n  Private key:  client\.key\n  Certificate:  client\.crt\n  Identity:     {hexid}\n",
        out("step2.out"),
    )
    client_identity = re.search(hexid, out("step2.out")).group(0)
    assert out("step3.out") == f"\n  Identity:  {client_identity}\n"

    assert out("server.rc").strip() == "0", out("server.out")
    assert out("create.rc").strip() == "0", out("create.out")
    assert out("dek.rc").strip() == "0", out("dek.out")
    dek = re.fullmatch(r"\{\n  plaintext : (\S+)\n  ciphertext: (\S+)\n\}\n", out("dek.out"))
    assert dek, out("dek.out")
    plaintext, _ciphertext = dek.groups()
    assert list(json.loads(out("dek.json"))) == ["plaintext", "ciphertext"]  # piped: JSON, as KES
    assert out("decrypt.rc").strip() == "0", out("decrypt.out")
    assert plaintext in out("decrypt.out")

    assert out("other.rc").strip() != "0"
    assert "not authorized: insufficient permissions" in out("other.out")
    assert (tmp_path / "keys" / "my-key-1").stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "keys" / "other-key").exists()

"""Micro-benchmark of the crypto hot path: ops/s of SecretKey.generate and .decrypt per cipher.

Run: ``.venv/bin/python bench/crypto_micro.py [seconds-per-case]``. Prints figures; asserts no times.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import cryptography

from kesd.crypto import Cipher, SecretKey, cipher_name, new_key_version

CONTEXT = b'{"MinIO admin API":"ServerInfoHandler"}'


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls of ``fn`` per second, measured in batches for about ``seconds``."""
    fn()
    calls, batch = 0, 256
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(batch):
            fn()
        calls += batch
        now = time.perf_counter()
        if now >= deadline:
            return calls / (now - start)


def main() -> None:
    """Print one line per (cipher, operation)."""
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    print(f"cryptography {cryptography.__version__}, python {sys.version.split()[0]}, {seconds:g}s per case")
    for cipher in Cipher:
        key = SecretKey(cipher, os.urandom(32))
        _, ciphertext = key.generate(CONTEXT)
        name = cipher_name(cipher)
        generate = rate(lambda k=key: k.generate(CONTEXT), seconds)
        decrypt = rate(lambda k=key, c=ciphertext: k.decrypt(c, CONTEXT), seconds)
        print(f"{name:9} generate  {generate:>10,.0f} ops/s")
        print(f"{name:9} decrypt   {decrypt:>10,.0f} ops/s")
    kv = new_key_version(Cipher.AES256, "")
    print(f"{'HMAC':9} hmac      {rate(lambda: kv.hmac(CONTEXT), seconds):>10,.0f} ops/s")


if __name__ == "__main__":
    main()

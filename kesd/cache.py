"""The key cache in front of any keystore (reference §6.3).

Parsed keys stay in memory so that the hot path (generate/encrypt/decrypt/hmac) never touches the
keystore: ``peek`` is a dict lookup. ``expiry_any`` evicts every entry that old; ``expiry_unused``
evicts entries not used during the last interval (a per-entry "used" flag cleared by a sweep, which
costs the hot path one attribute store). With ``expiry_offline`` set, while the keystore is
unreachable the other expiries pause and cached keys keep being served for up to that long.
Concurrent misses for one key share one keystore read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from kesd import errors
from kesd.crypto import KeyFormatError, KeyVersion, parse_key_version

if TYPE_CHECKING:
    from kesd.keystore.base import KeyStore

log = logging.getLogger("kesd.cache")


class _Entry:
    """One cached key with its load time and a used-since-last-sweep flag."""

    __slots__ = ("key", "loaded", "used")

    def __init__(self, key: KeyVersion, loaded: float) -> None:
        self.key = key
        self.loaded = loaded
        self.used = True


class KeyCache:
    """Cached, parsed keys over a synchronous keystore run in worker threads."""

    def __init__(
        self, keystore: KeyStore, *, expiry_any: float, expiry_unused: float, expiry_offline: float = 0.0
    ) -> None:
        self.keystore = keystore
        self.expiry_any = expiry_any
        self.expiry_unused = expiry_unused
        self.expiry_offline = expiry_offline
        self.offline = False  # set by the server's keystore probe
        self._entries: dict[str, _Entry] = {}
        self._loading: dict[str, asyncio.Future[KeyVersion]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._last_unused_sweep = time.monotonic()
        self.hits = 0
        self.misses = 0

    def peek(self, name: str) -> KeyVersion | None:
        """The cached key or None: the hot path, no I/O."""
        entry = self._entries.get(name)
        if entry is None:
            return None
        entry.used = True
        return entry.key

    async def get(self, name: str) -> KeyVersion:
        """The key, loading it from the keystore on a miss (one read for concurrent misses)."""
        key = self.peek(name)
        if key is not None:
            self.hits += 1
            return key
        self.misses += 1
        pending = self._loading.get(name)
        if pending is not None:
            return await asyncio.shield(pending)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[KeyVersion] = loop.create_future()
        self._loading[name] = future
        try:
            raw = await self.run(self.keystore.get, name)
            try:
                key = parse_key_version(raw)
            except KeyFormatError as exc:
                log.error("key '%s' in the keystore cannot be parsed: %s", name, exc)
                raise errors.KeystoreError(errors.READ_FAILED) from None
            self._entries[name] = _Entry(key, time.monotonic())
            future.set_result(key)
            return key
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters get it via their own await
            raise
        finally:
            del self._loading[name]

    def put(self, name: str, key: KeyVersion) -> None:
        """Cache a key that was just created or imported."""
        self._entries[name] = _Entry(key, time.monotonic())

    def forget(self, name: str) -> None:
        """Drop a key (after delete)."""
        self._entries.pop(name, None)

    def purge(self) -> int:
        """Drop every cached key; returns how many there were."""
        n = len(self._entries)
        self._entries.clear()
        return n

    def __len__(self) -> int:
        return len(self._entries)

    async def run(self, fn: Callable[..., object], *args: object) -> object:
        """Run a blocking keystore call in a worker thread."""
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the periodic sweep on ``loop``."""
        self._schedule(loop)

    def stop(self) -> None:
        """Stop the periodic sweep."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        intervals = [v for v in (self.expiry_any, self.expiry_unused / 2) if v > 0]
        if not intervals:
            return
        self._sweeper = loop.call_later(min(*intervals, 1.0), self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Evict entries older than ``expiry_any`` and, every ``unused/2``, entries left unused."""
        now = time.monotonic()
        if self.offline and self.expiry_offline > 0:
            # The keystore is unreachable: keep serving cached keys, for at most `offline` each.
            cutoff = now - self.expiry_offline
            for name in [n for n, e in self._entries.items() if e.loaded <= cutoff]:
                del self._entries[name]
            self._schedule(loop)
            return
        if self.expiry_any > 0:
            cutoff = now - self.expiry_any
            for name in [n for n, e in self._entries.items() if e.loaded <= cutoff]:
                del self._entries[name]
        if self.expiry_unused > 0 and now - self._last_unused_sweep >= self.expiry_unused / 2:
            self._last_unused_sweep = now
            for name, entry in list(self._entries.items()):
                if entry.used:
                    entry.used = False
                else:
                    del self._entries[name]
        self._schedule(loop)

"""The KeyStore protocol: where stored key values (bytes, reference §6.2) live.

Backends are synchronous and thread-safe; the server runs them in a worker thread so that disk or
network latency never blocks the event loop. Every backend stores the same encoded key values.
"""

from __future__ import annotations

from typing import Protocol


class KeyStore(Protocol):
    """Create-if-absent, read, delete and list opaque key values by name."""

    def create(self, name: str, value: bytes) -> None:
        """Store ``value`` under ``name``; raise ``KeyExists`` if the name is taken.

        Returns only once the value is durable: a crash afterwards never loses it.
        """

    def get(self, name: str) -> bytes:
        """The stored value; raise ``KeyNotFound`` if absent."""

    def delete(self, name: str) -> None:
        """Remove the value durably; raise ``KeyNotFound`` if absent."""

    def list(self, prefix: str) -> list[str]:
        """All names starting with ``prefix``, sorted ascending."""

    def status(self) -> None:
        """Return if the store is reachable; raise ``KeystoreUnreachable``/``KeystoreUnavailable``."""

    def describe(self) -> str:
        """A short human description for logs, e.g. ``filesystem /var/lib/kesd/keys``."""

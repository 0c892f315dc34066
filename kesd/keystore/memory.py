"""An in-memory keystore: for `kes server --dev` and configs without a keystore. Lost on exit."""

from __future__ import annotations

import threading

from kesd import errors


class MemoryKeyStore:
    """A dict behind a lock, with the same semantics as the durable stores."""

    def __init__(self) -> None:
        self._values: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def create(self, name: str, value: bytes) -> None:
        """Store ``value`` unless ``name`` exists."""
        with self._lock:
            if name in self._values:
                raise errors.KeyExists
            self._values[name] = value

    def get(self, name: str) -> bytes:
        """The value stored under ``name``."""
        try:
            return self._values[name]
        except KeyError:
            raise errors.KeyNotFound from None

    def delete(self, name: str) -> None:
        """Forget ``name``."""
        with self._lock:
            if self._values.pop(name, None) is None:
                raise errors.KeyNotFound

    def list(self, prefix: str) -> list[str]:
        """Sorted names with ``prefix``."""
        with self._lock:
            return sorted(n for n in self._values if n.startswith(prefix))

    def status(self) -> None:
        """Always reachable."""

    def describe(self) -> str:
        """Human description."""
        return "in-memory (keys are lost when the server stops)"

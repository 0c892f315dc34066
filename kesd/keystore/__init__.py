"""Keystore backends and the factory that opens the one a config names."""

from __future__ import annotations

from kesd.errors import StartupError
from kesd.keystore.base import KeyStore
from kesd.keystore.fs import FSKeyStore
from kesd.keystore.memory import MemoryKeyStore

__all__ = ["FSKeyStore", "KeyStore", "MemoryKeyStore", "open_keystore"]


def open_keystore(kind: str, settings: dict[str, object]) -> KeyStore:
    """Open the backend ``kind`` (``fs`` or ``memory``) with its config section."""
    if kind == "fs":
        return FSKeyStore(str(settings["path"]))
    if kind == "memory":
        return MemoryKeyStore()
    raise StartupError(f"keystore.{kind}: this keystore is not supported by kesd yet (supported: fs)")

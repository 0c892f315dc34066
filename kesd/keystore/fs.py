"""The filesystem keystore: one file per key, named by the key (reference §6.1).

Creates are atomic and durable: the value is written to a private temporary file, fsynced, then
hard-linked to its final name (``link`` fails if the name exists, so of two concurrent creates
exactly one wins), and the directory is fsynced before the create is acknowledged. A crash at any
moment leaves either no key file or a complete one; stray temporaries are removed at start-up.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import stat

from kesd import errors
from kesd.names import valid_name

log = logging.getLogger("kesd.keystore.fs")

MAX_VALUE_BYTES = 1 << 20
_TMP_PREFIX = ".tmp-"
_O_FLAGS = os.O_CLOEXEC | os.O_NOFOLLOW


class FSKeyStore:
    """Keys as files in one directory (mode 0600 files in a 0700 directory)."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        try:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise errors.StartupError(
                f"keystore.fs.path: cannot create directory '{path}': {exc.strerror}"
            ) from None
        if not os.path.isdir(self.path):
            raise errors.StartupError(f"keystore.fs.path: '{path}' is not a directory")
        mode = stat.S_IMODE(os.stat(self.path).st_mode)
        if mode & 0o077:
            log.warning("keystore directory %s has mode %04o; 0700 is recommended", self.path, mode)
        self._remove_stale_temporaries()

    def _file(self, name: str) -> str:
        """The path of a key file; the name is validated before any path is built."""
        if not valid_name(name):
            raise errors.InvalidKeyName(name)
        return os.path.join(self.path, name)

    def create(self, name: str, value: bytes) -> None:
        """Durably store ``value`` under ``name`` unless it exists."""
        final = self._file(name)
        tmp = os.path.join(self.path, _TMP_PREFIX + secrets.token_hex(8))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_FLAGS, 0o600)
            try:
                view = memoryview(value)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, final)
            except FileExistsError:
                raise errors.KeyExists from None
            finally:
                os.unlink(tmp)
            self._sync_dir()
        except OSError as exc:
            log.error("creating key file %s failed: %s", final, exc.strerror)
            raise errors.KeystoreError(errors.CREATE_FAILED) from None

    def get(self, name: str) -> bytes:
        """Read the key file (at most 1 MiB)."""
        path = self._file(name)
        try:
            fd = os.open(path, os.O_RDONLY | _O_FLAGS)
        except FileNotFoundError:
            self._require_directory(errors.READ_FAILED)
            raise errors.KeyNotFound from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise errors.KeyNotFound from None
            log.error("opening key file %s failed: %s", path, exc.strerror)
            raise errors.KeystoreError(errors.READ_FAILED) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise errors.KeyNotFound
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(MAX_VALUE_BYTES + 1)
        except OSError as exc:
            log.error("reading key file %s failed: %s", path, exc.strerror)
            raise errors.KeystoreError(errors.READ_FAILED) from None
        finally:
            os.close(fd)
        if len(data) > MAX_VALUE_BYTES:
            log.error("key file %s is larger than 1 MiB", path)
            raise errors.KeystoreError(errors.READ_FAILED)
        return data

    def delete(self, name: str) -> None:
        """Unlink the key file and make the removal durable."""
        path = self._file(name)
        try:
            os.unlink(path)
        except FileNotFoundError:
            self._require_directory(errors.DELETE_FAILED)
            raise errors.KeyNotFound from None
        except OSError as exc:
            log.error("deleting key file %s failed: %s", path, exc.strerror)
            raise errors.KeystoreError(errors.DELETE_FAILED) from None
        try:
            self._sync_dir()
        except OSError as exc:
            log.error("syncing keystore directory %s failed: %s", self.path, exc.strerror)
            raise errors.KeystoreError(errors.DELETE_FAILED) from None

    def list(self, prefix: str) -> list[str]:
        """Sorted key names with ``prefix`` (temporaries and other dot-files are not keys)."""
        try:
            with os.scandir(self.path) as it:
                names = [
                    e.name
                    for e in it
                    if e.name.startswith(prefix)
                    and not e.name.startswith(".")
                    and e.is_file(follow_symlinks=False)
                ]
        except OSError as exc:
            log.error("listing keystore directory %s failed: %s", self.path, exc.strerror)
            raise errors.KeystoreError(errors.LIST_FAILED) from None
        names.sort()
        return names

    def status(self) -> None:
        """Reachable if the directory can be stat-ed and is still a directory."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            log.error("keystore directory %s is not accessible: %s", self.path, exc.strerror)
            raise errors.KeystoreUnreachable from None
        if not stat.S_ISDIR(st.st_mode):
            raise errors.KeystoreUnavailable

    def describe(self) -> str:
        """Human description."""
        return f"filesystem {self.path}"

    def _require_directory(self, failure: str) -> None:
        """A missing file means "no such key" only while the directory itself is there."""
        if not os.path.isdir(self.path):
            log.error("keystore directory %s is gone", self.path)
            raise errors.KeystoreError(failure)

    def _sync_dir(self) -> None:
        """fsync the directory so that a created or removed entry survives a crash."""
        dfd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _remove_stale_temporaries(self) -> None:
        """Remove temporaries a crashed create left behind (they never hold an acknowledged key)."""
        with os.scandir(self.path) as it:
            for entry in it:
                if entry.name.startswith(_TMP_PREFIX):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                        log.info("removed stale temporary %s", entry.path)

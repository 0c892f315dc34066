"""Keeping secrets out of swap and core dumps: ``mlockall``, no core files, not ptrace-able."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import resource

from kesd.errors import StartupError

_MCL_CURRENT, _MCL_FUTURE = 1, 2
_PR_SET_DUMPABLE = 4

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def harden_process() -> None:
    """Disable core dumps and ptrace attachment by unprivileged peers (always safe to call)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


def lock_memory() -> None:
    """Lock all current and future pages in RAM, or explain precisely why that is impossible."""
    if _libc.mlockall(_MCL_CURRENT | _MCL_FUTURE) == 0:
        return
    err = ctypes.get_errno()
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    limit = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft // 1024} KiB"
    if err in (errno.EPERM, errno.ENOMEM):
        raise StartupError(
            f"--mlock: cannot lock memory ({os.strerror(err)}): the process lacks CAP_IPC_LOCK and its "
            f"memlock limit is {limit}; run kesd with CAP_IPC_LOCK (the systemd unit grants it) "
            "or raise LimitMEMLOCK"
        )
    raise StartupError(f"--mlock: mlockall failed: {os.strerror(err)}")


def memory_locked() -> bool:
    """True if this process has locked memory (VmLck > 0 in /proc/self/status)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmLck:"):
                    return int(line.split()[1]) > 0
    except OSError:
        pass
    return False

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
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def harden_process() -> None:
    """Disable core dumps and ptrace attachment by unprivileged peers (always safe to call)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    drop_inheritable_capabilities()


def drop_inheritable_capabilities() -> None:
    """Empty the ambient and inheritable capability sets, so no program kesd starts inherits any.

    The packaged launcher hands CAP_IPC_LOCK to Python as an ambient capability; kesd keeps it in its
    own effective set (``mlockall``'s future pages need it) but passes nothing on. Best effort: where a
    seccomp filter denies ``capset`` the inheritable set stays, which alone grants an ordinary program
    nothing.
    """
    _libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capget(ctypes.byref(header), data) != 0 or not any(d.inheritable for d in data):
        return
    for item in data:
        item.inheritable = 0
    _libc.capset(ctypes.byref(header), data)


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

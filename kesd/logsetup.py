"""Where kesd's log records go: journald (natively, with structured fields) or plain text on stderr.

Under systemd, stderr is a journal stream (``$JOURNAL_STREAM`` names its device and inode): then
records go to journald directly, keeping their priority, source location and ``KESD_*`` fields.
Anywhere else they are plain lines on stderr. ``--log-target`` forces one or the other.
"""

from __future__ import annotations

import logging
import sys

from kesd import systemd
from kesd.config import LOG_OFF, LogConfig

TARGETS = ("auto", "journal", "stderr")
_MARK = "_kesd_logsetup"
STDERR_FORMAT = "%(asctime)s %(levelname)s %(message)s"
STDERR_DATEFMT = "%Y-%m-%d %H:%M:%S"


def python_level(slog_level: int) -> int:
    """A ``log.error`` level (slog: DEBUG −4, INFO 0, WARN 4, ERROR 8, off 9) as a ``logging`` level."""
    if slog_level >= LOG_OFF:
        return logging.CRITICAL + 10
    return max(1, logging.INFO + int(slog_level * 2.5))


def choose_target(target: str) -> str:
    """``journal`` or ``stderr`` for a ``--log-target`` value (auto: journal iff stderr is the journal)."""
    if target not in TARGETS:
        raise ValueError(f"invalid log target '{target}' (use {', '.join(TARGETS)})")
    if target == "auto":
        return "journal" if systemd.stderr_is_journal() else "stderr"
    return target


def configure(target: str = "auto", log: LogConfig | None = None) -> str:
    """Install kesd's log handler (replacing one installed before) and return the target used.

    ``journal`` falls back to stderr, with a warning, when no journald socket is there. The audit
    logger gets the journal handler too (with ``SYSLOG_IDENTIFIER=kesd-audit``); on stderr the
    audit records keep their own stdout output.
    """
    chosen = choose_target(target)
    root = logging.getLogger("kesd")
    audit = logging.getLogger(systemd.AUDIT_LOGGER)
    for logger in (root, audit):
        for handler in [h for h in logger.handlers if getattr(h, _MARK, False)]:
            logger.removeHandler(handler)
            handler.close()
    fallback = chosen == "journal" and not systemd.journal_available()
    if chosen == "journal" and not fallback:
        handler: logging.Handler = systemd.JournalHandler()
        setattr(handler, _MARK, True)
        root.addHandler(handler)
        audit_handler = systemd.JournalHandler()
        setattr(audit_handler, _MARK, True)
        audit.addHandler(audit_handler)
        audit.propagate = False
    else:
        chosen = "stderr"
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(STDERR_FORMAT, STDERR_DATEFMT))
        setattr(handler, _MARK, True)
        root.addHandler(handler)
    apply_levels(log or LogConfig())
    if fallback:
        root.warning(
            "log target journal: no journald socket at %s, logging to stderr", systemd.JOURNAL_SOCKET
        )
    return chosen


def apply_levels(log: LogConfig) -> None:
    """Set the error log's minimum level from the config (called again on reload)."""
    logging.getLogger("kesd").setLevel(python_level(log.error_level))

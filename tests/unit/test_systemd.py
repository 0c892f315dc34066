"""The pure parts of kesd.systemd and kesd.logsetup: environment parsing, journal encoding, levels."""

from __future__ import annotations

import logging
import struct

import pytest

from kesd import logsetup, systemd
from kesd.config import LOG_LEVELS, LOG_OFF


def test_listen_env_with_names() -> None:
    env = {"LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "admin:tls"}
    assert systemd.parse_listen_env(env, 42) == [(3, "admin"), (4, "tls")]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"LISTEN_PID": "42", "LISTEN_FDS": "2"}, [(3, "unknown"), (4, "unknown")]),
        (
            {"LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "only-one"},
            [(3, "unknown"), (4, "unknown")],
        ),
        ({"LISTEN_PID": "42", "LISTEN_FDS": "1", "LISTEN_FDNAMES": ""}, [(3, "unknown")]),
        ({"LISTEN_PID": "43", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "tls"}, []),
        ({"LISTEN_PID": "x", "LISTEN_FDS": "1"}, []),
        ({"LISTEN_PID": "42", "LISTEN_FDS": "-1"}, []),
        ({"LISTEN_FDS": "1"}, []),
        ({}, []),
    ],
    ids=[
        "no-names",
        "name-count-mismatch",
        "empty-names",
        "other-pid",
        "bad-pid",
        "bad-count",
        "no-pid",
        "none",
    ],
)
def test_listen_env_edge_cases(env: dict[str, str], expected: list[tuple[int, str]]) -> None:
    assert systemd.parse_listen_env(env, 42) == expected


def test_notify_addresses() -> None:
    assert systemd.Notifier("/run/systemd/notify").address == "/run/systemd/notify"
    assert systemd.Notifier("@abstract/name").address == b"\0abstract/name"
    assert systemd.Notifier("").address is None
    assert not systemd.Notifier("").notify(READY=1)
    assert systemd.Notifier("vsock:2:1234").address is None


def test_watchdog_seconds() -> None:
    import os

    assert systemd.watchdog_seconds({}) is None
    assert systemd.watchdog_seconds({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert systemd.watchdog_seconds({"WATCHDOG_USEC": "0"}) is None
    assert systemd.watchdog_seconds({"WATCHDOG_USEC": "junk"}) is None
    mine = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
    assert systemd.watchdog_seconds(mine) == 1.0
    assert systemd.watchdog_seconds({**mine, "WATCHDOG_PID": "1"}) is None


def test_encode_entry_plain_and_binary_fields() -> None:
    entry = systemd.encode_entry([("MESSAGE", "one line"), ("KESD_PATH", "/v1/x"), ("MULTI", "a\nb")])
    assert entry.startswith(b"MESSAGE=one line\nKESD_PATH=/v1/x\n")
    assert entry.endswith(b"MULTI\n" + struct.pack("<Q", 3) + b"a\nb\n")


@pytest.mark.parametrize(
    ("attribute", "field"),
    [
        ("kesd_status", "KESD_STATUS"),
        ("kesd_duration_us", "KESD_DURATION_US"),
        ("kesd_", "KESD_"),
        ("kesd_naïve", None),
        ("kesd_a-b", None),
        ("kesd_" + "x" * 60, None),
    ],
)
def test_journal_field_names(attribute: str, field: str | None) -> None:
    assert systemd.journal_field_name(attribute) == field


@pytest.mark.parametrize(
    ("level", "prio"),
    [
        (logging.CRITICAL, 2),
        (logging.ERROR, 3),
        (logging.WARNING, 4),
        (logging.INFO, 6),
        (logging.DEBUG, 7),
        (25, 6),
    ],
)
def test_priorities(level: int, prio: int) -> None:
    assert systemd.priority(level) == prio


def _record(name: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord(
        name, logging.WARNING, "/src/kesd/x.py", 12, "hello %s", ("world",), None, "fn"
    )
    record.__dict__.update(extra)
    return record


def test_journal_fields_of_a_record() -> None:
    handler = systemd.JournalHandler(path="/nonexistent")
    try:
        fields = dict(handler.fields(_record("kesd.server", kesd_status=403, kesd_none=None, other=1)))
        audit = dict(handler.fields(_record("kesd.audit", kesd_identity="abc")))
    finally:
        handler.close()
    assert fields["MESSAGE"] == "hello world"
    assert fields["PRIORITY"] == "4"
    assert fields["SYSLOG_IDENTIFIER"] == "kesd"
    assert (fields["CODE_FILE"], fields["CODE_LINE"], fields["CODE_FUNC"]) == ("/src/kesd/x.py", "12", "fn")
    assert fields["KESD_STATUS"] == "403"
    assert "KESD_NONE" not in fields and "OTHER" not in fields
    assert audit["SYSLOG_IDENTIFIER"] == "kesd-audit"
    assert audit["KESD_IDENTITY"] == "abc"


@pytest.mark.parametrize(
    ("word", "level"),
    [("debug", logging.DEBUG), ("info", logging.INFO), ("warn", logging.WARNING), ("error", logging.ERROR)],
)
def test_log_levels_map_to_logging(word: str, level: int) -> None:
    assert logsetup.python_level(LOG_LEVELS[word]) == level


def test_log_off_silences_everything() -> None:
    assert logsetup.python_level(LOG_OFF) > logging.CRITICAL
    assert logsetup.python_level(-100) >= 1


def test_log_target_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert logsetup.choose_target("auto") == "stderr"
    assert logsetup.choose_target("journal") == "journal"
    assert logsetup.choose_target("stderr") == "stderr"
    with pytest.raises(ValueError, match="invalid log target"):
        logsetup.choose_target("syslog")


def test_journal_stream_must_match_stderr() -> None:
    assert not systemd.stderr_is_journal({"JOURNAL_STREAM": "1:2"})
    assert not systemd.stderr_is_journal({"JOURNAL_STREAM": "garbage"})
    assert not systemd.stderr_is_journal({})

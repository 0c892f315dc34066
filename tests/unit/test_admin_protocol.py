"""The admin wire format: frames, request validation, answers, and the operation table's coverage."""

from __future__ import annotations

import json
import struct

import pytest

from kesd.admin import operations, protocol
from kesd.errors import KesError


def test_frame_is_big_endian_length_and_compact_json() -> None:
    data = protocol.encode({"v": 1, "op": "status", "args": {}})
    assert data[:4] == struct.pack(">I", len(data) - 4)
    assert data[4:] == b'{"v":1,"op":"status","args":{}}'
    assert protocol.decode(data[4:]) == {"v": 1, "op": "status", "args": {}}


def test_non_ascii_survives_a_round_trip() -> None:
    data = protocol.encode(protocol.ok({"name": "clé"}))
    assert protocol.decode(data[4:])["result"] == {"name": "clé"}


@pytest.mark.parametrize(
    ("length", "limit", "status"),
    [
        (0, 10, 400),
        (11, 10, 413),
        (protocol.MAX_REQUEST + 1, protocol.MAX_REQUEST, 413),
        ((1 << 32) - 1, 10, 413),
    ],
)
def test_frame_length_limits(length: int, limit: int, status: int) -> None:
    with pytest.raises(KesError) as info:
        protocol.frame_length(struct.pack(">I", length), limit)
    assert info.value.status == status


def test_frame_length_within_limit() -> None:
    assert protocol.frame_length(struct.pack(">I", 10), 10) == 10


@pytest.mark.parametrize(
    ("payload", "text"),
    [
        (b"\xff", "not UTF-8 JSON"),
        (b"{", "not UTF-8 JSON"),
        (b"[]", "not an object"),
        (b'"status"', "not an object"),
        (b"null", "not an object"),
    ],
)
def test_decode_refuses_what_is_not_a_json_object(payload: bytes, text: str) -> None:
    with pytest.raises(KesError) as info:
        protocol.decode(payload)
    assert info.value.status == 400 and text in info.value.message


def test_parse_request_accepts_exactly_the_operation_arguments() -> None:
    req = protocol.parse_request({"v": 1, "op": "key.import", "args": {"name": "k", "key": "AAAA"}})
    assert req.op.name == "key.import" and dict(req.args) == {"name": "k", "key": "AAAA"}
    assert protocol.parse_request({"v": 1, "op": "status"}).args == {}
    assert protocol.parse_request({"v": 1, "op": "status", "args": None}).args == {}


@pytest.mark.parametrize(
    ("message", "text"),
    [
        ({"op": "status"}, "unsupported protocol version null (kesd speaks version 1)"),
        ({"v": 2, "op": "status"}, "unsupported protocol version 2"),
        ({"v": "1", "op": "status"}, 'unsupported protocol version "1"'),
        ({"v": [1], "op": "status"}, "unsupported protocol version ?"),
        ({"v": 1}, "'op' must be a string"),
        ({"v": 1, "op": "rm -rf"}, "unknown operation 'rm -rf'"),
        ({"v": 1, "op": "x" * 200}, "unknown operation '" + "x" * 64 + "\\u2026'"),
        ({"v": 1, "op": "status", "args": "all"}, "'args' of status must be an object"),
        ({"v": 1, "op": "status", "args": {"all": "yes"}}, "unexpected argument 'all' for status"),
        ({"v": 1, "op": "key.info", "args": {}}, "missing argument 'name' for key.info"),
        ({"v": 1, "op": "key.info", "args": {"name": None}}, "argument 'name' of key.info must be a string"),
        ({"v": 1, "op": "status", "extra": True}, "unexpected field 'extra' in request"),
    ],
)
def test_parse_request_errors(message: dict, text: str) -> None:
    with pytest.raises(KesError) as info:
        protocol.parse_request(message)
    assert info.value.status == 400
    assert info.value.message == text or text in info.value.message


def test_a_malformed_secret_argument_is_not_echoed() -> None:
    with pytest.raises(KesError) as info:
        protocol.parse_request({"v": 1, "op": "key.import", "args": {"name": "k", "key": 12345678}})
    assert "12345678" not in info.value.message


@pytest.mark.parametrize(
    ("op", "args", "path"),
    [
        ("status", {}, "admin:status"),
        ("key.rm", {"name": "my-key"}, "admin:key.rm/my-key"),
        ("key.import", {"name": "k", "key": "c2VjcmV0", "cipher": "AES256"}, "admin:key.import/k"),
        ("key.ls", {}, "admin:key.ls"),
        ("log.follow", {"stream": "audit"}, "admin:log.follow/audit"),
    ],
)
def test_audit_path_names_the_target_never_a_secret(op: str, args: dict, path: str) -> None:
    assert protocol.parse_request(protocol.make_request(op, args)).audit_path == path


def test_make_request_leaves_out_none() -> None:
    assert protocol.make_request("key.ls", {"pattern": None}) == {"v": 1, "op": "key.ls", "args": {}}


def test_answers() -> None:
    assert protocol.result_of(protocol.ok({"a": 1})) == {"a": 1}
    with pytest.raises(KesError) as info:
        protocol.result_of(protocol.failure(404, "key does not exist"))
    assert (info.value.status, info.value.message) == (404, "key does not exist")
    with pytest.raises(KesError) as info:
        protocol.result_of({"v": 1, "ok": True, "result": [1]})
    assert info.value.status == 500
    with pytest.raises(KesError):
        protocol.result_of({"v": 1})
    assert protocol.failure_of(KesError("nope", 418))["error"] == {"status": 418, "message": "nope"}


def test_stream_frames() -> None:
    assert protocol.line_frame('{"a":1}') == {"v": 1, "line": '{"a":1}'}
    assert protocol.dropped_frame(3) == {"v": 1, "dropped": 3}
    assert protocol.end_frame("bye") == {"v": 1, "end": True, "reason": "bye"}
    json.dumps(protocol.end_frame("bye"))


def test_every_operation_has_an_implementation() -> None:
    plain = {name for name, op in protocol.OPERATIONS.items() if not op.stream}
    assert plain == set(operations.OPERATIONS)
    streams = {name for name, op in protocol.OPERATIONS.items() if op.stream}
    assert streams == {"log.follow"}


def test_secret_arguments_are_declared() -> None:
    assert protocol.OPERATIONS["key.import"].secret == ("key",)
    for op in protocol.OPERATIONS.values():
        assert op.target not in op.secret

"""What ``kes`` prints: walkthrough layouts byte for byte, JSON forms, info and list layouts."""

from __future__ import annotations

import base64
import json

import pytest

from kesd.cli import output
from kesd.client import AuditEvent, Metrics

IDENTITY = "2e897f99a779cf5dd147e58de0fe55a494f546f4dcae8bc9e5426d2b5cd35680"
PLAINTEXT = base64.b64decode("UGgcVBgyQYwxKzve7UJNV5x8aTiPJFoR+s828reNjh0=")
CIPHERTEXT = b"\x95\x00\xff some ciphertext bytes"


def test_identity_new_matches_walkthrough_layout():
    # The walkthrough shows a blank line, then three lines indented by two spaces, values aligned.
    expected = f"\n  Private key:  private.key\n  Certificate:  public.crt\n  Identity:     {IDENTITY}\n"
    assert output.identity_new("private.key", "public.crt", IDENTITY) == expected


def test_identity_new_prints_paths_as_given():
    text = output.identity_new("client.key", "client.crt", IDENTITY)
    assert "  Private key:  client.key\n" in text
    assert "  Certificate:  client.crt\n" in text


def test_identity_of_matches_walkthrough_layout():
    assert output.identity_of(IDENTITY) == f"\n  Identity:  {IDENTITY}\n"


def test_api_key_layout_shows_key_and_identity():
    text = output.api_key("kes:v1:AD9E7FSYWrMD+VjhI6q545cYT9YOyFxZb7UnjEepYDRc", IDENTITY)
    lines = text.splitlines()
    assert lines[0] == ""
    assert lines[1] == "  API key:   kes:v1:AD9E7FSYWrMD+VjhI6q545cYT9YOyFxZb7UnjEepYDRc"
    assert lines[2] == f"  Identity:  {IDENTITY}"


def test_dek_matches_walkthrough_layout():
    expected = (
        "{\n"
        "  plaintext : UGgcVBgyQYwxKzve7UJNV5x8aTiPJFoR+s828reNjh0=\n"
        f"  ciphertext: {base64.b64encode(CIPHERTEXT).decode()}\n"
        "}\n"
    )
    assert output.dek(PLAINTEXT, CIPHERTEXT) == expected


def test_dek_json_is_compact_with_plaintext_first():
    text = output.dek_json(PLAINTEXT, CIPHERTEXT)
    assert text.endswith("\n")
    assert text.startswith('{"plaintext":"UGgcVBgyQYwxKzve7UJNV5x8aTiPJFoR+s828reNjh0=","ciphertext":"')
    assert " " not in text
    doc = json.loads(text)
    assert base64.b64decode(doc["ciphertext"]) == CIPHERTEXT


def test_base64_is_standard_with_padding():
    assert output.b64(b"\xfb\xff") == "+/8="


@pytest.mark.parametrize("label", ["ciphertext", "plaintext", "hmac"])
def test_labelled_result_human_and_json(label):
    assert output.labelled(label, b"\x00\x01") == f"\n{label}: AAE=\n"
    assert output.labelled_json(label, b"\x00\x01") == f'{{"{label}":"AAE="}}\n'


def test_key_info_pads_labels_like_kes():
    info = {
        "name": "my-key",
        "algorithm": "AES256",
        "created_at": "2024-01-12T10:39:20.886816Z",
        "created_by": IDENTITY,
    }
    assert output.key_info(info) == (
        f"Name        my-key\nAlgorithm   AES256\nDate        2024-01-12 10:39:20\nOwner       {IDENTITY}\n"
    )


def test_key_info_tolerates_missing_fields():
    text = output.key_info({"name": "k"})
    assert text.splitlines() == ["Name        k", "Algorithm   ", "Date        ", "Owner       "]


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("2024-01-12T10:39:20.886816Z", "2024-01-12 10:39:20"),
        ("0001-01-01T00:00:00Z", "0001-01-01 00:00:00"),
        ("2023-05-01T23:59:59.123456789+02:00", "2023-05-01 23:59:59"),
        ("not a time", ""),
        (None, ""),
        (12, ""),
    ],
)
def test_clock(timestamp, expected):
    assert output.clock(timestamp) == expected


def test_key_list_has_heading_and_sorted_names():
    assert output.key_list(["b", "a", "c-1"]) == "Key\na\nb\nc-1\n"


def test_key_list_prints_nothing_when_empty():
    assert output.key_list([]) == ""


def test_key_list_json():
    assert output.key_list_json(["b", "a"]) == '["a","b"]\n'
    assert output.key_list_json([]) == "[]\n"


def test_compact_json_keeps_unicode_and_order():
    assert output.compact_json({"name": "ключ", "a": 1}) == '{"name":"ключ","a":1}\n'


# --- durations and sizes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0s"),
        (1, "1ns"),
        (999, "999ns"),
        (1_500, "1.5µs"),
        (12_106, "12.106µs"),
        (1_000_000, "1ms"),
        (345_760_000, "345.76ms"),
        (1_050_000_000, "1.05s"),
        (15_000_000_000, "15s"),
        (60_000_000_000, "1m0s"),
        (3_723_500_000_000, "1h2m3.5s"),
        (3_600_000_000_000, "1h0m0s"),
        (-1_500, "-1.5µs"),
    ],
)
def test_go_duration(ns, text):
    assert output.go_duration(ns) == text


@pytest.mark.parametrize(
    ("ns", "multiple", "rounded"),
    [
        (1_499_999, 1_000_000, 1_000_000),
        (1_500_000, 1_000_000, 2_000_000),
        (-1_500_000, 1_000_000, -2_000_000),
    ],
)
def test_round_duration_halves_away_from_zero(ns, multiple, rounded):
    assert output.round_duration(ns, multiple) == rounded


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (999, "999ns"),
        (12_106, "12µs"),
        (1_234_567, "1.2ms"),
        (12_345_678, "12ms"),
        (1_250_000_000, "1.3s"),
    ],
)
def test_short_duration(ns, text):
    assert output.short_duration(ns) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (999, "999 B"), (1000, "1.0 KB"), (135_168, "135.2 KB"), (47_439_872, "47.4 MB")],
)
def test_size(n, text):
    assert output.size(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(5, "5 seconds"), (60, "60 seconds"), (61, "1 minutes"), (7200, "2 hours"), (90_000, "1 days 1 hours")],
)
def test_uptime(seconds, text):
    assert output.uptime(seconds) == text


# --- kes status ----------------------------------------------------------------------------------

STATUS = {
    "version": "0.1.0",
    "os": "linux",
    "arch": "amd64",
    "uptime": 125,
    "num_cpu": 8,
    "num_cpu_used": 4,
    "mem_heap_used": 47_439_872,
    "mem_stack_used": 135_168,
    "keystore_latency": 2,
}


def test_status_layout():
    assert output.status("https://127.0.0.1:7373", STATUS, 0.0074) == (
        "● 127.0.0.1:7373\n"
        "  Version  0.1.0\n"
        "  Uptime   2 minutes\n"
        "  Latency  7ms\n"
        "  OS       linux\n"
        "  CPUs     4 amd64\n"
        "  Memory\n"
        "  · Heap   47.4 MB\n"
        "  · Stack  135.2 KB\n"
        "  Keystore reachable, latency 2ms\n"
    )


def test_status_short_is_the_endpoint_line():
    assert output.status("https://[::1]:7373", STATUS, 0.1, short=True) == "● [::1]:7373\n"


def test_status_keystore_down():
    down = {**STATUS, "keystore_unavailable": True, "keystore_unreachable": True}
    del down["keystore_latency"]
    assert output.status("h:1", down, 0.0).splitlines()[-1] == "  Keystore unreachable"


def test_status_tolerates_missing_fields():
    lines = output.status("h:1", {}, 0.0).splitlines()
    assert lines[1] == "  Version"
    assert lines[2] == "  Uptime   0 seconds"
    assert not any(line.startswith("  Keystore") for line in lines)


def test_api_table():
    apis = [
        {"method": "GET", "path": "/version", "max_body": 0, "timeout": 10},
        {"method": "PUT", "path": "/v1/key/create/", "max_body": 0, "timeout": 15},
        {"method": "GET", "path": "/v1/log/audit", "max_body": 0, "timeout": 0},
    ]
    assert output.api_table(apis) == (
        "\n"
        "  Method  API                          Timeout\n"
        "  GET     /version                     10s\n"
        "  PUT     /v1/key/create/              15s\n"
        "  GET     /v1/log/audit                Inf\n"
    )


# --- listings, policies, identities --------------------------------------------------------------


@pytest.mark.parametrize("heading", ["Key", "Policy", "Identity"])
def test_name_list(heading):
    assert output.name_list(heading, ["b", "a"]) == f"{heading}\na\nb\n"
    assert output.name_list(heading, []) == ""


def test_name_list_json():
    assert output.name_list_json(["b", "a"]) == '["a","b"]\n'


POLICY_INFO = {"name": "my-app", "created_at": "2024-01-12T10:39:20.886816Z", "created_by": IDENTITY}


def test_policy_info_layout():
    assert output.policy_info("my-app", POLICY_INFO) == (
        f"Name        my-app\nDate        2024-01-12 10:39:20\nCreated by  {IDENTITY}\n"
    )


def test_policy_info_without_date_or_creator():
    assert output.policy_info("p", {"created_at": "0001-01-01T00:00:00Z"}) == "Name        p\n"


POLICY = {
    "name": "my-app",
    "allow": ["/v1/key/create/my-key*", "/v1/status"],
    "deny": ["/v1/key/*/my-key-secret"],
    "created_at": "2024-01-12T10:39:20Z",
    "created_by": IDENTITY,
}


def test_policy_show_layout():
    assert output.policy_show(POLICY) == (
        "Allow:\n"
        "  · /v1/key/create/my-key*\n"
        "  · /v1/status\n"
        "\n"
        "Deny:\n"
        "  · /v1/key/*/my-key-secret\n"
        "\n"
        "Created at: 2024-01-12 10:39:20\n"
        f"Created by: {IDENTITY}\n"
    )


def test_policy_show_only_deny_and_unknown_creator():
    assert (
        output.policy_show({"allow": [], "deny": ["/v1/x"]}) == "Deny:\n  · /v1/x\n\nCreated by: <unknown>\n"
    )


def test_policy_show_json_uses_newest_map_shape():
    assert output.policy_show_json(POLICY) == (
        '{"allow":{"/v1/key/create/my-key*":{},"/v1/status":{}},"deny":{"/v1/key/*/my-key-secret":{}},'
        f'"created_at":"2024-01-12T10:39:20Z","created_by":"{IDENTITY}"}}\n'
    )
    assert output.policy_show_json({"allow": ["/v1/a"], "deny": []}) == '{"allow":{"/v1/a":{}}}\n'


def test_identity_info_of_policy_holder():
    info = {"policy": "my-app", "created_at": "2024-01-12T10:39:20Z", "created_by": "admin-id"}
    assert output.identity_info(IDENTITY, info) == (
        f"Identity    {IDENTITY}\n"
        "Policy      my-app\n"
        "Created At  2024-01-12 10:39:20\n"
        "Role        User\n"
        "Created By  admin-id\n"
    )


def test_identity_info_of_admin():
    info = {"admin": True, "created_at": "2024-01-12T10:39:20Z"}
    assert output.identity_info(IDENTITY, info) == (
        f"Identity    {IDENTITY}\nCreated At  2024-01-12 10:39:20\nRole        Admin\n"
    )


SELF = {
    "identity": IDENTITY,
    "admin": False,
    "policy": "my-app",
    "allow": ["/v1/key/create/my-key*"],
    "deny": ["/v1/key/*/my-key-secret"],
    "created_at": "2024-01-12T10:39:20Z",
    "created_by": "admin-id",
}


def test_self_info_of_policy_holder():
    assert output.self_info(SELF) == (
        f"Identity    {IDENTITY}\n"
        "Created At  2024-01-12 10:39:20\n"
        "Role        User\n"
        "Created By  admin-id\n"
        "\n"
        "Policy      my-app\n"
        "Created At  2024-01-12 10:39:20\n"
        "Allow\n"
        "            · /v1/key/create/my-key*\n"
        "Deny\n"
        "            · /v1/key/*/my-key-secret\n"
    )


def test_self_info_of_admin_has_no_policy_block():
    admin = {"identity": IDENTITY, "admin": True, "policy": "", "allow": [], "deny": [], "created_at": "x"}
    assert output.self_info(admin) == f"Identity    {IDENTITY}\nCreated At\nRole        Admin\n"


def test_self_info_json_is_the_flat_sdk_shape():
    assert output.self_info_json(SELF) == (
        f'{{"identity":"{IDENTITY}","policy":"my-app","allow":{{"/v1/key/create/my-key*":{{}}}},'
        '"deny":{"/v1/key/*/my-key-secret":{}},"created_at":"2024-01-12T10:39:20Z","created_by":"admin-id"}\n'
    )
    admin = {"identity": IDENTITY, "admin": True, "allow": [], "deny": []}
    assert output.self_info_json(admin) == f'{{"identity":"{IDENTITY}","admin":true}}\n'


# --- kes log -------------------------------------------------------------------------------------


def _columns(line: str) -> list[int]:
    """Start offsets of the whitespace-separated fields of a line."""
    starts, previous = [], " "
    for i, char in enumerate(line):
        if char != " " and previous == " ":
            starts.append(i)
        previous = char
    return starts


def test_audit_line_aligns_with_header():
    event = AuditEvent(
        time="2023-03-24T12:37:33Z",
        path="/v1/key/create/my-key",
        identity=IDENTITY,
        ip="10.1.2.3",
        status=200,
        duration_ns=12_106,
    )
    line = output.audit_line(event)
    assert line == (
        "12:37:33    200       2e897f99a779cf5dd147    10.1.2.3           /v1/key/create/my-key"
        "             12µs\n"
    )
    assert _columns(line) == _columns(output.AUDIT_HEADER)


def test_audit_line_without_identity_and_ip():
    event = AuditEvent(
        time="2024-01-12T23:59:01.5+02:00", path="/v1/x", identity="", ip="", status=400, duration_ns=0
    )
    line = output.audit_line(event)
    assert line.startswith("23:59:01    400                               0.0.0.0            /v1/x")
    assert line.endswith(" 0s\n")


def test_audit_line_with_unreadable_time():
    event = AuditEvent(time="", path="/v1/x", identity="a", ip="::1", status=403, duration_ns=2_000_000_000)
    assert output.audit_line(event).startswith("--:--:--    403       a")
    assert output.audit_line(event).endswith(" 2s\n")


def test_error_line():
    assert output.error_line("aws: secret was not encrypted") == "aws: secret was not encrypted\n"
    assert output.error_line("with newline\n") == "with newline\n"


# --- kes metric ----------------------------------------------------------------------------------

METRICS = Metrics(
    request_ok=80,
    request_err=15,
    request_fail=5,
    request_active=1,
    audit_events=101,
    error_events=2,
    latency={0.01: 90, 0.05: 100},
    latency_sum=0.25,
    latency_count=100,
    uptime=125.37,
    cpus=8,
    usable_cpus=4,
    threads=11,
    heap_alloc=47_439_872,
    heap_objects=33_985,
    stack_alloc=135_168,
)


def _right_edges(line: str) -> list[int]:
    """End offsets of the whitespace-separated fields of a line."""
    return [start + len(word) for start, word in zip(_columns(line), line.split(), strict=True)]


def test_metric_view_layout():
    text = output.metric_view(METRICS, 12.5)
    lines = text.split("\n")
    assert len(text.splitlines()) == output.METRIC_LINES
    assert lines[1] == "Request    OK [2xx]       Err [4xx]       Err [5xx]      Req/s        Latency"
    assert lines[2].split() == ["80", "15", "5", "12.50", "2.5ms"]
    assert lines[3].split() == ["80.00%", "15.00%", "5.00%"]
    assert lines[5] == "System       UpTime            Heap           Stack       CPUs        Threads"
    assert lines[6].split() == ["2m5s", "47.4", "MB", "135.2", "KB", "4", "11"]
    # Each number ends where its heading ends.
    header_ends = [19, 35, 51, 62, 77]
    assert _right_edges(lines[2]) == header_ends
    assert _right_edges(lines[3]) == header_ends[:3]
    assert [_right_edges(lines[6])[i] for i in (0, 2, 4, 5, 6)] == header_ends


def test_metric_view_without_requests():
    lines = output.metric_view(Metrics(), 0.0).split("\n")
    assert lines[2].split() == ["0", "0", "0", "0.00", "-"]
    assert lines[3].split() == ["0.00%", "0.00%", "0.00%"]


def test_metric_json_is_the_sdk_snapshot():
    assert output.metric_json(METRICS) == (
        '{"kes_http_request_success":80,"kes_http_request_error":15,"kes_http_request_failure":5,'
        '"kes_http_request_active":1,"kes_log_audit_events":101,"kes_log_error_events":2,'
        '"kes_http_response_time":{"10000000":90,"50000000":100},"kes_system_up_time":125370000000,'
        '"kes_system_num_cpu":8,"kes_system_num_cpu_used":4,"kes_system_num_threads":11,'
        '"kes_system_mem_heap_used":47439872,"kes_system_mem_heap_objects":33985,'
        '"kes_system_mem_stack_used":135168}\n'
    )

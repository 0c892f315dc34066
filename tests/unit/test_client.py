"""The pure helpers of ``kesd.client``: endpoints, path escaping, error and list parsing, answer
shapes of every KES era, log-stream lines and Prometheus metrics (vectors: streams.json, metrics.json).
"""

from __future__ import annotations

import pytest

from kesd import client
from tests import vectors

STREAMS = vectors.load("streams.json")["vectors"]
FAMILIES = vectors.load("metrics.json")["families"]
IDENTITY = "2e897f99a779cf5dd147e58de0fe55a494f546f4dcae8bc9e5426d2b5cd35680"


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("127.0.0.1:7373", ["https://127.0.0.1:7373"]),
        ("http://127.0.0.1:7373", ["https://127.0.0.1:7373"]),
        ("https://kes.example:7373/", ["https://kes.example:7373"]),
        ("HTTPS://kes.example", ["https://kes.example"]),
        (" a:1 , http://b:2,,", ["https://a:1", "https://b:2"]),
        ("[::1]:7373", ["https://[::1]:7373"]),
    ],
)
def test_parse_endpoints(setting, expected):
    assert client.parse_endpoints(setting) == expected


def test_parse_endpoints_rejects_empty():
    with pytest.raises(ValueError):
        client.parse_endpoints(" , ")


@pytest.mark.parametrize(
    ("base", "arg", "path"),
    [
        ("/v1/key/create", "my-key", "/v1/key/create/my-key"),
        ("/v1/key/list", "*", "/v1/key/list/%2A"),
        ("/v1/key/list", "my-key*", "/v1/key/list/my-key%2A"),
        ("/v1/key/list", "", "/v1/key/list"),  # the SDK's path.Join: no slash, the server redirects
        ("/v1/key/create", "a/b c?", "/v1/key/create/a%2Fb%20c%3F"),
        ("/v1/key/create", "a$&+,:;=@b", "/v1/key/create/a$&+,:;=@b"),
        ("/v1/key/create", "~_.-", "/v1/key/create/~_.-"),
        ("/v1/key/create", "ключ", "/v1/key/create/%D0%BA%D0%BB%D1%8E%D1%87"),
    ],
)
def test_route_escapes_like_go_path_escape(base, arg, path):
    assert client.route(base, arg) == path


@pytest.mark.parametrize(
    ("content_type", "body", "message"),
    [
        ("application/json", b'{"message":"key does not exist"\n}', "key does not exist"),
        ("application/json; charset=utf-8", b'{"message":"key already exists"}', "key already exists"),
        ("application/json", b'{"message":"M","error":"E"}', "E"),
        ("application/json", b'{"message":"M","error":""}', "M"),
        ("application/json", b"not json", "not json"),
        ("text/plain; charset=utf-8", b"404 page not found\n", "404 page not found\n"),
        ("", b"", ""),
    ],
)
def test_parse_error_follows_sdk_rules(content_type, body, message):
    err = client.parse_error(404, content_type, body)
    assert err.status == 404
    assert err.message == message
    assert str(err) == message


def test_parse_list_json_object():
    body = b'{"names":["a","b"],"continue_at":"c"}\n'
    assert client.parse_list("application/json", body, "names", "name") == (["a", "b"], "c")
    assert client.parse_list("application/json", b'{"names":null}', "names", "name") == ([], "")


def test_parse_list_ndjson_stream():
    body = b'{"identity":"x1"}\n\n{"identity":"x2"}\n'
    assert client.parse_list("application/x-ndjson", body, "identities", "identity") == (["x1", "x2"], "")


def test_parse_list_ndjson_error_line_raises():
    with pytest.raises(client.APIError, match="list broke"):
        client.parse_list("application/x-ndjson", b'{"name":"a"}\n{"error":"list broke"}\n', "names", "name")


def test_parse_list_policy_ndjson_with_details():
    body = (
        b'{"name":"my-app","created_at":"2024-01-12T10:39:20Z","created_by":"x"}\n'
        b'{"name":"other","created_at":"2024-01-12T10:39:20Z","created_by":"x"}\n'
    )
    assert client.parse_list("application/x-ndjson", body, "names", "name") == (["my-app", "other"], "")


def test_parse_list_identity_ndjson_with_details():
    body = (
        f'{{"identity":"{IDENTITY}","admin":true,"created_at":"2024-01-12T10:39:20Z"}}\n'
        '{"identity":"ab","policy":"p","created_at":"2024-01-12T10:39:20Z","created_by":"x"}\n'
    ).encode()
    names, _ = client.parse_list("application/x-ndjson", body, "identities", "identity")
    assert names == [IDENTITY, "ab"]


def test_parse_list_newest_identity_object():
    body = b'{"identities":["a","b"],"continue_at":""}\n'
    assert client.parse_list("application/json", body, "identities", "identity") == (["a", "b"], "")


def test_parse_list_legacy_array_of_names():
    assert client.parse_list("application/json", b'["p1","p2"]', "names", "name") == (["p1", "p2"], "")


def test_parse_list_ndjson_content_type_with_parameters():
    body = b'{"name":"a"}\n'
    assert client.parse_list("application/x-ndjson; charset=utf-8", body, "names", "name") == (["a"], "")


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b"{not json"),
        ("application/json", b'"a string"'),
        ("application/x-ndjson", b'{"name":"a"}\n[1,2]\n'),
        ("application/x-ndjson", b"garbage\n"),
    ],
)
def test_parse_list_rejects_invalid_answers(content_type, body):
    with pytest.raises(ValueError, match="invalid"):
        client.parse_list(content_type, body, "names", "name")


# --- policy and self-describe shapes of every era ------------------------------------------------


def test_rules_from_map_and_list():
    assert client.rules({"/v1/key/create/*": {}, "/v1/status": {}}) == ["/v1/key/create/*", "/v1/status"]
    assert client.rules(["/v1/a", "/v1/b"]) == ["/v1/a", "/v1/b"]
    assert client.rules(None) == []


def test_normalize_policy_newest_maps():
    doc = {
        "name": "my-app",
        "allow": {"/v1/key/create/my-key*": {}},
        "deny": {"/v1/key/*/secret": {}},
        "created_at": "2024-01-12T10:39:20Z",
        "created_by": IDENTITY,
    }
    assert client.normalize_policy(doc) == {
        "name": "my-app",
        "created_at": "2024-01-12T10:39:20Z",
        "created_by": IDENTITY,
        "allow": ["/v1/key/create/my-key*"],
        "deny": ["/v1/key/*/secret"],
    }


def test_normalize_policy_2022_arrays_without_deny():
    assert client.normalize_policy({"allow": ["/v1/status"]}) == {"allow": ["/v1/status"], "deny": []}


def test_normalize_policy_rejects_non_object():
    with pytest.raises(ValueError, match="invalid policy"):
        client.normalize_policy(["/v1/status"])


def test_normalize_self_flat_newest_sdk_shape():
    doc = {
        "identity": IDENTITY,
        "policy": "my-app",
        "allow": {"/v1/status": {}},
        "deny": {"/v1/key/*/x": {}},
        "created_at": "2024-01-12T10:39:20Z",
        "created_by": "admin-id",
    }
    assert client.normalize_self(doc) == {
        "identity": IDENTITY,
        "admin": False,
        "policy": "my-app",
        "allow": ["/v1/status"],
        "deny": ["/v1/key/*/x"],
        "created_at": "2024-01-12T10:39:20Z",
        "created_by": "admin-id",
    }


def test_normalize_self_admin():
    doc = {"identity": IDENTITY, "admin": True, "created_at": "2024-01-12T10:39:20Z"}
    flat = client.normalize_self(doc)
    assert flat["admin"] is True
    assert flat["policy"] == ""
    assert flat["allow"] == []
    assert flat["deny"] == []


def test_normalize_self_2022_nested_policy_with_policy_name():
    doc = {
        "identity": IDENTITY,
        "admin": False,
        "policy_name": "my-app",
        "created_at": "2022-05-01T00:00:00Z",
        "created_by": "admin-id",
        "policy": {"allow": ["/v1/key/create/*"], "deny": ["/v1/key/delete/*"]},
    }
    flat = client.normalize_self(doc)
    assert flat["policy"] == "my-app"
    assert flat["allow"] == ["/v1/key/create/*"]
    assert flat["deny"] == ["/v1/key/delete/*"]


def test_normalize_self_nested_policy_object_with_name():
    doc = {"identity": IDENTITY, "policy": {"name": "p", "allow": {"/v1/status": {}}}}
    flat = client.normalize_self(doc)
    assert (flat["policy"], flat["allow"], flat["deny"]) == ("p", ["/v1/status"], [])


# --- log streams (vectors/streams.json) ----------------------------------------------------------


@pytest.mark.parametrize(
    "vector", [v for v in STREAMS if v["stream"] == "/v1/log/audit"], ids=lambda v: v["id"]
)
def test_audit_stream_vectors(vector):
    event = client.parse_audit_event(vector["line"])
    assert event.time == vector["expected_timestamp"]
    assert event.path.startswith("/v1/")
    assert len(event.identity) == 64
    assert event.status == 200
    assert event.duration_ns > 0


@pytest.mark.parametrize(
    "vector", [v for v in STREAMS if v["stream"] == "/v1/log/error"], ids=lambda v: v["id"]
)
def test_error_stream_vectors(vector):
    assert client.parse_error_event(vector["line"]) == vector["expected_message"]


def test_audit_event_fields():
    line = (
        b'{"time":"2024-01-12T10:39:20.5Z","request":{"ip":"10.1.2.3","path":"/v1/key/create/k",'
        b'"identity":"abc"},"response":{"code":403,"time":1500000}}'
    )
    assert client.parse_audit_event(line) == client.AuditEvent(
        time="2024-01-12T10:39:20.5Z",
        path="/v1/key/create/k",
        identity="abc",
        ip="10.1.2.3",
        status=403,
        duration_ns=1_500_000,
    )


def test_audit_event_of_unauthenticated_request_has_no_identity_or_ip():
    event = client.parse_audit_event(
        '{"time":"2024-01-12T10:39:20Z","request":{"path":"/v1/x"},"response":{}}'
    )
    assert (event.identity, event.ip, event.status, event.duration_ns) == ("", "", 0, 0)


@pytest.mark.parametrize("line", [b"not json", b"[1]", b'"x"'])
def test_invalid_stream_lines_raise(line):
    with pytest.raises(ValueError, match="invalid"):
        client.parse_audit_event(line)
    with pytest.raises(ValueError, match="invalid"):
        client.parse_error_event(line)


# --- metrics (vectors/metrics.json) --------------------------------------------------------------

# Which Metrics attribute each single-sample family fills.
_ATTRIBUTE = {
    "kes_http_request_active": "request_active",
    "kes_log_error_events": "error_events",
    "kes_log_audit_events": "audit_events",
    "kes_system_up_time": "uptime",
    "kes_system_num_cpu": "cpus",
    "kes_system_num_cpu_used": "usable_cpus",
    "kes_system_num_threads": "threads",
    "kes_system_mem_heap_used": "heap_alloc",
    "kes_system_mem_heap_objects": "heap_objects",
    "kes_system_mem_stack_used": "stack_alloc",
}
_REQUEST_ATTRIBUTE = {
    "kes_http_request_success": "request_ok",
    "kes_http_request_error": "request_err",
    "kes_http_request_failure": "request_fail",
}


def _exposition(family: dict, value: float) -> str:
    """Prometheus text for one family of the vectors, as a KES server writes it."""
    name = family["name"]
    head = f"# HELP {name} {family['help']}\n# TYPE {name} {family['type']}\n"
    if family["type"] == "histogram":
        lines = [f'{name}_bucket{{le="{b}"}} {int(value) + i}' for i, b in enumerate(family["buckets"])]
        lines.append(f'{name}_bucket{{le="+Inf"}} {int(value) + len(family["buckets"])}')
        lines += [f"{name}_sum 1.5", f"{name}_count {int(value) + len(family['buckets'])}"]
        return head + "\n".join(lines) + "\n"
    if family["labels"] == ["code"]:
        return head + f'{name}{{code="200"}} {value}\n{name}{{code="201"}} 1\n'
    return head + f"{name} {value}\n"


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f["name"])
def test_metric_families_of_the_vectors_are_read(family):
    metrics = client.parse_metrics(_exposition(family, 7))
    name = family["name"]
    if name in _REQUEST_ATTRIBUTE:
        assert getattr(metrics, _REQUEST_ATTRIBUTE[name]) == 8  # summed over the code label
        assert metrics.requests == 8
    elif family["type"] == "histogram":
        assert sorted(metrics.latency) == family["buckets"]
        assert metrics.latency[family["buckets"][0]] == 7
        assert metrics.latency_count == 7 + len(family["buckets"])
        assert metrics.latency_sum == 1.5
    else:
        assert getattr(metrics, _ATTRIBUTE[name]) == 7


def test_every_vector_family_is_known():
    known = set(_ATTRIBUTE) | set(_REQUEST_ATTRIBUTE) | {"kes_http_response_time"}
    assert {f["name"] for f in FAMILIES} == known


def test_parse_metrics_sums_labels_and_accepts_total_suffix():
    text = (
        'kes_http_request_success_total{code="200"} 3\n'
        'kes_http_request_error{code="403"} 2\n'
        'kes_http_request_error{code="404"} 1\n'
        'kes_http_request_failure{code="502"} 1 1700000000000\n'
    )
    metrics = client.parse_metrics(text)
    assert (metrics.request_ok, metrics.request_err, metrics.request_fail) == (3, 3, 1)
    assert metrics.requests == 7


def test_parse_metrics_uptime_keeps_fraction_and_ignores_junk():
    text = "kes_system_up_time 12.34\ngarbage line\nkes_system_num_cpu NaN\nother_family 5\n# comment\n"
    metrics = client.parse_metrics(text)
    assert metrics.uptime == 12.34
    assert metrics.cpus == 0


def test_parse_metrics_empty_is_all_zero():
    assert client.parse_metrics("") == client.Metrics()


def test_average_latency_exact_from_sum_and_count():
    metrics = client.Metrics(latency={0.01: 4}, latency_sum=0.02, latency_count=4)
    assert metrics.average_latency() == pytest.approx(0.005)


def test_average_latency_estimated_from_buckets_without_sum():
    # 10 requests <= 10ms, 10 more <= 50ms: (10*0.01 + 10*0.05) / 20 = 0.03
    metrics = client.Metrics(latency={0.01: 10, 0.05: 20, 0.1: 20})
    assert metrics.average_latency() == pytest.approx(0.03)


def test_average_latency_unknown_without_requests():
    assert client.Metrics().average_latency() is None
    assert client.Metrics(latency={0.01: 0}, latency_sum=0.0, latency_count=0).average_latency() is None

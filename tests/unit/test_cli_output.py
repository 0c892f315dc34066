"""What ``kes`` prints (walkthrough layouts byte for byte, JSON, key info, lists); client wire helpers."""

from __future__ import annotations

import base64
import json

import pytest

from kesd import client
from kesd.cli import output

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


# --- what the client puts on the wire and how it reads answers (pure helpers of kesd.client) -----


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

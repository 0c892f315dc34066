"""Config parsing and validation (kesd.config) against config_files.json and the rules of §7, §4, §3."""

from __future__ import annotations

from typing import Any

import pytest

from kesd.config import (
    API_PATHS,
    CacheConfig,
    Config,
    check_address,
    check_pattern,
    load_config,
    parse_config,
    parse_duration,
    parse_log_level,
)
from kesd.errors import ConfigError
from tests.vectors import load

CONFIG_VECTORS = load("config_files.json")["vectors"]
ROUTES = load("api_routes.json")

ADMIN = "c84cc9b91ae2399b043da7eca616048d4b4200edf2ff418d8af3835911db945d"
APP = "3ecfcdf38fcbe141ae26a1030f81e96b753365a46760ae6b578698a97c59fd22"
PROXY = "dd46485bedc9ad2909d2e8f9017216eec4413bc5c64b236d992f7ec19c843c5f"

TLS = "  key: ./server.key\n  cert: ./server.cert\n"
FS = "  fs:\n    path: ./keys\n"


def doc(extra: str = "", *, tls: str = TLS, keystore: str = FS, admin: str = ADMIN) -> str:
    """A minimal valid config with ``extra`` top-level YAML appended and sections replaceable."""
    return f"admin:\n  identity: {admin}\ntls:\n{tls}keystore:\n{keystore}{extra}"


def fails(text: str, env: dict[str, str] | None = None) -> ConfigError:
    """Parse ``text`` expecting a ConfigError, and return it."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, file="t.yml", env=env)
    return info.value


# --- the shared vectors ------------------------------------------------------------------------


def _keystore_shape(cfg: Config) -> dict[str, Any]:
    """Our KeystoreConfig in the vectors' normalised shape."""
    ks = cfg.keystore
    if ks.type == "aws-secretsmanager":
        creds = ks.settings.get("credentials", {})
        return {
            "type": ks.type,
            "endpoint": ks.settings.get("endpoint", ""),
            "region": ks.settings.get("region", ""),
            "kmskey": ks.settings.get("kmskey", ""),
            "accesskey": creds.get("accesskey", ""),
            "secretkey": creds.get("secretkey", ""),
            "token": creds.get("token", ""),
        }
    return {"type": ks.type, **_plain(ks.settings)}


def _plain(value: Any) -> Any:
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    return value


def normalise(cfg: Config) -> dict[str, Any]:
    """Our Config in the shape of a vector's ``expected`` (cache before defaults, client_auth as KES)."""
    return {
        "address": cfg.address,
        "admin": cfg.admin,
        "tls": {
            "key": cfg.tls.key,
            "cert": cfg.tls.cert,
            "password": cfg.tls.password,
            "ca": cfg.tls.ca,
            "client_auth": cfg.client_auth,
            "proxy_identities": list(cfg.tls.proxy_identities),
            "proxy_cert_header": cfg.tls.proxy_cert_header,
        },
        "cache": {"any_s": cfg.cache.any, "unused_s": cfg.cache.unused, "offline_s": cfg.cache.offline},
        "log": {"error_level": cfg.log.error_level, "audit_level": cfg.log.audit_level},
        "api": {p: {"skip_auth": r.skip_auth, "timeout_s": r.timeout} for p, r in cfg.api.items()},
        "policies": {
            n: {"allow": list(p.allow), "deny": list(p.deny), "identities": list(p.identities)}
            for n, p in cfg.policies.items()
        },
        "keys": list(cfg.keys),
        "keystore": _keystore_shape(cfg),
    }


@pytest.mark.parametrize("vector", CONFIG_VECTORS, ids=[v["id"] for v in CONFIG_VECTORS])
def test_config_vector(vector: dict[str, Any]) -> None:
    text, name, env = vector["yaml"], vector["file_name"], vector["env"]
    if vector["id"] == "syn-conf-unknown-field":
        # Deliberate deviation: KES ignores unknown keys, but the product issue requires a config with
        # an unknown field to be refused with a message naming the field.
        with pytest.raises(ConfigError) as info:
            parse_config(text, file=name, env=env)
        assert info.value.field == "foo"
        assert "unknown field 'foo'" in str(info.value)
        return
    if vector["id"] == "syn-conf-no-keystore":
        # Deliberate deviation (the product issue): no keystore section means in-memory keys, as in
        # KES of 2022, with a warning that says the keys do not survive a restart.
        cfg = parse_config(text, file=name, env=env)
        assert cfg.keystore.type == "memory"
        assert any("lost when the server stops" in w for w in cfg.warnings)
        return
    if vector["should_fail"]:
        assert vector["fails_at"] == "config_parse"
        with pytest.raises(ConfigError) as info:
            parse_config(text, file=name, env=env)
        assert vector["error_contains"] in str(info.value)
        assert info.value.file == name
        assert info.value.field
        assert "\n" not in str(info.value)
        return
    cfg = parse_config(text, file=name, env=env)
    assert normalise(cfg) == vector["expected"]
    assert cfg.file == name
    assert cfg.warnings == ()


def test_api_paths_are_the_route_table() -> None:
    assert list(API_PATHS) == [r["path"] for r in ROUTES["newest"]]


# --- YAML 1.1 booleans: on/off stay words in string fields --------------------------------------


@pytest.mark.parametrize(
    ("written", "auth", "client_auth"),
    [
        ("on", "on", "require_and_verify_client_cert"),
        ("On", "on", "require_and_verify_client_cert"),
        ("ON", "on", "require_and_verify_client_cert"),
        ('"on"', "on", "require_and_verify_client_cert"),
        ("off", "off", "require_any_client_cert"),
        ("OFF", "off", "require_any_client_cert"),
        ('""', "off", "require_any_client_cert"),
        ("", "off", "require_any_client_cert"),
    ],
)
def test_tls_auth_words(written: str, auth: str, client_auth: str) -> None:
    cfg = parse_config(doc(tls=TLS + f"  auth: {written}\n"))
    assert cfg.tls.auth == auth
    assert cfg.tls.client_auth == client_auth
    assert cfg.client_auth == client_auth


@pytest.mark.parametrize("written", ["yes", "true", "no", "false", "maybe", "1"])
def test_tls_auth_only_on_or_off(written: str) -> None:
    err = fails(doc(tls=TLS + f"  auth: {written}\n"))
    assert err.field == "tls.auth"
    assert f"invalid auth '{written}'" in str(err)


@pytest.mark.parametrize(
    ("error", "audit", "levels"),
    [
        ("on", "off", (0, 9)),
        ("off", "on", (9, 0)),
        ("ON", "Off", (0, 9)),
        ("debug", "WARN+2", (-4, 6)),
        ("ERROR", "INFO-4", (8, -4)),
        ("12", '""', (12, 0)),
    ],
)
def test_log_levels_in_config(error: str, audit: str, levels: tuple[int, int]) -> None:
    cfg = parse_config(doc(f"log:\n  error: {error}\n  audit: {audit}\n"))
    assert (cfg.log.error_level, cfg.log.audit_level) == levels


def test_log_level_error_names_field() -> None:
    err = fails(doc("log:\n  audit: loud\n"))
    assert err.field == "log.audit"
    assert "invalid log level 'loud'" in str(err)


@pytest.mark.parametrize(
    ("written", "value"),
    [
        ("true", True),
        ("True", True),
        ("yes", True),
        ("on", True),
        ("ON", True),
        ("false", False),
        ("no", False),
        ("off", False),
        ("Off", False),
    ],
)
def test_skip_auth_booleans(written: str, value: bool) -> None:
    cfg = parse_config(doc(f"api:\n  /v1/ready:\n    skip_auth: {written}\n"))
    assert cfg.api["/v1/ready"].skip_auth is value
    assert cfg.client_auth == ("request_client_cert" if value else "require_any_client_cert")


def test_skip_auth_downgrade_with_verification() -> None:
    cfg = parse_config(doc("api:\n  /v1/metrics:\n    skip_auth: true\n", tls=TLS + "  auth: on\n"))
    assert cfg.tls.client_auth == "require_and_verify_client_cert"
    assert cfg.client_auth == "verify_client_cert_if_given"


def test_invalid_boolean() -> None:
    err = fails(doc("api:\n  /v1/ready:\n    skip_auth: sometimes\n"))
    assert err.field == "api./v1/ready.skip_auth"
    assert "invalid boolean 'sometimes'" in str(err)


@pytest.mark.parametrize(("written", "value"), [("true", True), ("on", True), ("no", False)])
def test_mlock_extension(written: str, value: bool) -> None:
    assert parse_config(doc(f"mlock: {written}\n")).mlock is value
    assert parse_config(doc()).mlock is False


def test_admin_socket_extension() -> None:
    assert parse_config(doc()).admin_socket == "/run/kesd/admin.sock"
    text = f"admin:\n  identity: {ADMIN}\n  socket: /tmp/a.sock\ntls:\n{TLS}keystore:\n{FS}"
    assert parse_config(text).admin_socket == "/tmp/a.sock"


# --- ${ENV} substitution -------------------------------------------------------------------------


def test_env_whole_value_substitution() -> None:
    env = {
        "ADDR": "127.0.0.1:7001",
        "ADM": ADMIN,
        "AUTH": "on",
        "TTL": "90s",
        "SKIP": "yes",
        "LEVEL": "warn",
        "APP_ID": APP,
        "KEYDIR": "/var/lib/kesd",
        "PW": "hunter2",
    }
    text = (
        "address: ${ADDR}\n"
        "admin:\n  identity: '${ADM}'\n"
        "tls:\n  key: ./k\n  cert: ./c\n  password: ${PW}\n  auth: ${ AUTH }\n"
        "cache:\n  expiry:\n    any: ${TTL}\n"
        "api:\n  /v1/ready:\n    skip_auth: ${SKIP}\n"
        "log:\n  error: ${LEVEL}\n"
        'policy:\n  app:\n    allow: [/v1/key/create/app-*]\n    identities: ["${APP_ID}"]\n'
        "keystore:\n  fs:\n    path: ${KEYDIR}\n"
    )
    cfg = parse_config(text, env=env)
    assert cfg.address == "127.0.0.1:7001"
    assert cfg.admin == ADMIN
    assert cfg.tls.password == "hunter2"
    assert cfg.tls.auth == "on"
    assert cfg.cache.any == 90
    assert cfg.api["/v1/ready"].skip_auth is True
    assert cfg.log.error_level == 4
    assert cfg.policies["app"].identities == (APP,)
    assert cfg.keystore.path == "/var/lib/kesd"


def test_env_no_partial_interpolation() -> None:
    cfg = parse_config(doc(tls="  key: ./k\n  cert: ./c\n  password: pre-${PW}\n"), env={"PW": "x"})
    assert cfg.tls.password == "pre-${PW}"


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        (doc(tls="  key: ${NOPE}\n  cert: ./c\n"), 4, "tls.key"),
        ("address: ${NOPE}\n" + doc(), 1, "address"),
        (doc("policy:\n  p:\n    identities:\n    - ${NOPE}\n"), 12, "policy.p.identities[0]"),
    ],
)
def test_env_missing_variable(text: str, line: int, field: str) -> None:
    err = fails(text, env={"OTHER": "1"})
    assert f"referenced env. variable 'NOPE' in line '{line}' not found" in str(err)
    assert err.field == field
    assert err.value == "${NOPE}"


def test_env_not_applied_to_version_or_patterns() -> None:
    err = fails("version: ${V}\n" + doc(), env={"V": "v1"})
    assert err.field == "version"
    assert "invalid server config version '${V}'" in str(err)
    err = fails(doc('policy:\n  p:\n    allow: ["${P}"]\n'), env={"P": "/v1/status"})
    assert err.field == "policy.p.allow[0]"


# --- durations -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("-0", 0.0),
        ("+0", 0.0),
        ("5m0s", 300.0),
        ("30s", 30.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("300ms", 0.3),
        ("-1s", -1.0),
        ("+2m", 120.0),
        (".5s", 0.5),
        ("1.s", 1.0),
        ("1us", 1e-6),
        ("1\u00b5s", 1e-6),
        ("1\u03bcs", 1e-6),
        ("10ns", 1e-8),
        ("1h1m1s1ms", 3661.001),
        ("0s", 0.0),
        ("2562047h", 2562047 * 3600.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "invalid duration"),
        ("300", "missing unit"),
        ("1", "missing unit"),
        ("1.5", "missing unit"),
        ("00", "missing unit"),
        ("s", "invalid duration"),
        (".s", "invalid duration"),
        ("-", "invalid duration"),
        ("1x", "unknown unit 'x'"),
        ("1 s", "unknown unit ' s'"),
        ("1sec", "unknown unit 'sec'"),
        ("1d", "unknown unit 'd'"),
        ("9999999999h", "out of range"),
    ],
)
def test_parse_duration_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_duration(text)


def test_bare_number_duration_in_config() -> None:
    err = fails(doc("cache:\n  expiry:\n    unused: 300\n"))
    assert err.field == "cache.expiry.unused"
    assert err.value == "300"
    assert "missing unit" in str(err)


def test_zero_duration_in_config() -> None:
    assert parse_config(doc("cache:\n  expiry:\n    offline: 0\n")).cache.offline == 0


def test_negative_api_timeout() -> None:
    err = fails(doc("api:\n  /v1/status:\n    timeout: -5s\n"))
    assert err.field == "api./v1/status.timeout"
    assert "must not be negative" in str(err)


def test_cache_effective_defaults() -> None:
    assert CacheConfig().effective() == CacheConfig(any=300, unused=30, offline=0)
    assert CacheConfig(any=60).effective() == CacheConfig(any=60, unused=30, offline=0)
    assert CacheConfig(unused=10, offline=5).effective() == CacheConfig(any=300, unused=10, offline=5)


# --- log levels ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "level"),
    [
        ("", 0),
        ("  ", 0),
        ("on", 0),
        ("ON", 0),
        ("off", 9),
        ("DEBUG", -4),
        ("info", 0),
        ("Warn", 4),
        ("ERROR", 8),
        ("WARN+2", 6),
        ("error+1", 9),
        ("INFO-4", -4),
        ("3", 3),
        ("-8", -8),
        (" warn ", 4),
    ],
)
def test_parse_log_level(text: str, level: int) -> None:
    assert parse_log_level(text) == level


@pytest.mark.parametrize("text", ["WARNING", "yes", "true", "info+", "+", "warn+x", "trace"])
def test_parse_log_level_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid log level"):
        parse_log_level(text)


# --- addresses -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("0.0.0.0:7373", None),
        ("127.0.0.1:0", None),
        (":7373", None),
        ("[::1]:7373", None),
        ("[::]:65535", None),
        ("localhost:7373", "not an IP address"),
        ("0.0.0.0", "missing port"),
        ("7373", "missing port"),
        ("0.0.0.0:65536", "invalid port"),
        ("0.0.0.0:", "invalid port"),
        ("0.0.0.0:https", "invalid port"),
        ("0.0.0.0:-1", "invalid port"),
        ("::1:7373", "in brackets"),
        ("[1.2.3.4]:7373", "invalid IPv6"),
        ("256.0.0.1:7373", "not an IP address"),
    ],
)
def test_check_address(address: str, reason: str | None) -> None:
    got = check_address(address)
    if reason is None:
        assert got is None
    else:
        assert got is not None and reason in got


def test_address_default_and_error() -> None:
    assert parse_config(doc()).address == "0.0.0.0:7373"
    err = fails("address: kes.example.com:7373\n" + doc())
    assert err.field == "address"
    assert err.value == "kes.example.com:7373"


# --- one-line errors naming file, field and value --------------------------------------------------


def test_error_is_one_line_with_file_field_value() -> None:
    text = doc(tls=TLS + "  auth: |\n    may\n    be\n")
    with pytest.raises(ConfigError) as info:
        parse_config(text, file="/etc/kesd/config.yml")
    err = info.value
    assert err.file == "/etc/kesd/config.yml"
    assert err.field == "tls.auth"
    assert err.value == "may\nbe\n"
    assert str(err) == "/etc/kesd/config.yml: tls.auth: invalid auth 'may\\nbe\\n': use on or off"
    assert "\n" not in str(err)


def test_yaml_syntax_error_is_one_line() -> None:
    err = fails("admin:\n  identity: [unclosed\n")
    assert str(err).startswith("t.yml: invalid YAML:")
    assert "line" in str(err)
    assert "\n" not in str(err)


@pytest.mark.parametrize(
    ("text", "field", "reason"),
    [
        ("- a\n- b\n", "", "expected a section"),
        (doc("tls: on\n"), "tls", "field defined twice"),
        (doc(tls="  key: [a, b]\n  cert: ./c\n"), "tls.key", "expected a single value"),
        (doc("policy:\n  p:\n    allow: /v1/status\n"), "policy.p.allow", "expected a list"),
        (doc("keys:\n  fs:\n    path: x\n"), "keys", "expected a list"),
    ],
)
def test_shape_errors(text: str, field: str, reason: str) -> None:
    err = fails(text)
    assert err.field == field
    assert reason in str(err)


def test_empty_file_needs_admin() -> None:
    assert "no admin identity" in str(fails(""))


# --- unknown and obsolete fields -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "field", "hint"),
    [
        (doc(tls=TLS + "  autth: on\n"), "tls.autth", "did you mean 'auth'?"),
        (doc("Policy:\n  p: {}\n"), "Policy", "did you mean 'policy'?"),
        (doc("cache:\n  expiry:\n    unsued: 1m\n"), "cache.expiry.unsued", "did you mean 'unused'?"),
        (doc(keystore="  fs:\n    pth: ./keys\n"), "keystore.fs.pth", "did you mean 'path'?"),
        (doc(keystore="  s3:\n    bucket: x\n"), "keystore.s3", "known fields: fs, vault"),
        (doc("policy:\n  p:\n    allw: [/v1/status]\n"), "policy.p.allw", "did you mean 'allow'?"),
        (doc("foo: bar\n"), "foo", "known fields"),
    ],
)
def test_unknown_field(text: str, field: str, hint: str) -> None:
    err = fails(text)
    assert err.field == field
    assert f"unknown field '{field.rsplit('.', 1)[-1]}'" in str(err)
    assert hint in str(err)


def test_unknown_field_hint_skips_obsolete_names() -> None:
    assert "root" not in str(fails(doc("foo: bar\n")))


@pytest.mark.parametrize(
    ("keystore", "ignored", "kind"),
    [
        (
            "  gemalto:\n    keysecure:\n      endpoint: https://hsm\n"
            "      credentials:\n        token: t\n        retry: 15s\n",
            "keystore.gemalto.keysecure.credentials.retry",
            "gemalto-keysecure",
        ),
        (
            "  vault:\n    endpoint: https://v\n"
            "    approle:\n      id: a\n      secret: b\n      retry: 15s\n",
            "keystore.vault.approle.retry",
            "vault",
        ),
        (
            "  vault:\n    endpoint: https://v\n"
            "    kubernetes:\n      role: r\n      jwt: j\n      retry: 15s\n",
            "keystore.vault.kubernetes.retry",
            "vault",
        ),
        (FS + "  kes:\n    endpoint: [https://a]\n    enclave: e\n", "keystore.kes", "fs"),
        (FS + "  generic:\n    endpoint: https://plugin\n", "keystore.generic", "fs"),
    ],
)
def test_obsolete_fields_become_warnings(keystore: str, ignored: str, kind: str) -> None:
    cfg = parse_config(doc(keystore=keystore), file="t.yml")
    assert cfg.keystore.type == kind
    assert len(cfg.warnings) == 1
    assert cfg.warnings[0].startswith(f"t.yml: field {ignored} is ignored (")
    assert "\n" not in cfg.warnings[0]


def test_root_with_admin_is_a_warning() -> None:
    cfg = parse_config(doc("root: disabled\n"))
    assert cfg.admin == ADMIN
    assert "field root is ignored" in cfg.warnings[0]


def test_only_an_unsupported_keystore() -> None:
    err = fails(doc(keystore="  kes:\n    endpoint: [https://a]\n"))
    assert "no keystore specified" in str(err)


# --- api section ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/version", "/v1/ready", "/v1/status", "/v1/metrics", "/v1/api"])
def test_skip_auth_allowed_on_public_routes(path: str) -> None:
    cfg = parse_config(doc(f"api:\n  {path}:\n    skip_auth: true\n    timeout: 3s\n"))
    assert cfg.api[path].skip_auth is True
    assert cfg.api[path].timeout == 3


@pytest.mark.parametrize(
    "path", ["/v1/key/decrypt/", "/v1/key/create/", "/v1/policy/read/", "/v1/log/audit", "/v1/identity/list/"]
)
def test_skip_auth_refused_elsewhere(path: str) -> None:
    err = fails(doc(f"api:\n  {path}:\n    skip_auth: true\n"))
    assert err.field == f"api.{path}.skip_auth"
    assert "disabling authorization" in str(err)
    assert "/v1/ready" in str(err)


def test_skip_auth_false_and_timeouts_on_any_route() -> None:
    cfg = parse_config(doc("api:\n  /v1/key/decrypt/:\n    skip_auth: false\n    timeout: 1m\n"))
    assert cfg.api["/v1/key/decrypt/"].timeout == 60
    assert cfg.client_auth == "require_any_client_cert"


@pytest.mark.parametrize(
    ("path", "hint"),
    [("/v1/key/create", "did you mean '/v1/key/create/'?"), ("/v2/whatever/x", "e.g. /v1/status")],
)
def test_unknown_api_route(path: str, hint: str) -> None:
    err = fails(doc(f"api:\n  {path}:\n    timeout: 1s\n"))
    assert err.field == f"api.{path}"
    assert "unknown API route" in str(err)
    assert hint in str(err)


def test_legacy_api_route_is_a_warning() -> None:
    cfg = parse_config(doc("api:\n  /v1/key/bulk/decrypt/:\n    timeout: 1s\n"))
    assert dict(cfg.api) == {}
    assert "api./v1/key/bulk/decrypt/ is ignored" in cfg.warnings[0]


def test_empty_route_entry() -> None:
    cfg = parse_config(doc("api:\n  /v1/status:\n"))
    assert cfg.api["/v1/status"].skip_auth is False
    assert cfg.api["/v1/status"].timeout == 0


# --- policies and identities -------------------------------------------------------------------------


def test_policies_and_identity_map() -> None:
    tls = TLS + f"  proxy:\n    identities: [{PROXY}]\n    header:\n      cert: X-Tls-Client-Cert\n"
    policies = (
        "policy:\n"
        "  app:\n    allow: [/v1/key/generate/app-*]\n    deny: [/v1/key/generate/app-secret]\n"
        f"    identities: [{APP}]\n"
        "  empty:\n"
    )
    cfg = parse_config(doc(policies, tls=tls))
    assert cfg.policies["app"].allow == ("/v1/key/generate/app-*",)
    assert cfg.policies["app"].deny == ("/v1/key/generate/app-secret",)
    assert cfg.policies["empty"].identities == ()
    assert dict(cfg.identities) == {APP: "app"}
    assert cfg.tls.proxy_identities == (PROXY,)
    assert cfg.tls.proxy_cert_header == "X-Tls-Client-Cert"


@pytest.mark.parametrize(
    ("extra", "field", "reason"),
    [
        (
            f"policy:\n  a:\n    identities: [{APP}]\n  b:\n    identities: [{APP}]\n",
            "policy.b.identities[0]",
            "cannot assign policy 'b' to '" + APP + "': identity already has a policy ('a')",
        ),
        (
            f"policy:\n  a:\n    identities: [{APP}, {APP}]\n",
            "policy.a.identities[1]",
            "identity already has a policy",
        ),
        ("policy:\n  my.app:\n    allow: [/v1/status]\n", "policy.my.app", "invalid policy name 'my.app'"),
        ("policy:\n  a:\n    identities: [not an identity]\n", "policy.a.identities[0]", "invalid identity"),
        ("policy:\n  a:\n    identities: ['']\n", "policy.a.identities[0]", "invalid identity"),
        (
            "policy:\n  my-app:\n    allow:\n    - /v1/status\n    - /v1/ready\n    - /v1/key/create/[a-]\n",
            "policy.my-app.allow[2]",
            "malformed glob",
        ),
        ("policy:\n  a:\n    deny: [v1/key/*]\n", "policy.a.deny[0]", "must start with '/'"),
        ("policy:\n  a:\n    allow:\n    -\n", "policy.a.allow[0]", "empty pattern"),
    ],
)
def test_policy_errors(extra: str, field: str, reason: str) -> None:
    err = fails(doc(extra))
    assert err.field == field
    assert reason in str(err)


def test_proxy_identity_in_policy() -> None:
    tls = TLS + f"  proxy:\n    identities: [{PROXY}]\n"
    err = fails(doc(f"policy:\n  a:\n    identities: [{PROXY}]\n", tls=tls))
    assert err.field == "policy.a.identities[0]"
    assert "is already a TLS proxy" in str(err)


def test_admin_can_be_disabled() -> None:
    cfg = parse_config(doc(admin="disabled"))
    assert cfg.admin == "disabled"


@pytest.mark.parametrize("admin", ['""', "", "~"])
def test_admin_required(admin: str) -> None:
    err = fails(doc(admin=admin))
    assert err.field == "admin.identity"
    assert "no admin identity" in str(err)


def test_upper_case_identity_warns() -> None:
    cfg = parse_config(doc(admin=ADMIN.upper()))
    assert "upper-case" in cfg.warnings[0]
    assert "admin.identity" in cfg.warnings[0]


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("/v1/key/create/*", None),
        ("/v1/key/*/my-key", None),
        ("/v1/key/create/[abc]*", None),
        ("/v1/key/create/[^a-z]", None),
        ("/v1/key/create/[[]", None),
        ("/v1/key/create/a\\*", None),
        ("/v1/key/create/[\\]]", None),
        ("/v1/key/create/?", None),
        ("/", None),
        ("", "empty pattern"),
        ("v1/key/create/*", "must start with '/'"),
        ("*", "must start with '/'"),
        ("/v1/key/create/[abc", "malformed glob"),
        ("/v1/key/create/[", "malformed glob"),
        ("/v1/key/create/[]", "malformed glob"),
        ("/v1/key/create/[]a]", "malformed glob"),
        ("/v1/key/create/[^]", "malformed glob"),
        ("/v1/key/create/[a-]", "malformed glob"),
        ("/v1/key/create/[-a]", "malformed glob"),
        ("/v1/key/create/[a-b", "malformed glob"),
        ("/v1/key/create/[\\", "malformed glob"),
        ("/v1/key/create/x\\", "trailing"),
    ],
)
def test_check_pattern(pattern: str, reason: str | None) -> None:
    got = check_pattern(pattern)
    if reason is None:
        assert got is None
    else:
        assert got is not None and reason in got


# --- keys ----------------------------------------------------------------------------------------------


def test_keys_list() -> None:
    cfg = parse_config(doc("keys:\n  - name: k1\n  - name: k-2\n"))
    assert cfg.keys == ("k1", "k-2")


@pytest.mark.parametrize(
    ("extra", "field", "reason"),
    [
        ("keys:\n  - name: k1\n  - name: k1\n", "keys[1].name", "key 'k1' is defined multiple times"),
        ("keys:\n  - name: a/b\n", "keys[0].name", "invalid key name 'a/b'"),
        ("keys:\n  - name:\n", "keys[0].name", "no key name"),
        ("keys:\n  - nam: k\n", "keys[0].nam", "did you mean 'name'?"),
        ("keys:\n  - k1\n", "keys[0]", "expected a section"),
    ],
)
def test_key_errors(extra: str, field: str, reason: str) -> None:
    err = fails(doc(extra))
    assert err.field == field
    assert reason in str(err)


# --- keystores --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keystore", "kind"),
    [
        (
            "  fortanix:\n    sdkms:\n      endpoint: https://f\n      credentials:\n        key: k\n",
            "fortanix-sdkms",
        ),
        ("  gcp:\n    secretmanager:\n      project_id: p\n      scopes: [a, b]\n", "gcp-secretmanager"),
        (
            "  azure:\n    keyvault:\n      endpoint: https://a\n"
            "      managed_identity:\n        client_id: c\n",
            "azure-keyvault",
        ),
        (
            "  entrust:\n    keycontrol:\n      endpoint: https://e\n      vault_id: v\n      box_id: b\n"
            "      credentials:\n        username: u\n        password: p\n",
            "entrust-keycontrol",
        ),
        (
            "  vault:\n    endpoint: https://v\n    transit:\n      key: t\n    approle:\n      id: a\n"
            "      secret: s\n    status:\n      ping: 10s\n",
            "vault",
        ),
    ],
)
def test_other_keystores(keystore: str, kind: str) -> None:
    cfg = parse_config(doc(keystore=keystore))
    assert cfg.keystore.type == kind
    assert cfg.keystore.path == ""


@pytest.mark.parametrize(
    ("keystore", "field", "reason"),
    [
        ("  fs:\n", "keystore.fs.path", "no path specified"),
        ("  vault:\n    approle:\n      id: a\n      secret: b\n", "keystore.vault.endpoint", "no endpoint"),
        ("  vault:\n    endpoint: https://v\n", "keystore.vault", "exactly one of approle or kubernetes"),
        (
            "  vault:\n    endpoint: https://v\n    approle:\n      id: a\n      secret: b\n"
            "    kubernetes:\n      jwt: j\n",
            "keystore.vault",
            "exactly one of approle or kubernetes",
        ),
        (
            "  vault:\n    endpoint: https://v\n    approle:\n      id: a\n",
            "keystore.vault.approle.secret",
            "no secret",
        ),
        (
            "  vault:\n    endpoint: https://v\n    version: v3\n    kubernetes:\n      jwt: j\n",
            "keystore.vault.version",
            "invalid K/V engine version 'v3'",
        ),
        (
            "  vault:\n    endpoint: https://v\n    kubernetes:\n      jwt: j\n    tls:\n      key: ./k\n",
            "keystore.vault.tls",
            "together",
        ),
        (
            "  vault:\n    endpoint: https://v\n    kubernetes:\n      jwt: j\n"
            "    transit:\n      engine: t\n",
            "keystore.vault.transit.key",
            "no key specified",
        ),
        (
            "  vault:\n    endpoint: https://v\n    kubernetes:\n      jwt: j\n    status:\n      ping: 10\n",
            "keystore.vault.status.ping",
            "missing unit",
        ),
        (
            "  aws:\n    secretsmanager:\n      endpoint: e\n",
            "keystore.aws.secretsmanager.region",
            "no region",
        ),
        ("  aws:\n", "keystore.aws", "expected keystore.aws.secretsmanager"),
        (
            "  fortanix:\n    sdkms:\n      endpoint: https://f\n",
            "keystore.fortanix.sdkms.credentials.key",
            "no key specified",
        ),
        (
            "  gemalto:\n    keysecure:\n      endpoint: https://g\n",
            "keystore.gemalto.keysecure.credentials.token",
            "no token specified",
        ),
        (
            "  gcp:\n    secretmanager:\n      endpoint: e\n",
            "keystore.gcp.secretmanager.project_id",
            "no project_id",
        ),
        (
            "  azure:\n    keyvault:\n      endpoint: https://a\n      credentials:\n        tenant_id: t\n"
            "        client_id: c\n",
            "keystore.azure.keyvault.credentials.client_secret",
            "no client_secret",
        ),
        (
            "  azure:\n    keyvault:\n      endpoint: https://a\n",
            "keystore.azure.keyvault",
            "exactly one of credentials or managed_identity",
        ),
        (
            "  entrust:\n    keycontrol:\n      endpoint: https://e\n      vault_id: v\n      box_id: b\n",
            "keystore.entrust.keycontrol.credentials.username",
            "no username",
        ),
        (
            "  fs:\n    path: ./a\n  aws:\n    secretsmanager: {}\n",
            "keystore",
            "more than once keystore specified",
        ),
        ("", "keystore", "no keystore specified"),
    ],
)
def test_keystore_errors(keystore: str, field: str, reason: str) -> None:
    err = fails(doc(keystore=keystore))
    assert err.field == field
    assert reason in str(err)


def test_keystore_settings_are_read_only() -> None:
    cfg = parse_config(doc())
    assert cfg.keystore.type == "fs"
    assert cfg.keystore.path == "./keys"
    with pytest.raises(TypeError):
        cfg.keystore.settings["path"] = "/elsewhere"  # type: ignore[index]


# --- secrets stay out of reprs and messages -----------------------------------------------------------


def test_secrets_not_in_repr() -> None:
    keystore = (
        "  aws:\n    secretsmanager:\n      endpoint: e\n      region: r\n"
        "      credentials:\n        accesskey: AKIAEXAMPLE\n        secretkey: s3cr3t-aws\n"
    )
    cfg = parse_config(doc(tls=TLS + "  password: pw-s3cr3t\n", keystore=keystore))
    assert cfg.tls.password == "pw-s3cr3t"
    assert cfg.keystore.settings["credentials"]["secretkey"] == "s3cr3t-aws"
    text = repr(cfg)
    assert "pw-s3cr3t" not in text
    assert "s3cr3t-aws" not in text
    assert "'endpoint': 'e'" in text


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (doc(tls=TLS + "  password: [pw-s3cr3t]\n"), "tls.password"),
        (
            doc(keystore="  vault:\n    endpoint: https://v\n    approle: pw-s3cr3t\n"),
            "keystore.vault.approle",
        ),
    ],
)
def test_secret_not_in_error(text: str, field: str) -> None:
    err = fails(text)
    assert err.field == field
    assert "pw-s3cr3t" not in str(err)
    assert err.value is None


# --- the 2023 walkthrough config, overrides, files -------------------------------------------------


WALKTHROUGH_2023 = """\
address: 0.0.0.0:7373 # Listen on all network interfaces on port 7373

admin:
  identity: disabled  # We disable the admin identity since we don't need it in this guide

tls:
  key: private.key    # The KES server TLS private key
  cert: public.crt    # The KES server TLS certificate

policy:
  my-app:
    allow:
    - /v1/key/create/my-key*
    - /v1/key/generate/my-key*
    - /v1/key/decrypt/my-key*
    identities:
    - 02ef5321ca409dbc7b10e7e8ee44d1c3b91e4bf6e2198befdebee6312745267b # Use the identity of your client.crt

keystore:
  fs:
    path: ./keys # Choose a directory for the secret keys
"""


def test_2023_walkthrough_config() -> None:
    cfg = parse_config(WALKTHROUGH_2023).with_overrides(auth="off")
    assert cfg.admin == "disabled"
    assert cfg.tls.key == "private.key"
    assert cfg.tls.auth == "off"
    assert cfg.policies["my-app"].allow[2] == "/v1/key/decrypt/my-key*"
    assert cfg.keystore.path == "./keys"
    assert cfg.cache.effective() == CacheConfig(any=300, unused=30, offline=0)
    assert cfg.warnings == ()


def test_with_overrides() -> None:
    cfg = parse_config(doc())
    assert cfg.with_overrides() == cfg
    moved = cfg.with_overrides(address="127.0.0.1:0", auth="ON")
    assert moved.address == "127.0.0.1:0"
    assert moved.tls.auth == "on"
    assert moved.tls.key == cfg.tls.key
    with pytest.raises(ConfigError, match="--addr: invalid address 'nowhere'"):
        cfg.with_overrides(address="nowhere")
    with pytest.raises(ConfigError, match="--auth: invalid auth 'maybe'"):
        cfg.with_overrides(auth="maybe")


def test_yaml_anchors_and_merge_keys() -> None:
    extra = (
        "policy:\n  base: &base\n    allow: [/v1/status]\n  other:\n    <<: *base\n    deny: [/v1/metrics]\n"
    )
    cfg = parse_config(doc(extra))
    assert cfg.policies["other"].allow == ("/v1/status",)
    assert cfg.policies["other"].deny == ("/v1/metrics",)


def test_load_config(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.yml"
    path.write_text(doc(tls="  key: ${KESD_TEST_KEY}\n  cert: ./c\n"))
    monkeypatch.setenv("KESD_TEST_KEY", "relative/server.key")
    cfg = load_config(path)
    assert cfg.file == str(path)
    assert cfg.tls.key == "relative/server.key"
    assert cfg.keystore.path == "./keys"


def test_load_config_missing_file(tmp_path: Any) -> None:
    missing = tmp_path / "nope.yml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert info.value.file == str(missing)
    assert str(missing) in str(info.value)
    assert "does not exist" in str(info.value)


def test_empty_keystore_section_is_still_an_error() -> None:
    text = "admin:\n  identity: disabled\ntls:\n  key: k\n  cert: c\nkeystore: {}\n"
    with pytest.raises(ConfigError, match="no keystore specified"):
        parse_config(text)

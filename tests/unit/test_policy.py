"""Policy patterns and authorization (kesd.policy): policy.json, policy_subset.json, Go path.Match."""

from __future__ import annotations

import random

import pytest

from kesd import errors
from kesd.policy import Authorizer, Matcher, is_glob, is_subset, match_newest, path_match
from tests import vectors

POLICY = vectors.load("policy.json")
SUBSET = vectors.load("policy_subset.json")
VERIFY = [v for v in POLICY["verify_and_era"] if "requests" in v]
ERA = [v for v in POLICY["verify_and_era"] if "path" in v]
SCENARIO = POLICY["authorization_scenario"]


# --- vectors: policy.json ------------------------------------------------------------------------


@pytest.mark.parametrize("vector", VERIFY, ids=[v["id"] for v in VERIFY])
def test_verify_vectors(vector):
    matcher = Matcher(vector["allow"], vector["deny"])
    for path, allowed in vector["requests"].items():
        assert matcher.allows(path) is allowed, path


def _expected_allow(vector: dict) -> bool:
    """kesd's allow rule: a glob-only pattern follows the 2023 era, every other one the newest."""
    pattern = vector["allow"][0]
    return vector["allowed_path_match_era"] if is_glob(pattern) else vector["allowed_newest"]


@pytest.mark.parametrize("vector", ERA, ids=[v["id"] for v in ERA])
def test_era_vectors_as_allow(vector):
    assert len(vector["allow"]) == 1
    assert Matcher(vector["allow"], vector["deny"]).allows(vector["path"]) is _expected_allow(vector)
    assert match_newest(vector["allow"][0], vector["path"]) is vector["allowed_newest"]
    assert path_match(vector["allow"][0], vector["path"]) is vector["allowed_path_match_era"]


@pytest.mark.parametrize("vector", ERA, ids=[v["id"] for v in ERA])
def test_era_vectors_as_deny(vector):
    # The product rule: a deny pattern rejects a path if either era's rule matches it.
    matcher = Matcher(["/*"], vector["allow"])
    either = vector["allowed_path_match_era"] or vector["allowed_newest"]
    assert matcher.allows(vector["path"]) is not either


def test_glob_allow_follows_2023_not_newest():
    # Deliberate deviation from the newest KES (vector derived-policy-era-3 says allowed_newest=false):
    # an allow pattern with '?' can only have been written as a glob, so it is matched with path.Match.
    matcher = Matcher(["/v1/key/generate/my-?ey"], [])
    assert matcher.allows("/v1/key/generate/my-key")
    assert not matcher.allows("/v1/key/generate/my-/ey")
    assert not matcher.allows("/v1/key/generate/my-?ey-1")


def test_trailing_star_allow_follows_newest():
    # derived-policy-era-0: newest prefix semantics for a single trailing '*' (crosses '/').
    assert Matcher(["/v1/key/*"], []).allows("/v1/key/create/my-key")


def _route_auth() -> list[tuple[str, str]]:
    """(route path, auth kind) of the newest route table (api_routes.json)."""
    return [(r["path"], r["auth"].split()[0]) for r in vectors.load("api_routes.json")["newest"]]


def _decide(authorizer: Authorizer, identity: str | None, path: str) -> str:
    """Reference §4 steps 1-6 around the Authorizer: route auth kind, certificate, then policy."""
    auth = next(
        kind
        for route, kind in _route_auth()
        if path == route or (route.endswith("/") and path.startswith(route))
    )
    if auth == "none":
        return "allowed"
    if identity is None:
        return f"400 {errors.CertificateRequired.message}"
    if auth == "certificate":
        return "allowed"
    try:
        authorizer.authorize(identity, path)
    except errors.NotAllowed as err:
        return str(err.status)
    return "allowed"


def _scenario_authorizer() -> Authorizer:
    policies = [(name, p["allow"], p["deny"], p["identities"]) for name, p in SCENARIO["policies"].items()]
    return Authorizer(SCENARIO["admin"], policies)


@pytest.mark.parametrize(
    "request_",
    SCENARIO["requests"],
    ids=[f"{SCENARIO['id']}-{i}-{r['path']}" for i, r in enumerate(SCENARIO["requests"])],
)
def test_authorization_scenario(request_):
    expected = request_["expected"]
    if expected.startswith("allowed"):
        expected = "allowed"
    assert _decide(_scenario_authorizer(), request_["identity"], request_["path"]) == expected


def test_scenario_policy_lookup():
    authorizer = _scenario_authorizer()
    client = SCENARIO["policies"]["my-app"]["identities"][0]
    assert authorizer.policy_of(client) == "my-app"
    assert authorizer.policy_of(SCENARIO["admin"]) is None
    assert authorizer.is_admin(SCENARIO["admin"])
    assert authorizer.policies() == ("my-app",)
    assert authorizer.matcher("my-app").allow == tuple(SCENARIO["policies"]["my-app"]["allow"])


# --- vectors: policy_subset.json -----------------------------------------------------------------


@pytest.mark.parametrize("vector", SUBSET["vectors"], ids=[v["id"] for v in SUBSET["vectors"]])
def test_subset_vectors(vector):
    a, b = vector["A"], vector["B"]
    assert is_subset(a["allow"], a["deny"], b["allow"], b["deny"]) is vector["is_subset"]
    if vector["is_subset"]:
        equal = is_subset(b["allow"], b["deny"], a["allow"], a["deny"])
        assert equal is vector["is_equal"]


# --- the product rule for deny patterns ----------------------------------------------------------


def test_2023_deny_rule_keeps_protecting():
    # The 2023 docs recommend deny rules like this one; the newest KES reads it as a literal string.
    matcher = Matcher(["/v1/key/*"], ["/v1/key/*/my-key-internal"])
    assert not matcher.allows("/v1/key/generate/my-key-internal")
    assert not matcher.allows("/v1/key/decrypt/my-key-internal")
    assert matcher.allows("/v1/key/decrypt/my-key")
    assert not matcher.allows("/v1/key/*/my-key-internal")  # newest: exact literal match


def test_deny_trailing_star_crosses_slash():
    # newest prefix semantics (path.Match alone would stop at '/')
    matcher = Matcher(["/*"], ["/v1/key/*"])
    assert not matcher.allows("/v1/key/create/k")
    assert matcher.allows("/v1/status")


def test_deny_glob_and_literal_both_match():
    matcher = Matcher(["/*"], ["/v1/key/generate/my-?ey"])
    assert not matcher.allows("/v1/key/generate/my-key")
    assert not matcher.allows("/v1/key/generate/my-?ey")
    assert matcher.allows("/v1/key/generate/my-keys")


def test_deny_glob_with_trailing_star_uses_both_rules():
    matcher = Matcher(["/*"], ["/v1/key/*/internal*"])
    assert not matcher.allows("/v1/key/create/internal-1")  # glob
    assert not matcher.allows("/v1/key/*/internal/x")  # newest prefix of the literal text
    assert matcher.allows("/v1/key/create/x/internal-1")


def test_malformed_deny_still_matches_literally():
    matcher = Matcher(["/*"], ["/v1/key/create/[a"])
    assert not matcher.allows("/v1/key/create/[a")
    assert matcher.allows("/v1/key/create/a")


# --- Matcher basics ------------------------------------------------------------------------------


def test_empty_pattern_never_matches():
    assert not Matcher([""], []).allows("")
    assert not Matcher([""], []).allows("/v1/status")
    assert Matcher(["/v1/status"], [""]).allows("/v1/status")
    assert not match_newest("", "")


def test_star_allows_everything():
    assert Matcher(["*"], []).allows("/v1/key/create/a")


def test_glob_allow_does_not_cross_slash():
    matcher = Matcher(["/v1/key/*/my-key"], [])
    assert matcher.allows("/v1/key/create/my-key")
    assert not matcher.allows("/v1/key/create/x/my-key")
    assert not matcher.allows("/v1/key/create/my-key2")


def test_malformed_glob_allow_never_matches():
    matcher = Matcher(["/v1/key/create/[a", "/v1/key/create/a\\"], [])
    assert not matcher.allows("/v1/key/create/[a")
    assert not matcher.allows("/v1/key/create/a\\")
    assert not matcher.allows("/v1/key/create/a")


def test_memo_is_bounded_and_consistent():
    matcher = Matcher(["/v1/key/*/k?"], ["/v1/key/delete/*"])
    for i in range(10_000):
        assert matcher.allows(f"/v1/key/create/k{i % 10}")
        assert not matcher.allows(f"/v1/key/delete/k{i}")
    assert len(matcher._memo) <= 4096


def test_repr_lists_patterns():
    assert "my-app" in repr(Matcher(["/v1/key/create/my-app*"], []))


# --- Authorizer ----------------------------------------------------------------------------------

ADMIN = "a" * 64
APP = "b" * 64
OTHER = "c" * 64


def test_admin_bypasses_everything():
    Authorizer(ADMIN, []).authorize(ADMIN, "/v1/key/delete/x")


def test_admin_is_compared_exactly():
    with pytest.raises(errors.NotAllowed):
        Authorizer(ADMIN, []).authorize(ADMIN.upper(), "/v1/status")


def test_identity_without_policy_is_denied():
    authorizer = Authorizer(ADMIN, [("app", ["/*"], [], [APP])])
    with pytest.raises(errors.NotAllowed) as caught:
        authorizer.authorize(OTHER, "/v1/status")
    assert caught.value.status == 403
    assert caught.value.message == "not authorized: insufficient permissions"


def test_empty_policy_denies_everything():
    authorizer = Authorizer(ADMIN, [("app", [], [], [APP])])
    with pytest.raises(errors.NotAllowed):
        authorizer.authorize(APP, "/v1/status")


def test_identity_in_two_policies_is_rejected():
    with pytest.raises(errors.ConfigError, match="already has a policy"):
        Authorizer(ADMIN, [("a", [], [], [APP]), ("b", [], [], [APP])])
    with pytest.raises(errors.ConfigError, match="already has a policy"):
        Authorizer(ADMIN, [("a", [], [], [APP, APP])])


def test_admin_in_policy_is_rejected():
    with pytest.raises(errors.ConfigError, match="already admin"):
        Authorizer(ADMIN, [("a", [], [], [ADMIN])])


def test_duplicate_policy_name_is_rejected():
    with pytest.raises(errors.ConfigError):
        Authorizer(ADMIN, [("a", [], [], []), ("a", [], [], [])])


# --- Go path.Match ---------------------------------------------------------------------------------

PATH_MATCH_CASES = [
    # (pattern, name, matched) -- malformed patterns are expected never to match
    ("/v1/key/create/*", "/v1/key/create/k", True),
    ("/v1/key/create/*", "/v1/key/create/", True),
    ("/v1/key/create/*", "/v1/key/create/a/b", False),
    ("/v1/key/*/k", "/v1/key/create/k", True),
    ("/v1/key/*/k", "/v1/key//k", True),
    ("/v1/key/*/k", "/v1/key/a/b/k", False),
    ("/v1/*/*/k*", "/v1/key/create/k-1", True),
    ("*", "", True),
    ("*", "a/b", False),
    ("**", "abc", True),
    ("a*", "a", True),
    ("a*b", "a/b", False),
    ("a*b*c", "axxbyyc", True),
    ("a*b*c", "axxbyyd", False),
    ("a*b?c", "abzbxc", True),
    ("*x", "xxx", True),
    ("?", "", False),
    ("?", "/", False),
    ("a?c", "a☺c", True),
    ("a??c", "a☺c", False),
    ("[a-c]x", "bx", True),
    ("[a-c]x", "dx", False),
    ("[^a-c]x", "dx", True),
    ("[^a-c]x", "ax", False),
    ("[abc]", "c", True),
    ("[a-cx-z]", "y", True),
    ("[α-ω]", "λ", True),
    ("[c-a]", "b", False),  # an empty range is allowed and matches nothing
    ("[^c-a]", "b", True),
    ("[/]", "/", True),  # a class may match '/'
    ("[^x]", "/", True),
    ("[*]", "*", True),
    ("[*]x", "ax", False),
    ("[\\]]", "]", True),
    ("[\\-]", "-", True),
    ("[a\\-c]", "b", False),
    ("[a\\-c]", "-", True),
    ("\\*", "*", True),
    ("\\*", "a", False),
    ("\\?x", "?x", True),
    ("a\\b", "ab", True),
    ("a]b", "a]b", True),
    ("", "", True),
    ("", "a", False),
    # Go commits to the leftmost match of a starred chunk: no backtracking into it.
    ("*[^x]/*b", "a//b", False),
    ("*[^x]/*b", "a/cb", True),
    # malformed
    ("[", "[", False),
    ("[]", "]", False),
    ("[]a]", "a", False),
    ("[-]", "-", False),
    ("[a-]", "a", False),
    ("[-a]", "a", False),
    ("[^", "a", False),
    ("[a", "a", False),
    ("[a-b-c]", "a", False),
    ("\\", "\\", False),
    ("a\\", "a", False),
    ("[\\", "a", False),
    ("a*[", "ab", False),
    ("x*[", "ab", False),  # malformed even though the first chunk already fails
    ("a*b[", "axb", False),
]


@pytest.mark.parametrize(("pattern", "name", "matched"), PATH_MATCH_CASES)
def test_path_match(pattern, name, matched):
    assert path_match(pattern, name) is matched
    assert _go_match(pattern, name) is matched


# Pattern building blocks: well-formed terms (classes that can match '/' included) and the
# characters that make a pattern malformed.
_TOKENS = ["a", "b", "/", "/", "*", "*", "?", "[^a]", "[/]", "[a-b]", "[^/]", "\\*", "[", "]", "-", "^", "\\"]


@pytest.mark.parametrize("seed", range(2))
def test_path_match_agrees_with_reference_interpreter(seed):
    rng = random.Random(seed)
    for _ in range(20_000):
        pattern = "".join(rng.choice(_TOKENS) for _ in range(rng.randint(0, 6)))
        name = "".join(rng.choice("aab//") for _ in range(rng.randint(0, 7)))
        assert path_match(pattern, name) is _go_match(pattern, name), (pattern, name)
    for _ in range(5_000):
        pattern = "".join(rng.choice("ab/*?[]^-\\") for _ in range(rng.randint(0, 8)))
        name = "".join(rng.choice("ab/-]^*\\") for _ in range(rng.randint(0, 7)))
        assert path_match(pattern, name) is _go_match(pattern, name), (pattern, name)


def test_is_glob():
    assert not is_glob("/v1/key/create/my-app*")
    assert not is_glob("/v1/status")
    assert not is_glob("*")
    assert is_glob("/v1/key/*/k")
    assert is_glob("/v1/key/create/**")
    assert is_glob("/v1/key/create/k?")
    assert is_glob("/v1/key/create/[ab]")
    assert is_glob("/v1/key/create/\\*")


# A direct interpreter of the path.Match algorithm (chunk by chunk, no regex), used as the oracle
# for the compiled regexes. Returns False for every malformed pattern.


class _Bad(Exception):
    pass


def _go_match(pattern: str, name: str) -> bool:
    try:
        return _go_match_or_raise(pattern, name)
    except _Bad:
        return False


def _go_match_or_raise(pattern: str, name: str) -> bool:
    while pattern:
        star, chunk, pattern = _go_scan(pattern)
        if star and not chunk:
            return "/" not in name
        rest = _go_chunk(chunk, name)
        if rest is not None and (not rest or pattern):
            name = rest
            continue
        advanced = False
        if star:
            i = 0
            while i < len(name) and name[i] != "/":
                rest = _go_chunk(chunk, name[i + 1 :])
                if rest is not None and not (not pattern and rest):
                    name = rest
                    advanced = True
                    break
                i += 1
        if advanced:
            continue
        while pattern:
            _, chunk, pattern = _go_scan(pattern)
            _go_chunk(chunk, "")
        return False
    return not name


def _go_scan(pattern: str) -> tuple[bool, str, str]:
    star = pattern.startswith("*")
    pattern = pattern.lstrip("*")
    in_class = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            i += 1
        elif c == "[":
            in_class = True
        elif c == "]":
            in_class = False
        elif c == "*" and not in_class:
            return star, pattern[:i], pattern[i:]
        i += 1
    return star, pattern, ""


def _go_chunk(chunk: str, s: str) -> str | None:
    """Remainder of s after chunk matched its beginning, None if not; raises _Bad if malformed."""
    failed = False
    while chunk:
        if not s:
            failed = True
        c = chunk[0]
        if c == "[":
            r = "" if failed else s[0]
            if not failed:
                s = s[1:]
            chunk = chunk[1:]
            negated = chunk.startswith("^")
            if negated:
                chunk = chunk[1:]
            hit, count = False, 0
            while not (chunk.startswith("]") and count):
                lo, chunk = _go_esc(chunk)
                hi = lo
                if chunk[0] == "-":
                    hi, chunk = _go_esc(chunk[1:])
                if r and lo <= r <= hi:
                    hit = True
                count += 1
            chunk = chunk[1:]
            if hit == negated:
                failed = True
        elif c == "?":
            if not failed:
                failed = s[0] == "/"
                s = s[1:]
            chunk = chunk[1:]
        else:
            if c == "\\":
                chunk = chunk[1:]
                if not chunk:
                    raise _Bad
            if not failed:
                failed = chunk[0] != s[0]
                s = s[1:]
            chunk = chunk[1:]
    return None if failed else s


def _go_esc(chunk: str) -> tuple[str, str]:
    if not chunk or chunk[0] in "-]":
        raise _Bad
    if chunk[0] == "\\":
        chunk = chunk[1:]
        if not chunk:
            raise _Bad
    if len(chunk) < 2:
        raise _Bad
    return chunk[0], chunk[1:]

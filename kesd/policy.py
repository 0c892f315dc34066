"""Policy evaluation (pure): allow/deny path patterns and the per-request authorization decision.

Two KES eras read a pattern differently (reference §4.5): the newest treats one trailing ``*`` as a
prefix match and everything else as an exact string; 2023 servers used Go's ``path.Match`` glob.
kesd keeps every old deny rule working: a deny pattern matches if it matches under *either* rule,
so no 2023 deny rule silently stops protecting a key. An allow pattern that only a glob can mean
(a metacharacter anywhere but one trailing ``*``) is a glob; any other allow pattern uses the newest
rule, so typical patterns such as ``/v1/key/generate/my-app*`` behave exactly as in the newest KES.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from kesd import errors

_GLOB_META = frozenset("*?[\\")
_MEMO_SIZE = 4096

PolicySpec = tuple[str, Iterable[str], Iterable[str], Iterable[str]]


def match_newest(pattern: str, path: str) -> bool:
    """The newest KES rule: ``prefix*`` matches paths starting with ``prefix``, else exact equality."""
    if not pattern:
        return False
    if pattern.endswith("*"):
        return path.startswith(pattern[:-1])
    return path == pattern


def path_match(pattern: str, name: str) -> bool:
    """Go ``path.Match`` (the 2023 KES rule); a malformed pattern never matches."""
    regex = _compiled_glob(pattern)
    return regex is not None and regex.fullmatch(name) is not None


def is_glob(pattern: str) -> bool:
    """True if ``pattern`` has a glob metacharacter other than a single trailing ``*``."""
    stem = pattern[:-1] if pattern.endswith("*") else pattern
    return not _GLOB_META.isdisjoint(stem)


def is_subset(
    a_allow: Iterable[str], a_deny: Iterable[str], b_allow: Iterable[str], b_deny: Iterable[str]
) -> bool:
    """Whether policy A grants nothing policy B does not (the SDK's pattern-level ``IsSubset``).

    Patterns are compared as strings under the newest rule: every allow pattern of A must be covered
    by an allow pattern of B, and a deny pattern of B that overlaps an allow pattern of A must be
    covered by a deny pattern of A.
    """
    a_allow, a_deny = tuple(a_allow), tuple(a_deny)
    b_allow, b_deny = tuple(b_allow), tuple(b_deny)
    for pattern in a_allow:
        if not any(match_newest(b, pattern) for b in b_allow):
            return False
        denied = any(match_newest(d, pattern) for d in b_deny)
        if denied and not any(match_newest(d, pattern) for d in a_deny):
            return False
    for denied in b_deny:
        reached = any(match_newest(a, denied) for a in a_allow)
        if reached and not any(match_newest(d, denied) for d in a_deny):
            return False
    return True


class Matcher:
    """The compiled allow/deny lists of one policy; :meth:`allows` is the per-request check."""

    __slots__ = (
        "_allow_exact",
        "_allow_glob",
        "_allow_prefix",
        "_deny_exact",
        "_deny_glob",
        "_deny_prefix",
        "_memo",
        "allow",
        "deny",
    )

    def __init__(self, allow: Iterable[str], deny: Iterable[str]) -> None:
        self.allow: tuple[str, ...] = tuple(allow)
        self.deny: tuple[str, ...] = tuple(deny)
        allow_exact: set[str] = set()
        allow_prefix: list[str] = []
        allow_glob: list[str] = []
        for pattern in self.allow:
            if not pattern:
                continue
            if is_glob(pattern):
                _add_glob(allow_glob, pattern)
            elif pattern.endswith("*"):
                allow_prefix.append(pattern[:-1])
            else:
                allow_exact.add(pattern)
        deny_exact: set[str] = set()
        deny_prefix: list[str] = []
        deny_glob: list[str] = []
        for pattern in self.deny:
            if not pattern:
                continue
            if pattern.endswith("*"):
                deny_prefix.append(pattern[:-1])
            else:
                deny_exact.add(pattern)
            if is_glob(pattern):
                _add_glob(deny_glob, pattern)
        self._allow_exact = frozenset(allow_exact)
        self._allow_prefix = tuple(allow_prefix)
        self._allow_glob = _union(allow_glob)
        self._deny_exact = frozenset(deny_exact)
        self._deny_prefix = tuple(deny_prefix)
        self._deny_glob = _union(deny_glob)
        self._memo: dict[str, bool] | None = {} if (allow_glob or deny_glob) else None

    def __repr__(self) -> str:
        return f"Matcher(allow={list(self.allow)!r}, deny={list(self.deny)!r})"

    def allows(self, path: str) -> bool:
        """True if no deny pattern and at least one allow pattern matches ``path`` (default deny)."""
        memo = self._memo
        if memo is None:
            return self._decide(path)
        verdict = memo.get(path)
        if verdict is None:
            verdict = self._decide(path)
            if len(memo) >= _MEMO_SIZE:
                memo.clear()
            memo[path] = verdict
        return verdict

    def _decide(self, path: str) -> bool:
        """The uncached decision: deny wins, then allow, else deny."""
        if path in self._deny_exact or path.startswith(self._deny_prefix):
            return False
        if self._deny_glob is not None and self._deny_glob.fullmatch(path) is not None:
            return False
        if path in self._allow_exact or path.startswith(self._allow_prefix):
            return True
        return self._allow_glob is not None and self._allow_glob.fullmatch(path) is not None


class Authorizer:
    """The authorization decision for a request (reference §4 steps 2-4): admin, policy, patterns."""

    __slots__ = ("_by_identity", "_matchers", "admin")

    def __init__(self, admin: str, policies: Iterable[PolicySpec] = ()) -> None:
        """``policies`` yields ``(name, allow, deny, identities)``; an identity may have one policy."""
        self.admin = admin
        self._matchers: dict[str, Matcher] = {}
        self._by_identity: dict[str, str] = {}
        for name, allow, deny, identities in policies:
            if name in self._matchers:
                raise errors.ConfigError(f"policy '{name}' is defined more than once")
            self._matchers[name] = Matcher(allow, deny)
            for identity in identities:
                if identity == admin:
                    raise errors.ConfigError(
                        f"cannot assign policy '{name}' to '{identity}': identity is already admin"
                    )
                if identity in self._by_identity:
                    raise errors.ConfigError(
                        f"cannot assign policy '{name}' to '{identity}': identity already has a policy"
                    )
                self._by_identity[identity] = name

    def is_admin(self, identity: str) -> bool:
        """True if ``identity`` is the configured admin (exact string comparison)."""
        return identity == self.admin

    def policy_of(self, identity: str) -> str | None:
        """The name of the policy assigned to ``identity``, or None."""
        return self._by_identity.get(identity)

    def matcher(self, policy: str) -> Matcher:
        """The compiled matcher of a policy by name (KeyError if there is none)."""
        return self._matchers[policy]

    def policies(self) -> tuple[str, ...]:
        """The configured policy names, in configuration order."""
        return tuple(self._matchers)

    def authorize(self, identity: str, path: str) -> None:
        """Allow the admin always, else the caller's policy must allow ``path``; raise NotAllowed."""
        if identity == self.admin:
            return
        name = self._by_identity.get(identity)
        if name is None or not self._matchers[name].allows(path):
            raise errors.NotAllowed()


# --- Go path.Match, compiled to a Python regex ---------------------------------------------------
#
# path.Match splits a pattern into chunks, each optionally preceded by a star; a chunk consists of
# single-character terms (literal, escaped literal, '?', class). For a starred chunk that is not the
# last one it commits to the leftmost position (never crossing '/') where the chunk matches and never
# revisits that choice; the last chunk must end the name. An atomic group around a lazy skip gives
# exactly that commitment, so the regex answers as path.Match does, including its corner cases
# (classes may match '/'). A malformed pattern (Go: ErrBadPattern anywhere) compiles to None.


class _BadPatternError(Exception):
    """A glob pattern is malformed (Go's ErrBadPattern)."""


def _add_glob(regexes: list[str], pattern: str) -> None:
    """Append the regex of a well-formed glob; a malformed glob matches nothing and is dropped."""
    regex = _glob_regex(pattern)
    if regex is not None:
        regexes.append(regex)


def _union(regexes: list[str]) -> re.Pattern[str] | None:
    """One compiled alternation of several glob regexes (None if there are none)."""
    if not regexes:
        return None
    return re.compile("|".join(f"(?:{r})" for r in regexes))


@lru_cache(maxsize=256)
def _compiled_glob(pattern: str) -> re.Pattern[str] | None:
    """The compiled regex of a glob pattern, or None if it is malformed."""
    regex = _glob_regex(pattern)
    return None if regex is None else re.compile(regex)


def _glob_regex(pattern: str) -> str | None:
    """Translate a ``path.Match`` pattern into an equivalent regex for ``fullmatch``; None if malformed."""
    try:
        chunks = _scan_chunks(pattern)
        parts: list[str] = []
        for index, (star, chunk) in enumerate(chunks):
            body = _chunk_regex(chunk)
            if not star:
                parts.append(body)
            elif not chunk:
                parts.append("[^/]*")
            elif index == len(chunks) - 1:
                parts.append("[^/]*" + body)
            else:
                parts.append("(?>[^/]*?" + body + ")")
    except _BadPatternError:
        return None
    return "".join(parts)


def _scan_chunks(pattern: str) -> list[tuple[bool, str]]:
    """Split a pattern into (preceded by a star, chunk) pairs; stars inside a class are literal."""
    chunks: list[tuple[bool, str]] = []
    rest = pattern
    while rest:
        stripped = rest.lstrip("*")
        star = len(stripped) != len(rest)
        rest = stripped
        end, in_class, i = len(rest), False, 0
        while i < len(rest):
            char = rest[i]
            if char == "\\":
                i += 1
            elif char == "[":
                in_class = True
            elif char == "]":
                in_class = False
            elif char == "*" and not in_class:
                end = i
                break
            i += 1
        chunks.append((star, rest[:end]))
        rest = rest[end:]
    return chunks


def _chunk_regex(chunk: str) -> str:
    """The regex of one chunk of single-character terms; raises _BadPatternError if malformed."""
    parts: list[str] = []
    i, n = 0, len(chunk)
    while i < n:
        char = chunk[i]
        if char == "[":
            i += 1
            negated = i < n and chunk[i] == "^"
            if negated:
                i += 1
            ranges: list[tuple[str, str]] = []
            while not (i < n and chunk[i] == "]" and ranges):
                low, i = _class_char(chunk, i)
                high = low
                if chunk[i] == "-":
                    high, i = _class_char(chunk, i + 1)
                ranges.append((low, high))
            i += 1
            parts.append(_class_regex(ranges, negated))
        elif char == "?":
            parts.append("[^/]")
            i += 1
        elif char == "\\":
            if i + 1 >= n:
                raise _BadPatternError
            parts.append(re.escape(chunk[i + 1]))
            i += 2
        else:
            parts.append(re.escape(char))
            i += 1
    return "".join(parts)


def _class_char(chunk: str, i: int) -> tuple[str, int]:
    """One possibly escaped class character at ``i`` and the index after it; the class must go on."""
    if i >= len(chunk) or chunk[i] in "-]":
        raise _BadPatternError
    if chunk[i] == "\\":
        i += 1
        if i >= len(chunk):
            raise _BadPatternError
    if i + 1 >= len(chunk):
        raise _BadPatternError
    return chunk[i], i + 1


def _class_regex(ranges: list[tuple[str, str]], negated: bool) -> str:
    """A regex for one class; Go accepts empty ranges (low > high) which then match nothing."""
    items = "".join(
        _escape_class(low) if low == high else f"{_escape_class(low)}-{_escape_class(high)}"
        for low, high in ranges
        if low <= high
    )
    if negated:
        return f"[^{items}]" if items else "(?s:.)"
    return f"[{items}]" if items else "(?!)"


def _escape_class(char: str) -> str:
    """A character as a ``\\U`` escape, safe anywhere inside a regex class."""
    return f"\\U{ord(char):08x}"

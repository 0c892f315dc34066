"""The typed errors of kesd and their KES status codes and messages: the one table.

Clients compare status *and* message text exactly (the Go SDK's ``errors.Is``), so every message
here is byte-for-byte what a KES server sends. Messages never contain secret material: the only
values ever formatted into them are names, identities, patterns, ciphers and HTTP methods.
"""

from __future__ import annotations

import json


class KesError(Exception):
    """An error with a KES HTTP status and an exact client-visible message."""

    status: int = 500
    message: str = "internal server error"

    def __init__(self, message: str | None = None, status: int | None = None) -> None:
        if message is not None:
            self.message = message
        if status is not None:
            self.status = status
        super().__init__(self.message)


# --- sentinels the SDK recognises (kes/error.go) -------------------------------------------------


class NotAllowed(KesError):
    """The caller's identity has no policy or the policy denies the path."""

    status, message = 403, "not authorized: insufficient permissions"


class KeyNotFound(KesError):
    """The named key is not in the keystore."""

    status, message = 404, "key does not exist"


class KeyExists(KesError):
    """A key of that name already exists."""

    status, message = 400, "key already exists"


class DecryptError(KesError):
    """The ciphertext is malformed or fails authentication (also: wrong context)."""

    status, message = 400, "decryption failed: ciphertext is not authentic"


class PolicyNotFound(KesError):
    """No policy of that name is configured."""

    status, message = 404, "policy does not exist"


class IdentityNotFound(KesError):
    """The identity is neither the admin nor assigned to a policy."""

    status, message = 404, "identity does not exist"


# --- argument validation ------------------------------------------------------------------------


class InvalidKeyName(KesError):
    """A key name fails ``validName``."""

    status = 400

    def __init__(self, name: str) -> None:
        super().__init__(f"key name '{name}' is empty, too long or contains invalid characters")


class InvalidPolicyName(KesError):
    """A policy name fails ``validName``."""

    status = 400

    def __init__(self, name: str) -> None:
        super().__init__(f"policy name '{name}' is empty, too long or contains invalid characters")


class InvalidIdentity(KesError):
    """An identity argument fails ``validName``."""

    status = 400

    def __init__(self, identity: str) -> None:
        super().__init__(f"identity '{identity}' is empty, too long or contains invalid characters")


class InvalidListPattern(KesError):
    """A list prefix fails ``validPattern``."""

    status = 400

    def __init__(self, pattern: str) -> None:
        super().__init__(f"listing pattern '{pattern}' is empty, too long or is invalid")


class InvalidRequestBody(KesError):
    """The request body is not the JSON the route expects (or is larger than the route allows)."""

    status, message = 400, "invalid request body"


class InvalidImportBody(KesError):
    """The import request body is not valid JSON of the expected shape."""

    status, message = 400, "invalid import key request body"


class UnsupportedAlgorithm(KesError):
    """An import names a cipher that is not AES256 or ChaCha20."""

    status = 406

    def __init__(self, cipher: str) -> None:
        super().__init__(f"algorithm '{cipher}' is not supported")


class InvalidKeySize(KesError):
    """An imported key is not exactly 32 bytes."""

    status = 406

    def __init__(self, cipher: str) -> None:
        super().__init__(f"invalid key size for '{cipher}'")


class HMACNotSupported(KesError):
    """The key came from a JSON key file, which carries no HMAC key."""

    status, message = 409, "key does not support HMAC"


# --- transport, authentication, routing ---------------------------------------------------------


class MethodNotAllowed(KesError):
    """The route exists but expects another HTTP method."""

    status = 405

    def __init__(self, got: str, expected: str) -> None:
        self.expected = expected
        super().__init__(f"received method '{got}' expected '{expected}'")


class CertificateRequired(KesError):
    """No usable (non-CA) client certificate was presented."""

    status, message = 400, "tls: client certificate is required"


class TooManyCertificates(KesError):
    """More than one non-CA client certificate was presented."""

    status, message = 400, "tls: received more than one client certificate"


class InvalidClientCertificate(KesError):
    """A proxy forwarded a header that is not one PEM certificate."""

    status, message = 400, "invalid client certificate"


# --- keystore failures (502/504) and internal failures (500) ------------------------------------


class KeystoreError(KesError):
    """The keystore failed; the message names the operation, never the cause (which is logged)."""

    status = 502


class KeystoreUnreachable(KesError):
    """The keystore's status check could not reach it."""

    status, message = 504, "key store is not reachable"


class KeystoreUnavailable(KesError):
    """The keystore answered its status check with an error."""

    status, message = 502, "key store is unavailable"


class InternalError(KesError):
    """A server-side failure that is not the caller's fault (500 with a fixed message)."""

    status = 500


# Fixed messages for keystore and internal failures, by operation.
CREATE_FAILED = "failed to create key"
READ_FAILED = "failed to read key"
DELETE_FAILED = "failed to delete key"
LIST_FAILED = "failed to list keys"
GENERATE_FAILED = "failed to generate encryption key"
ENCRYPT_FAILED = "failed to encrypt plaintext"
DECRYPT_FAILED = "failed to decrypt ciphertext"


# --- configuration and start-up (exit codes, not HTTP) ------------------------------------------


class ConfigError(Exception):
    """A configuration problem, reported as one line naming the file, the field and the value."""

    def __init__(self, reason: str, *, file: str = "", field: str = "", value: object = None) -> None:
        self.reason = reason
        self.file = file
        self.field = field
        self.value = value
        super().__init__(self.line())

    def line(self) -> str:
        """One human line: ``config.yml: tls.auth: invalid auth 'maybe'`` style."""
        parts = [p for p in (self.file, self.field) if p]
        prefix = ": ".join(parts)
        return f"{prefix}: {self.reason}" if prefix else self.reason


class StartupError(Exception):
    """The server cannot start (port in use, keystore unusable, TLS self-test failed, …)."""


def error_body(err: KesError) -> bytes:
    """The JSON error body the newest KES writes: ``{"message":"…"\\n}`` (newline before ``}``)."""
    return b'{"message":' + _json_string(err.message) + b"\n}"


def _json_string(text: str) -> bytes:
    """Encode ``text`` as a JSON string the way Go's encoder does (HTML-safe escapes included)."""
    encoded = json.dumps(text, ensure_ascii=False)
    encoded = encoded.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return encoded.encode("utf-8")

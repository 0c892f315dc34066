"""The server's TLS context and the identity of a connection's peer.

KES's default (``tls.auth: off``) requires a client certificate but does not verify its chain:
self-signed client certificates and the SDK's API-key certificates must work. Python's ``ssl``
cannot express "require any certificate", so for that mode kesd installs an accept-all
``SSL_CTX_set_cert_verify_callback`` on the context through ctypes. That depends on CPython's
object layout (the ``SSL_CTX*`` right after the object header), so the hook checks what it found
against the context's own settings, and every new context passes a self-test (an in-memory
handshake: a self-signed certificate must be accepted, a client without one refused) before the
server uses it. If anything does not add up, the server refuses to start.
"""

from __future__ import annotations

import _ssl
import ctypes
import os
import ssl
import tempfile
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from kesd import errors, pem
from kesd.identity import identity_of_der, is_ca_certificate

_VERIFY_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


@_VERIFY_CB
def _accept_any_chain(_store_ctx: int | None, _arg: int | None) -> int:
    """OpenSSL certificate-verification callback that accepts every presented chain."""
    return 1


class _LibSSL:
    """The libssl functions the hook needs, resolved through the ``_ssl`` extension itself."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(_ssl.__file__)
        self.set_cert_verify_callback = lib.SSL_CTX_set_cert_verify_callback
        self.set_cert_verify_callback.restype = None
        self.set_cert_verify_callback.argtypes = [ctypes.c_void_p, _VERIFY_CB, ctypes.c_void_p]
        self.get_verify_mode = lib.SSL_CTX_get_verify_mode
        self.get_verify_mode.restype = ctypes.c_int
        self.get_verify_mode.argtypes = [ctypes.c_void_p]
        self.get_options = lib.SSL_CTX_get_options
        self.get_options.restype = ctypes.c_uint64
        self.get_options.argtypes = [ctypes.c_void_p]


_libssl: _LibSSL | None = None


def _ssl_ctx_pointer(ctx: ssl.SSLContext) -> int:
    """Locate the ``SSL_CTX*`` inside a CPython ``SSLContext`` and prove it is the right one."""
    global _libssl  # noqa: PLW0603 - resolved once, lazily
    if _libssl is None:
        _libssl = _LibSSL()
    ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not ptr:
        raise errors.StartupError("TLS: cannot locate OpenSSL context (unsupported Python build)")
    # Two independent settings must read back identically through the found pointer.
    if _libssl.get_options(ptr) != int(ctx.options) or _libssl.get_verify_mode(ptr) != 3:
        raise errors.StartupError("TLS: OpenSSL context layout check failed (unsupported Python build)")
    return ptr


def accept_any_client_certificate(ctx: ssl.SSLContext) -> None:
    """Make ``ctx`` require a client certificate without verifying its chain (KES ``tls.auth: off``)."""
    ctx.verify_mode = ssl.CERT_REQUIRED
    ptr = _ssl_ctx_pointer(ctx)
    assert _libssl is not None
    _libssl.set_cert_verify_callback(ptr, _accept_any_chain, None)


def server_context(
    *,
    cert_file: str,
    key_file: str,
    password: str = "",
    auth: str = "off",
    ca: str = "",
    optional_client_cert: bool = False,
) -> ssl.SSLContext:
    """Build the listening socket's TLS context from the config's ``tls`` section.

    ``auth`` "off": a certificate is required but not verified; "on": verified against the system
    roots plus ``ca``. ``optional_client_cert`` (some route skips auth) lets clients connect without one.
    """
    _check_files(cert_file, key_file, password)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.load_cert_chain(cert_file, key_file, password=_password_callback(password, key_file))
    except (ssl.SSLError, OSError) as exc:
        raise errors.StartupError(f"tls: cannot load '{cert_file}' / '{key_file}': {exc}") from None
    if auth == "on":
        ctx.verify_mode = ssl.CERT_OPTIONAL if optional_client_cert else ssl.CERT_REQUIRED
        ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        if ca:
            _load_ca(ctx, ca)
    else:
        accept_any_client_certificate(ctx)
        self_test(ctx)
        if optional_client_cert:
            ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def _password_callback(password: str, key_file: str) -> Any:
    """A password callback that never prompts on a terminal."""

    def callback() -> bytes:
        if not password:
            raise errors.StartupError(f"tls.key: '{key_file}' is encrypted but tls.password is not set")
        return password.encode()

    return callback


def _check_files(cert_file: str, key_file: str, password: str) -> None:
    """Read and parse the key and certificate so that errors name the file and the problem."""
    for field, path in (("tls.key", key_file), ("tls.cert", cert_file)):
        if not path:
            raise errors.StartupError(f"{field}: no file specified")
    try:
        key_pem = _read(key_file)
        pem.load_private_key(key_pem, password or None, source=key_file)
    except (OSError, ValueError) as exc:
        raise errors.StartupError(f"tls.key: {_reason(exc, key_file)}") from None
    try:
        certs = pem.load_certificates(_read(cert_file), source=cert_file)
    except (OSError, ValueError) as exc:
        raise errors.StartupError(f"tls.cert: {_reason(exc, cert_file)}") from None
    if not pem.has_ip_or_dns_san(certs[0]):
        raise errors.StartupError(
            f"tls.cert: '{cert_file}' has no DNS or IP subject alternative name; clients cannot verify it"
        )


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _reason(exc: Exception, path: str) -> str:
    if isinstance(exc, OSError):
        return f"cannot read '{path}': {exc.strerror}"
    return str(exc)


def _load_ca(ctx: ssl.SSLContext, ca: str) -> None:
    """Trust ``ca``: a PEM file, or a directory whose regular files are all PEM certificates."""
    try:
        if os.path.isdir(ca):
            for name in sorted(os.listdir(ca)):
                path = os.path.join(ca, name)
                if os.path.isfile(path):
                    ctx.load_verify_locations(cafile=path)
        else:
            ctx.load_verify_locations(cafile=ca)
    except (ssl.SSLError, OSError) as exc:
        raise errors.StartupError(f"tls.ca: cannot load '{ca}': {exc}") from None


def self_test(ctx: ssl.SSLContext) -> None:
    """Prove on ``ctx`` that a self-signed client certificate passes and a missing one fails."""
    with tempfile.TemporaryDirectory(prefix="kesd-tls-selftest-") as tmp:
        key = ed25519.Ed25519PrivateKey.generate()
        now = datetime.now(UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kesd self-test")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(minutes=5))
            .sign(key, None)
        )
        cert_path, key_path = os.path.join(tmp, "c.pem"), os.path.join(tmp, "k.pem")
        with open(cert_path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(key_path, "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        with_cert = _client_context()
        with_cert.load_cert_chain(cert_path, key_path)
        der = _handshake(ctx, with_cert)
    if der != cert.public_bytes(serialization.Encoding.DER):
        raise errors.StartupError("TLS self-test failed: a self-signed client certificate was not accepted")
    try:
        _handshake(ctx, _client_context())
    except ssl.SSLError:
        return
    raise errors.StartupError("TLS self-test failed: a client without a certificate was accepted")


def _client_context() -> ssl.SSLContext:
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    return client


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> bytes | None:
    """Run a TLS handshake entirely in memory; returns the peer certificate the server saw."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(20):
        for side, obj in (("c", client), ("s", server)):
            if not done[side]:
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if done["c"] and done["s"]:
            # TLS 1.3: the server judges the client certificate after the client finishes.
            try:
                client.write(b"x")
                s_in.write(c_out.read())
                server.read(1)
            except ssl.SSLWantReadError:
                pass
            return server.getpeercert(binary_form=True)
    raise ssl.SSLError("handshake did not complete")


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> tuple[str, errors.KesError | None]:
    """The identity of the connection's client certificate, or the error KES answers without one."""
    if ssl_object is None:
        return "", errors.KesError("insecure connection: TLS is required", 400)
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return "", errors.CertificateRequired()
    try:
        if is_ca_certificate(der):
            return "", errors.CertificateRequired()
        return identity_of_der(der), None
    except ValueError:
        return "", errors.CertificateRequired()

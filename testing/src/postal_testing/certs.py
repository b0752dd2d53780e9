"""Certificates for the "TLS Redis whose certificate does not verify" fault, made by `openssl`.

Two unrelated throwaway CAs: one signs the Redis server's certificate (for 127.0.0.1), the other
is the only CA Postal is told to trust (`REDIS_TLS_CA_FILE`). Every handshake then fails
verification, as it does when a Redis's certificate was re-issued by a CA the clients were never
given. Made at run time with the `openssl` command (present wherever redis-server was built with
TLS), because `trustme`, which the tests use, is a development dependency only.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from postal_testing import RigError

OPENSSL_TIMEOUT = 30.0  # seconds per openssl call (an EC key takes milliseconds)
# EC P-256 keys: generated in milliseconds, where RSA keys take a noticeable fraction of a second.
KEY_OPTIONS = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


@dataclass(frozen=True, slots=True)
class UntrustedPki:
    server_cert: Path  # for IP 127.0.0.1, signed by the server's CA
    server_key: Path
    server_ca: Path  # the server's CA: redis-server needs one for --tls-ca-cert-file
    client_ca: Path  # the CA Postal trusts: another one, so verification fails


def _openssl(*args: str) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise RigError("the TLS fault needs the openssl command, which is not installed")
    try:
        subprocess.run([binary, *args], check=True, capture_output=True, timeout=OPENSSL_TIMEOUT)
    except subprocess.CalledProcessError as exc:
        error = exc.stderr.decode(errors="replace").strip()
        raise RigError(f"openssl {args[0]} failed: {error}") from exc
    except subprocess.TimeoutExpired as exc:
        raise RigError(f"openssl {args[0]} took more than {OPENSSL_TIMEOUT:g}s") from exc


def _self_signed_ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl(
        "req", "-x509", *KEY_OPTIONS, "-keyout", str(key), "-out", str(cert),
        "-days", "2", "-subj", f"/CN=postal bench {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


def make_untrusted_pki(directory: Path) -> UntrustedPki:
    """Write the two CAs and the server's certificate and key into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    server_ca, server_ca_key = _self_signed_ca(directory, "server-ca")
    client_ca, _ = _self_signed_ca(directory, "client-ca")
    request = directory / "server.csr"
    server_key, server_cert = directory / "server.key", directory / "server.pem"
    extensions = directory / "server.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        "req", "-new", *KEY_OPTIONS, "-keyout", str(server_key), "-out", str(request),
        "-subj", "/CN=127.0.0.1",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(request), "-CA", str(server_ca), "-CAkey", str(server_ca_key),
        "-CAcreateserial", "-out", str(server_cert), "-days", "2", "-extfile", str(extensions),
    )  # fmt: skip
    return UntrustedPki(server_cert, server_key, server_ca, client_ca)

"""TLS, and mutual TLS, for both servers from the same three PEM files.

``AVN_TLS_CERT_FILE`` + ``AVN_TLS_KEY_FILE`` turn TLS on for REST (uvicorn) and gRPC alike;
``AVN_TLS_CLIENT_CA_FILE`` then makes both require a client certificate signed by that CA (mutual
TLS) — on top of the API key, which still names the caller. :func:`check_tls_files` loads them
once at start-up, so a missing, unreadable or mismatched file stops the gateway with one line
instead of failing the first handshake.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc


class TlsSettingError(ValueError):
    """The TLS files do not fit together; ``setting`` names the one to fix."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(problem)
        self.setting = setting


@dataclass(frozen=True)
class TlsFiles:
    certificate: Path
    key: Path
    client_ca: Path | None = None

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.certificate.read_bytes())],
            root_certificates=self.client_ca.read_bytes() if self.client_ca else None,
            require_client_auth=self.mutual,
        )

    def uvicorn_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"ssl_certfile": str(self.certificate), "ssl_keyfile": str(self.key)}
        if self.client_ca is not None:
            options.update(ssl_ca_certs=str(self.client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
        return options


def tls_files(settings: Any) -> TlsFiles | None:
    """The TLS files the settings name, or None for plain text."""
    if settings.tls_cert_file is None:
        return None
    return TlsFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)


def check_tls_files(settings: Any) -> None:
    """Raise :class:`TlsSettingError` unless the TLS settings are all unset or load together."""
    cert, key, client_ca = settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
    if cert is None and key is None:
        if client_ca is not None:
            raise TlsSettingError("tls_client_ca_file", "a client CA needs TLS on (tls_cert_file and tls_key_file)")
        return
    if cert is None or key is None:
        missing = "tls_cert_file" if cert is None else "tls_key_file"
        raise TlsSettingError(missing, "TLS needs both the certificate and its key")
    for setting, path in (("tls_cert_file", cert), ("tls_key_file", key), ("tls_client_ca_file", client_ca)):
        if path is not None and not path.is_file():
            raise TlsSettingError(setting, f"{path} is not a file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as error:
        raise TlsSettingError("tls_key_file", f"the certificate and key do not load together ({error})") from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as error:
            raise TlsSettingError("tls_client_ca_file", f"the CA bundle does not load ({error})") from None

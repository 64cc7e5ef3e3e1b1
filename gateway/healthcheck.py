"""The gateway container's health check (``python -m gateway.healthcheck``): ``GET /readyz`` on this
container's own REST port, exit 0 when it answers 200, else 1.

It speaks TLS when the gateway does. The server's certificate is not verified — the call goes to
127.0.0.1, this very container, and what is checked is that the gateway answers, not who it is —
and with mutual TLS on it presents the server's own certificate and key as its client
certificate, which the gateway accepts when the CA of ``AVN_TLS_CLIENT_CA_FILE`` signed it (the
usual single-CA setup; docs/security.md).
"""

from __future__ import annotations

import ssl
import sys
import urllib.request

from gateway.settings import Settings

TIMEOUT_S = 5.0


def readiness_url(settings: Settings) -> str:
    scheme = "https" if settings.tls_cert_file else "http"
    return f"{scheme}://127.0.0.1:{settings.rest_port}/readyz"


def loopback_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.tls_cert_file is None:
        return None
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # our own port on loopback: presence is what is checked
    if settings.tls_client_ca_file is not None:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context


def main() -> int:
    settings = Settings()
    try:
        with urllib.request.urlopen(readiness_url(settings), timeout=TIMEOUT_S, context=loopback_context(settings)):
            return 0  # urlopen raises on anything but 2xx
    except OSError as error:
        print(f"not ready: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

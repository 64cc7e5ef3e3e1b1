"""Test certificates: a CA, a server certificate for 127.0.0.1 and localhost, and a client
certificate, made with the ``cryptography`` package. Shared by the gateway's TLS tests and the
Redis TLS test."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from avn.serving.torchserve import LOOPBACK


class Certificates:
    """A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate, as PEM files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca_key, self.ca = self._authority()
        self.ca_file = self._write("ca.pem", self.ca)
        self.server_cert, self.server_key = self._issue("server", server=True)
        self.client_cert, self.client_key = self._issue("client", server=False)

    def _authority(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "avn test CA")])
        certificate = (
            self._builder(name, name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return key, certificate

    def _issue(self, name: str, server: bool) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = self._builder(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"avn test {name}")]), self.ca.subject, key.public_key()
        )
        if server:
            alternative = [x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.DNSName("localhost")]
            builder = builder.add_extension(x509.SubjectAlternativeName(alternative), critical=False)
        certificate = builder.sign(self.ca_key, hashes.SHA256())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        (self.folder / f"{name}.key").write_bytes(key_pem)
        return self._write(f"{name}.pem", certificate), self.folder / f"{name}.key"

    @staticmethod
    def _builder(subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:  # noqa: ANN001
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    def _write(self, name: str, certificate: x509.Certificate) -> Path:
        path = self.folder / name
        path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return path

    def client_context(self, with_certificate: bool) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if with_certificate:
            context.load_cert_chain(self.client_cert, self.client_key)
        return context

    def grpc_credentials(self, with_certificate: bool) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes(),
            private_key=self.client_key.read_bytes() if with_certificate else None,
            certificate_chain=self.client_cert.read_bytes() if with_certificate else None,
        )

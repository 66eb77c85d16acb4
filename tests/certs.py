"""Throw-away X.509 certificates for TLS tests, made with the openssl command line (argument
lists, no shell): a CA, a node certificate valid for 127.0.0.1/localhost (every service presents
it as server and client), and an operator client certificate; plus a second, untrusted CA.
Private keys are made owner-only, as the services require of a key they load."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tideserve.serving import TlsSettings


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _issue(directory: Path, name: str, cn: str, ca: tuple[Path, Path], san: str = "") -> None:
    key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}")
    key.chmod(0o600)
    extensions = directory / f"{name}.ext"
    lines = ["basicConstraints=CA:FALSE", "keyUsage=digitalSignature,keyEncipherment",
             "extendedKeyUsage=serverAuth,clientAuth"]
    if san:
        lines.append(f"subjectAltName={san}")
    extensions.write_text("\n".join(lines) + "\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
             "-CAcreateserial", "-days", "2", "-sha256", "-extfile", str(extensions),
             "-out", str(cert))


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
             "-subj", f"/CN={name}")
    key.chmod(0o600)
    return cert, key


@dataclass(frozen=True)
class Certificates:
    directory: Path

    def path(self, name: str) -> str:
        return str(self.directory / name)

    @property
    def node(self) -> TlsSettings:
        """Server identity with mutual TLS: requires clients signed by the CA."""
        return TlsSettings(self.path("node.crt"), self.path("node.key"), self.path("ca.crt"))

    @property
    def node_tls_only(self) -> TlsSettings:
        """Server identity without client verification (TLS, not mutual)."""
        return TlsSettings(self.path("node.crt"), self.path("node.key"))

    @property
    def operator(self) -> TlsSettings:
        return TlsSettings(self.path("operator.crt"), self.path("operator.key"),
                           self.path("ca.crt"))

    @property
    def stranger(self) -> TlsSettings:
        """A client certificate from a CA the cluster does not trust."""
        return TlsSettings(self.path("stranger.crt"), self.path("stranger.key"),
                           self.path("ca.crt"))

    @property
    def verify_only(self) -> TlsSettings:
        """A client that verifies the server but shows no certificate."""
        return TlsSettings(ca=self.path("ca.crt"))

    def flags(self, tls: TlsSettings) -> tuple[str, ...]:
        return ("--tls-cert", tls.cert, "--tls-key", tls.key, *(("--tls-ca", tls.ca) if tls.ca
                                                                   else ()))


def make_certificates(directory: Path) -> Certificates:
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca(directory, "ca")
    _issue(directory, "node", "tideserve-node", ca, "IP:127.0.0.1,DNS:localhost")
    _issue(directory, "operator", "operator", ca)
    rogue = _ca(directory, "rogue-ca")
    _issue(directory, "stranger", "operator", rogue)
    return Certificates(directory)

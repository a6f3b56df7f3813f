"""``warren certs``: a small certificate authority for encryption in transit (:mod:`shared.tls`).

``warren certs generate`` writes, into one folder (``secrets/tls`` by default, never committed):

* ``ca.pem`` -- the CA's certificate: what every client trusts (and the only file they get);
* ``ca-key.pem`` -- the CA's private key: it signs the servers' certificates; keep it away from
  every container (a later ``generate`` reuses it, so the clients' ``ca.pem`` stays valid);
* ``<server>.pem`` and ``<server>-key.pem`` for each server (``rabbitmq``, ``mongo``), issued to
  the host names it answers to; ``mongo-bundle.pem`` is MongoDB's key and certificate in one
  file, as ``mongod --tlsCertificateKeyFile`` wants it.
"""

from __future__ import annotations

import ipaddress
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from rich.console import Console

app = typer.Typer(help="Certificates for TLS between the services and their servers.")
console = Console(stderr=True)

# --8<-- [start:servers]
# The servers and the names they answer to: compose's service names, and this machine's for
# the local run and the tests.
SERVERS: dict[str, tuple[str, ...]] = {
    "rabbitmq": ("rabbitmq", "localhost", "127.0.0.1"),
    "mongo": ("mongo", "localhost", "127.0.0.1"),
}
CA_DAYS = 3650
SERVER_DAYS = 397  # what browsers accept; the services accept more, but rotate anyway
# --8<-- [end:servers]


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Warren (development)"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def new_ca(
    common_name: str = "Warren development CA",
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA, allowed to sign server certificates and nothing below them."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def server_certificate(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, hosts: tuple[str, ...]
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A server certificate for ``hosts`` (DNS names or IP addresses), signed by the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, certificate


def _load_ca(folder: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None:
    key_file, cert_file = folder / "ca-key.pem", folder / "ca.pem"
    if not (key_file.exists() and cert_file.exists()):
        return None
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise typer.BadParameter(f"{key_file}: not the EC key `warren certs generate` writes")
    return key, x509.load_pem_x509_certificate(cert_file.read_bytes())


def _write(path: Path, content: bytes, *, private: bool) -> None:
    """Write ``content``; a private file is created readable by its owner alone (never, even
    for a moment, by others)."""
    mode = 0o600 if private else 0o644
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "wb") as file:
        file.write(content)
    path.chmod(mode)  # whatever the umask took away from a public one


@app.command("generate")
def generate(
    output: Path = typer.Option(Path("secrets/tls"), help="The folder to write them into."),
    new_authority: bool = typer.Option(
        False,
        "--new-ca",
        help="Make a new CA even if OUTPUT has one (every client needs the new ca.pem).",
    ),
    readable: bool = typer.Option(
        False,
        "--readable",
        help="The servers' private keys readable by all (0644): compose mounts them as they "
        "are, and the servers read them as their own users. Never the CA's key.",
    ),
) -> None:
    """Write a CA (reused if OUTPUT has one) and a certificate for each server, signed by it."""
    output.mkdir(parents=True, exist_ok=True)
    loaded = None if new_authority else _load_ca(output)
    ca_key, ca = loaded or new_ca()
    if loaded is None:
        # The CA's key goes to no container: readable by its owner alone, always.
        _write(output / "ca-key.pem", _pem_key(ca_key), private=True)
        _write(output / "ca.pem", _pem(ca), private=False)
    for server, hosts in SERVERS.items():
        key, certificate = server_certificate(ca_key, ca, hosts)
        _write(output / f"{server}-key.pem", _pem_key(key), private=not readable)
        _write(output / f"{server}.pem", _pem(certificate), private=False)
        if server == "mongo":
            _write(
                output / "mongo-bundle.pem", _pem_key(key) + _pem(certificate), private=not readable
            )
        console.print(f"{output / server}.pem: for {', '.join(hosts)}, {SERVER_DAYS} days")
    console.print(f"{output / 'ca.pem'}: {'reused' if loaded else 'new'} CA; the clients trust it")

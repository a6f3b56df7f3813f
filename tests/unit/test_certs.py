"""`warren certs generate`: a CA and server certificates a client can verify, and a CA key that
stays its owner's (the TLS handshakes themselves: tests/integration/test_tls.py)."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

from cryptography import x509
from typer.testing import CliRunner

from cli import main
from cli.certs import SERVERS


def generate(folder: Path, *args: str) -> None:
    result = CliRunner().invoke(main.app, ["certs", "generate", "--output", str(folder), *args])
    assert result.exit_code == 0, result.output


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_ca_key_is_its_owners_alone_even_when_the_servers_keys_are_readable(
    tmp_path: Path,
) -> None:
    generate(tmp_path, "--readable")  # what `make certs` runs, for compose's bind mounts
    assert mode(tmp_path / "ca-key.pem") == 0o600
    assert mode(tmp_path / "rabbitmq-key.pem") == 0o644
    assert mode(tmp_path / "ca.pem") == 0o644


def test_without_readable_every_private_key_is_its_owners(tmp_path: Path) -> None:
    generate(tmp_path)
    for name in ("ca-key.pem", "rabbitmq-key.pem", "mongo-key.pem", "mongo-bundle.pem"):
        assert mode(tmp_path / name) == 0o600, name


def test_each_server_certificate_names_its_hosts_and_the_ca_signs_it(tmp_path: Path) -> None:
    generate(tmp_path)
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    assert context.get_ca_certs()  # the CA loads as a trust anchor
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    for server, hosts in SERVERS.items():
        cert = x509.load_pem_x509_certificate((tmp_path / f"{server}.pem").read_bytes())
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        found = {str(v) for v in names.get_values_for_type(x509.DNSName)}
        found |= {str(v) for v in names.get_values_for_type(x509.IPAddress)}
        assert found == set(hosts)


def test_a_second_run_keeps_the_ca_so_the_clients_trust_survives(tmp_path: Path) -> None:
    generate(tmp_path)
    first = (tmp_path / "ca.pem").read_bytes()
    generate(tmp_path)
    assert (tmp_path / "ca.pem").read_bytes() == first

"""Keys and certificates for a deployment: CA, SuperLink certificate, node keys."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedeye.errors import ProvisioningError
from fedeye.privacy import keys


@pytest.fixture(scope="module")
def ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    return keys.create_ca(common_name="FedEye test CA", days=30)


def test_ca_is_a_self_signed_ca(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]) -> None:
    _, cert = ca
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(cert)


def test_ca_signs_the_server_certificate(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]) -> None:
    ca_key, ca_cert = ca
    _, cert = keys.issue_server_certificate(ca_key, ca_cert, hosts=["10.0.0.5", "superlink.example.org"])
    ca_public = ca_cert.public_key()
    assert isinstance(ca_public, ec.EllipticCurvePublicKey)
    ca_public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA384()))
    cert.verify_directly_issued_by(ca_cert)


def test_server_certificate_names_every_host(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]) -> None:
    ca_key, ca_cert = ca
    _, cert = keys.issue_server_certificate(ca_key, ca_cert, hosts=["127.0.0.1", "::1", "localhost"])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]


def test_server_certificate_needs_a_host(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]) -> None:
    with pytest.raises(ProvisioningError, match="at least one --host"):
        keys.issue_server_certificate(*ca, hosts=[])


def test_node_key_is_p384_and_round_trips_through_openssh() -> None:
    private, public = keys.create_node_keypair()
    assert isinstance(private.curve, ec.SECP384R1)
    line = keys.public_key_line(public)
    assert line.startswith("ecdsa-sha2-nistp384 AAAA")
    loaded = serialization.load_ssh_private_key(keys.private_key_openssh(private), None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    assert keys.public_key_line(loaded.public_key()) == line
    assert keys.public_key_line(keys.parse_public_key_line(line + " site-1@host")) == line


def test_fingerprint_is_ssh_keygen_style() -> None:
    line = keys.public_key_line(keys.create_node_keypair()[1])
    fingerprint = keys.public_key_fingerprint(line)
    assert fingerprint.startswith("SHA256:") and len(fingerprint) == 7 + 43 and "=" not in fingerprint


@pytest.mark.parametrize("text", ["not a key", "ssh-rsa AAAAB3NzaC1yc2E", ""])
def test_malformed_public_key_is_refused(text: str) -> None:
    with pytest.raises(ProvisioningError, match="OpenSSH public key"):
        keys.parse_public_key_line(text)


def test_other_curve_is_refused() -> None:
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(ProvisioningError, match="expected ECDSA P-384"):
        keys.parse_public_key_line(keys.public_key_line(p256))  # type: ignore[arg-type]


def test_saved_keys_are_0600_and_load_back(tmp_path: Path) -> None:
    private, public = keys.create_node_keypair()
    key_path = keys.save_private_key(private, tmp_path / "node.key", openssh=True)
    pub_path = keys.save_public_key(public, tmp_path / "node.pub")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert keys.load_public_key_line(pub_path) == keys.public_key_line(public)
    assert keys.public_key_line(keys.load_private_key(key_path).public_key()) == keys.public_key_line(public)
    ca_key, ca_cert = keys.create_ca(common_name="x", days=1)
    pem_path = keys.save_private_key(ca_key, tmp_path / "ca.key")
    assert stat.S_IMODE(pem_path.stat().st_mode) == 0o600
    assert keys.load_certificate(keys.save_certificate(ca_cert, tmp_path / "ca.crt")) == ca_cert
    assert not list(tmp_path.glob(".*.tmp"))


def test_refuse_existing_unless_forced(tmp_path: Path) -> None:
    (tmp_path / "ca.key").write_text("old")
    with pytest.raises(ProvisioningError, match="--force"):
        keys.refuse_existing([tmp_path / "ca.key"], force=False)
    keys.refuse_existing([tmp_path / "ca.key"], force=True)


def test_a_folder_given_as_a_key_file_is_a_provisioning_error(tmp_path: Path) -> None:
    with pytest.raises(ProvisioningError, match="is a folder"):
        keys.load_public_key_line(tmp_path)


def test_a_private_dir_under_a_file_is_a_provisioning_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ProvisioningError, match="cannot create folder"):
        keys.ensure_private_dir(tmp_path / "notes.txt" / "keys")

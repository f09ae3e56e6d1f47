"""Keys and certificates for a real deployment: the coordinator's CA, the SuperLink's TLS certificate, and each site's node key.

Everything is made with the ``cryptography`` package (no ``openssl`` shell-out),
on the machine that keeps it: the coordinator makes the CA and the SuperLink
key, each site makes its own node key pair and sends only the public key.

Node keys are what Flower's SuperNode authentication expects (Flower 1.41):
an ECDSA P-384 private key in OpenSSH format for
``flower-supernode --auth-supernode-private-key``, and its public key as an
OpenSSH line (``ecdsa-sha2-nistp384 AAAA...``) for
``flwr supernode register``.

>>> ca_key, ca_cert = create_ca(common_name="FedEye test CA")
>>> key, cert = issue_server_certificate(ca_key, ca_cert, hosts=["127.0.0.1", "localhost"])
>>> node_key, node_pub = create_node_keypair()
>>> public_key_line(node_pub).startswith("ecdsa-sha2-nistp384 ")
True
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedeye._atomic import atomic_write_bytes
from fedeye.errors import ProvisioningError

HOST_NAME = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)  # full-match

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
NODE_CURVE = ec.SECP384R1
NODE_KEY_TYPE = "ecdsa-sha2-nistp384"


# --- pure: make keys and certificates -------------------------------------------------


def create_ca(*, common_name: str, days: int = 3650) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Make a self-signed certificate authority (P-384 key) valid for ``days``."""
    key = ec.generate_private_key(NODE_CURVE())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        _builder(subject=name, issuer=name, public_key=key.public_key(), days=days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def issue_server_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = 825,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Make the SuperLink's TLS key and a certificate signed by the CA, naming ``hosts`` as SANs.

    Raises
    ------
    ProvisioningError
        When ``hosts`` is empty: sites could not verify the server's name.
    """
    if not hosts:
        raise ProvisioningError(
            "no host given for the SuperLink certificate; pass at least one --host (IP or DNS name)"
        )
    key = ec.generate_private_key(NODE_CURVE())
    names = [_general_name(h) for h in hosts]  # validates every host first
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0][:64])])  # the SANs carry the full names
    cert = (
        _builder(subject=subject, issuer=ca_cert.subject, public_key=key.public_key(), days=days)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def create_node_keypair() -> tuple[ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey]:
    """Make a site's SuperNode authentication key pair (ECDSA P-384)."""
    key = ec.generate_private_key(NODE_CURVE())
    return key, key.public_key()


def public_key_line(public_key: ec.EllipticCurvePublicKey) -> str:
    """The OpenSSH public key line (``ecdsa-sha2-nistp384 AAAA...``)."""
    return public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def parse_public_key_line(line: str) -> ec.EllipticCurvePublicKey:
    """Parse and check a site's OpenSSH public key line: it must be ECDSA P-384.

    Raises
    ------
    ProvisioningError
        When the line is not an OpenSSH public key, or not a P-384 EC key.
    """
    try:
        key = serialization.load_ssh_public_key(line.strip().encode())
    except (ValueError, UnsupportedAlgorithm) as err:
        raise ProvisioningError(
            f"not an OpenSSH public key ({err}); expected one line like '{NODE_KEY_TYPE} AAAA...' "
            "as written by 'fedeye site init' (node.pub)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, NODE_CURVE):
        got = key.curve.name if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__
        raise ProvisioningError(
            f"public key is {got}, expected ECDSA P-384 ({NODE_KEY_TYPE}); make it with 'fedeye site init'"
        )
    return key


def public_key_fingerprint(openssh_line: str) -> str:
    """The key's ``SHA256:...`` fingerprint, as ``ssh-keygen -l`` prints it."""
    parts = openssh_line.split()
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (IndexError, ValueError):
        raise ProvisioningError(f"not an OpenSSH public key line: {openssh_line[:40]!r}...") from None
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def _builder(
    *, subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if len(host) > 253 or not HOST_NAME.fullmatch(host):
        raise ProvisioningError(
            f"--host {host!r} is neither an IP address nor a DNS name; use e.g. 10.0.0.5 or fl.example.org "
            "(letters, digits and '-', labels separated by '.')"
        )
    return x509.DNSName(host)


# --- serialization -------------------------------------------------------------------


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted (for the CA and the SuperLink's TLS key)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def private_key_openssh(key: ec.EllipticCurvePrivateKey) -> bytes:
    """OpenSSH private key format, as ``flower-supernode --auth-supernode-private-key`` reads it."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )


def certificate_pem(cert: x509.Certificate) -> bytes:
    """The certificate in PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


# --- I/O: files that never half-exist ------------------------------------------------


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make it 0700; a path that cannot be a folder raises :class:`ProvisioningError`."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o700)
    except OSError as err:
        raise ProvisioningError(
            f"cannot create folder {path}: {err.strerror or err} ({err.filename}); choose another folder"
        ) from err
    return path


def refuse_existing(paths: Sequence[Path], *, force: bool) -> None:
    """Raise if any of ``paths`` exists and ``force`` is False."""
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise ProvisioningError(f"would overwrite {', '.join(existing)}; keep them, or pass --force to replace them")


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> Path:
    """Write ``data`` to ``path`` atomically with permission bits ``mode`` (0600 by default)."""
    return atomic_write_bytes(path, data, mode=mode)


def save_private_key(key: ec.EllipticCurvePrivateKey, path: Path, *, openssh: bool = False) -> Path:
    """Write a private key (PEM, or OpenSSH for node keys) with 0600 permissions."""
    return write_atomic(path, private_key_openssh(key) if openssh else private_key_pem(key), mode=0o600)


def save_certificate(cert: x509.Certificate, path: Path) -> Path:
    """Write a certificate in PEM (0644: it is public)."""
    return write_atomic(path, certificate_pem(cert), mode=0o644)


def save_public_key(public_key: ec.EllipticCurvePublicKey, path: Path) -> Path:
    """Write the OpenSSH public key line (0644: it is public)."""
    return write_atomic(path, (public_key_line(public_key) + "\n").encode(), mode=0o644)


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Read a PEM or OpenSSH EC private key."""
    data = _read(path)
    try:
        key = (
            serialization.load_ssh_private_key(data, None)
            if b"OPENSSH" in data
            else serialization.load_pem_private_key(data, None)
        )
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise ProvisioningError(
            f"{path}: cannot read private key ({err}); expected an unencrypted PEM or OpenSSH EC key"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ProvisioningError(f"{path}: expected an EC private key, got {type(key).__name__}")
    return key


def load_certificate(path: Path) -> x509.Certificate:
    """Read a PEM certificate."""
    try:
        return x509.load_pem_x509_certificate(_read(path))
    except ValueError as err:
        raise ProvisioningError(f"{path}: not a PEM certificate ({err})") from None


def load_public_key_line(path: Path) -> str:
    """Read an OpenSSH public key file, check it is P-384, and return its normalised line."""
    text = _read(path).decode(errors="replace").strip()
    return public_key_line(parse_public_key_line(text))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ProvisioningError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ProvisioningError(f"{path} is a folder; pass the key or certificate file in it") from None
    except OSError as err:
        raise ProvisioningError(f"{path}: cannot read ({err.strerror or err}); check its permissions") from None

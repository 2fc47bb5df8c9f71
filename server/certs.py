"""Self-signed CA and server certificate for TLS trials of a SuperLink (use your own PKI in production).

``ensure_dev_certificates`` never destroys a federation: a folder that already holds the set is kept as it is (every
node holds a copy of its ca.crt), and replacing it takes an explicit ``replace``."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from server.secret_files import write_secret

CA_CERT, SERVER_CERT, SERVER_KEY = "ca.crt", "server.pem", "server.key"
DEFAULT_HOSTS = ("localhost", "127.0.0.1")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedsqueeze"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def generate_dev_certificates(out_dir: Path, hosts: tuple[str, ...] = DEFAULT_HOSTS,
                              days: int = 30) -> dict[str, Path]:
    """Write ca.crt, server.pem and server.key (P-256) valid for ``hosts``; returns their paths.

    The CA key is never written: the CA exists only to sign this one server certificate. server.key is 0600 from
    its creation.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("fedsqueeze dev CA")
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .sign(ca_key, hashes.SHA256()))
    server_key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server_cert = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca_cert.subject)
                   .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=days))
                   .add_extension(x509.SubjectAlternativeName(names), critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .sign(ca_key, hashes.SHA256()))
    paths = certificate_paths(out_dir)
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    write_secret(paths["key"], server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    return paths


def certificate_paths(out_dir: Path) -> dict[str, Path]:
    """Where the CA certificate, the server certificate and the server key live in ``out_dir``."""
    return {"ca": out_dir / CA_CERT, "cert": out_dir / SERVER_CERT, "key": out_dir / SERVER_KEY}


def certificate_hosts(cert_path: Path) -> list[str]:
    """The host names and addresses a certificate is valid for (its subject alternative names)."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(name.value) for name in names]


def ensure_dev_certificates(out_dir: Path, hosts: tuple[str, ...] | None = None, *, replace: bool = False
                            ) -> tuple[dict[str, Path], bool]:
    """The dev CA and server certificate in ``out_dir`` and whether they were written now. A folder holding all
    three files is kept as it is (``hosts``, when given, must be among the certificate's); one holding none gets a
    new set. ValueError, naming what exists, for a folder that is a file, an incomplete set, or other hosts —
    unless ``replace``, which writes a new set (every node's copy of ca.crt then stops matching)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file, not a folder for the certificates")
    paths = certificate_paths(out_dir)
    present = [path.name for path in paths.values() if path.exists()]
    if replace or not present:
        if not hosts and paths["cert"].exists():  # a new set for the hosts the old one served, not localhost
            try:
                hosts = tuple(certificate_hosts(paths["cert"])) or None
            except ValueError:
                hosts = None
        return generate_dev_certificates(out_dir, hosts or DEFAULT_HOSTS), True
    if len(present) < len(paths):
        missing = [path.name for path in paths.values() if not path.exists()]
        raise ValueError(f"{out_dir} holds {', '.join(present)} but not {', '.join(missing)}: an incomplete set is "
                         "never completed (a new server key would not match the CA the nodes hold); move the folder "
                         "aside, or write a new set with --replace")
    try:
        have = certificate_hosts(paths["cert"])
    except ValueError as exc:
        raise ValueError(f"{paths['cert']} is not a PEM certificate ({exc}); move it aside, or write a new set "
                         "with --replace") from exc
    wanted = [host for host in hosts or () if host not in have]
    if wanted:
        raise ValueError(f"{paths['cert']} is valid for {', '.join(have)}, not {', '.join(wanted)}: a new "
                         "certificate means a new CA, and every node's copy of ca.crt stops matching; write it with "
                         "--replace and copy the new ca.crt to every node")
    return paths, False


def certificate_expiry(cert_path: Path) -> datetime.datetime:
    """When the certificate at ``cert_path`` stops being valid (UTC)."""
    return x509.load_pem_x509_certificate(cert_path.read_bytes()).not_valid_after_utc

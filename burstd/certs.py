"""A small PKI for a cluster without its own: ``burstd tls init DIR --host NAME_OR_IP...``.

Writes, with the ``cryptography`` package:

* ``ca.pem``: a self-signed certificate authority (its key is not kept: nothing else is ever
  signed with it, so there is no key to steal);
* ``server.pem`` / ``server-key.pem``: for the controller's port and the workers' peer ports,
  valid for every ``--host`` (DNS names and IP addresses) and for :data:`LOOPBACK` (programs on a
  server's own host may dial it there), for serving and for connecting;
* ``client.pem`` / ``client-key.pem``: a client certificate, for servers that ask for one
  (``--tls-client-ca``, mutual TLS).

Keys are EC P-256 and written with mode 0600; certificates are valid for ``days`` (default 825,
the longest browsers accept for a server certificate).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

FILES = ("ca.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem")
"""What :func:`init` writes into its folder."""

DEFAULT_DAYS = 825

LOOPBACK = ("localhost", "127.0.0.1", "::1")
"""Names the server certificate is valid for besides the given hosts."""


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "burst"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _alt_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), 0o600)  # also when the file existed with another mode
        out.write(data)


def init(folder: Path, hosts: Sequence[str], *, days: int = DEFAULT_DAYS) -> list[Path]:
    """Write the five files into ``folder`` (made if missing); return their paths.

    ``hosts``: the names and addresses clients dial (the server certificate's subject
    alternative names). Raises ValueError for no host, OSError if a file cannot be written.
    """
    if not hosts:
        raise ValueError("name at least one --host (a DNS name or an IP address)")
    names = [_alt_name(host) for host in dict.fromkeys([*hosts, *LOOPBACK])]
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("burst cluster CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
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
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        common_name: str, usages: list[x509.ObjectIdentifier], alt: bool
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if alt:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    # Workers both serve (their peer port) and connect: one certificate for both uses.
    both = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    server, server_key = leaf(hosts[0], both, alt=True)
    client, client_key = leaf("burst client", [ExtendedKeyUsageOID.CLIENT_AUTH], alt=False)

    paths = [folder / name for name in FILES]
    ca_path, server_path, server_key_path, client_path, client_key_path = paths
    for path, cert in ((ca_path, ca), (server_path, server), (client_path, client)):
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key_path, server_key)
    _write_key(client_key_path, client_key)
    return paths

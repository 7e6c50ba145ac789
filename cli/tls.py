"""`burstd tls init`: certificates for a cluster without a PKI of its own (burstd/certs.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import cyclopts
from cyclopts import Parameter

from cli.exitcodes import die

tls_app = cyclopts.App(
    name="tls",
    help="TLS certificates for a cluster without a PKI of its own (docs/security.md).",
    version_flags=[],
)


@tls_app.command
def init(
    folder: Annotated[Path, Parameter(name="DIR")],
    /,
    *,
    host: Annotated[list[str], Parameter(consume_multiple=True, metavar="NAME_OR_IP", negative=())],
    days: int = 825,
    force: Annotated[bool, Parameter(negative=())] = False,
) -> None:
    """Write ca.pem, server.pem, server-key.pem, client.pem and client-key.pem into DIR.

    The server certificate serves the controller's port and every worker's peer port; it is
    valid for each --host (the names and addresses clients and peers dial) and for localhost,
    127.0.0.1 and ::1. Keys are written 0600; the CA's key is not kept, so nothing else can be
    signed with it: run init again (--force) to add a host, and hand out the new files.

    Parameters
    ----------
    folder
        Folder to write into (made if missing).
    host
        A DNS name or an IP address of the controller or of a worker (repeatable, or several
        after one --host).
    days
        How long the certificates are valid.
    force
        Replace the files if DIR has them already.
    """
    from burstd import certs

    existing = [folder / name for name in certs.FILES if (folder / name).exists()]
    if existing and not force:
        die("burstd", f"{existing[0]} exists (--force replaces the whole set)")
    if days < 1:
        die("burstd", "--days: must be at least 1")
    try:
        paths = certs.init(folder, host, days=days)
    except (OSError, ValueError) as error:
        die("burstd", str(error))
    for path in paths:
        print(path)

"""Which TLS each program speaks, read from its configuration section (docs/security.md).

Rules:

1. A server (the controller's port, a worker's peer port) serves TLS, and only TLS, when its
   section sets ``tls_cert`` and ``tls_key`` (both or neither); ``tls_client_ca`` (mutual TLS:
   clients must present a certificate it signed) needs them.
2. A server whose listen address is not a loopback address and that has no TLS refuses to start
   (:class:`TlsSetupError` naming ``tls_cert``; the programs exit 2), unless ``insecure`` is set:
   it then starts, with a warning at every start.
3. A client (``burst``, ``burstd token``, a worker towards the controller and its peers) connects
   over TLS when its section sets ``tls_ca`` and verifies the server's certificate against it;
   ``tls_cert`` and ``tls_key`` are then the certificate it shows a server that asks for one. A
   client certificate without ``tls_ca`` is an error: it would never be sent.
4. A worker with ``tls_ca`` dials its peers over TLS, so its own peer port must serve TLS: with a
   ``peer_listen_addr`` it needs ``tls_cert``.
5. A daemon whose section sets ``tls_cert`` and ``tls_key`` serves its metrics
   (``metrics_listen_addr``) over HTTPS with them, and with ``tls_client_ca`` to scrapers with a
   certificate it signed; without them, over plain HTTP wherever it listens (the metrics are
   counts and timings, never a job's command, output, owner or a token: docs/security.md).

Every error names the key (``controller.tls_cert``) and, for a file that cannot be loaded, the
file.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from burstd.config import (
    CliConfig,
    ControllerConfig,
    WorkerConfig,
    parse_hostport,
    variables,
    with_overrides,
)
from burstd.transport import TransportError

if TYPE_CHECKING:
    import ssl

__all__ = [
    "TlsSetupError",
    "client_context",
    "environment_client_context",
    "loopback",
    "metrics_context",
    "server_context",
    "worker_client",
]


class TlsSetupError(Exception):
    """A TLS setting that cannot work; ``str()`` reads ``<section>.<key>: <message>``."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


def loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) reaches this machine alone: a loopback address, or
    a name all of whose addresses are. A name that does not resolve is not."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(found) and all(
        ipaddress.ip_address(str(info[4][0]).partition("%")[0]).is_loopback for info in found
    )


def _pair(cert: Path | None, key: Path | None, section: str) -> tuple[Path, Path] | None:
    if cert is None and key is None:
        return None
    if cert is None:
        raise TlsSetupError(f"{section}.tls_cert", "tls_key is set: give its certificate too")
    if key is None:
        raise TlsSetupError(f"{section}.tls_key", f"needed with tls_cert ({cert})")
    return cert, key


def _loaded(key: str, make: Callable[[ModuleType], ssl.SSLContext]) -> ssl.SSLContext:
    """The context ``make`` builds with :mod:`burstd.transport.tls`, imported here: a program
    without TLS (most ``burst`` commands) does not import :mod:`ssl`, a fifth of the start-up of
    a ``burst status`` (docs/benchmarks.md)."""
    from burstd.transport import tls

    try:
        return make(tls)
    except TransportError as error:
        raise TlsSetupError(key, str(error)) from None


def server_context(
    config: ControllerConfig | WorkerConfig,
    listen: str,
    section: str,
    warn: Callable[[str], None],
) -> ssl.SSLContext | None:
    """The context of the server ``config`` configures, listening on ``listen``; None for clear
    text (rules 1 and 2; ``warn`` gets the warning of an insecure one). Raises
    :class:`TlsSetupError`."""
    pair = _pair(config.tls_cert, config.tls_key, section)
    if pair is None:
        if config.tls_client_ca is not None:
            raise TlsSetupError(f"{section}.tls_cert", "tls_client_ca needs tls_cert and tls_key")
        host, _ = parse_hostport(listen)
        if loopback(host):
            return None
        if not config.insecure:
            raise TlsSetupError(
                f"{section}.tls_cert",
                f"{listen} is not a loopback address: serving it without TLS would send tokens "
                "and jobs in clear text; give --tls-cert and --tls-key (`burstd tls init` makes "
                "them), or --insecure to serve it in clear text anyway",
            )
        warn(
            f"serving {listen} without TLS (insecure): tokens and jobs cross the network in "
            "clear text"
        )
        return None
    cert, key = pair
    return _loaded(
        f"{section}.tls_cert", lambda tls: tls.server_context(cert, key, config.tls_client_ca)
    )


def metrics_context(config: ControllerConfig | WorkerConfig, section: str) -> ssl.SSLContext | None:
    """The context of the daemon's metrics endpoint (HTTP/1.1), or None for plain HTTP (rule 5).
    Raises :class:`TlsSetupError`."""
    pair = _pair(config.tls_cert, config.tls_key, section)
    if pair is None:
        return None
    cert, key = pair
    return _loaded(
        f"{section}.tls_cert",
        lambda tls: tls.server_context(cert, key, config.tls_client_ca, alpn=tls.HTTP1),
    )


def client_context(config: CliConfig | WorkerConfig, section: str) -> ssl.SSLContext | None:
    """The context of a client ``config`` configures, or None for clear text (rule 3). Raises
    :class:`TlsSetupError`."""
    pair = _pair(config.tls_cert, config.tls_key, section)
    ca = config.tls_ca
    if ca is None:
        if pair is not None:
            raise TlsSetupError(
                f"{section}.tls_ca",
                "a client certificate is set (tls_cert), but TLS is not: give the CA that "
                "signed the server's certificate",
            )
        return None
    cert, key = pair or (None, None)
    return _loaded(f"{section}.tls_ca", lambda tls: tls.client_context(ca, cert, key))


def worker_client(config: WorkerConfig) -> ssl.SSLContext | None:
    """A worker's client context, towards the controller and its peers (rules 3 and 4)."""
    context = client_context(config, "worker")
    if context is not None and config.peer_listen_addr and config.tls_cert is None:
        raise TlsSetupError(
            "worker.tls_cert",
            "peers dial the peer port over TLS (tls_ca is set): give it a certificate and key",
        )
    return context


def environment_client_context(env: Mapping[str, str] = os.environ) -> ssl.SSLContext | None:
    """The client context of a program that takes no flags or file (``burstd.client``): the
    ``cli`` TLS keys from their ``BURST_TLS_*`` variables alone (rule 3), as ``local_token`` reads
    ``BURST_TOKEN``. Raises :class:`TlsSetupError` or ``ConfigError``."""
    given = {
        target.removeprefix("cli."): value
        for var, targets in variables().items()
        if (value := env.get(var, "").strip())
        for target in targets
        if target.startswith("cli.tls_")
    }
    return client_context(with_overrides(CliConfig(), env=env, **given), "cli")

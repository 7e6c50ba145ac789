"""TLS on the transport: certificates from burstd.certs, our channel and grpcio as clients."""

from __future__ import annotations

import contextlib
import functools
import ssl
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from burstd import certs, transport
from burstd.transport import Channel
from burstd.transport.tls import client_context, server_context
from tests.test_transport import HOST, SVC, Calls, Msg, echo, echo_service


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pki")
    certs.init(folder, ["localhost", HOST])
    return folder


@asynccontextmanager
async def tls_server(context: ssl.SSLContext) -> AsyncIterator[int]:
    serve = functools.partial(transport.serve, tls=context)
    async with trio.open_nursery() as nursery:
        yield await nursery.start(serve, HOST, 0, [echo_service(Calls())])
        nursery.cancel_scope.cancel()


def test_tls_init_writes_the_five_files_with_private_keys_0600(pki: Path) -> None:
    assert sorted(p.name for p in pki.iterdir()) == sorted(certs.FILES)
    for name in certs.FILES:
        mode = stat.S_IMODE((pki / name).stat().st_mode)
        assert mode == 0o600 if name.endswith("-key.pem") else mode & 0o077 != 0o077
    with pytest.raises(ValueError, match="--host"):
        certs.init(pki / "none", [])


@pytest.mark.parametrize("multiplex", [False, True], ids=["plain", "mux"])
async def test_calls_over_tls(pki: Path, multiplex: bool) -> None:
    async with tls_server(server_context(pki / "server.pem", pki / "server-key.pem")) as port:
        context = client_context(pki / "ca.pem")
        async with Channel(HOST, port, tls=context, multiplex=multiplex) as channel:
            assert await echo(channel, "secret") == "secret"
        with pytest.raises(transport.Unavailable, match="CERTIFICATE_VERIFY_FAILED"):
            async with Channel(HOST, port, tls=client_context()) as channel:  # system CAs
                pass
        with pytest.raises(transport.Unavailable):  # a plain HTTP/2 client gets nowhere
            async with Channel(HOST, port, connect_timeout=2) as channel:
                await echo(channel, "plain", timeout=2)


async def test_stalled_handshakes_hold_up_no_other_client(pki: Path) -> None:
    """Connections that never finish their handshake (silent, or stopped midway through their
    ClientHello) hold a socket and a sleeping task until the request timeout, no turn that
    others wait for: an established client's calls and a new client's handshake go through
    meanwhile (a regression guard: a limit of handshakes in progress would fail it)."""
    async with tls_server(server_context(pki / "server.pem", pki / "server-key.pem")) as port:
        context = client_context(pki / "ca.pem")
        async with Channel(HOST, port, tls=context, multiplex=True) as established:
            assert await echo(established, "before") == "before"
            stalled = [await trio.open_tcp_stream(HOST, port) for _ in range(100)]
            for sock in stalled[::2]:
                await sock.send_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
            with trio.fail_after(10):
                assert await echo(established, "during") == "during"
                async with Channel(HOST, port, tls=context) as fresh:
                    assert await echo(fresh, "new") == "new"
            for sock in stalled:
                await sock.aclose()


async def test_mutual_tls_refuses_a_client_without_a_certificate(pki: Path) -> None:
    context = server_context(pki / "server.pem", pki / "server-key.pem", pki / "ca.pem")
    async with tls_server(context) as port:
        with pytest.raises(transport.RpcError):
            async with Channel(HOST, port, tls=client_context(pki / "ca.pem")) as channel:
                await echo(channel, "anonymous", timeout=5)
        mine = client_context(pki / "ca.pem", pki / "client.pem", pki / "client-key.pem")
        async with Channel(HOST, port, tls=mine) as channel:
            assert await echo(channel, "known") == "known"


async def test_grpcio_client_with_ssl_channel_credentials(pki: Path) -> None:
    grpc = pytest.importorskip("grpc")

    def call(port: int) -> str:
        credentials = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes())
        with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
            method = channel.unary_unary(
                f"/{SVC}/Echo",
                request_serializer=Msg.SerializeToString,
                response_deserializer=Msg.FromString,
            )
            reply: str = method(Msg(service="grpcio"), timeout=10).service
            return reply

    async with tls_server(server_context(pki / "server.pem", pki / "server-key.pem")) as port:
        assert await trio.to_thread.run_sync(call, port) == "grpcio"


def test_a_missing_or_wrong_file_is_named(pki: Path, tmp_path: Path) -> None:
    with pytest.raises(transport.TransportError, match=r"missing\.pem"):
        server_context(tmp_path / "missing.pem", pki / "server-key.pem")
    with pytest.raises(transport.TransportError, match=r"server\.pem"):
        server_context(pki / "server.pem", pki / "client-key.pem")  # not its key


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> ssl.SSLObject:
    """The client's end of a TLS connection to ``server`` over memory buffers, handshake done
    and what the server sent after it (TLS 1.3 session tickets) read."""
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    ends = [
        client.wrap_bio(client_in, client_out, server_hostname=HOST),
        server.wrap_bio(server_in, server_out, server_side=True),
    ]
    pending = list(ends)
    while pending:
        for end in list(pending):
            with contextlib.suppress(ssl.SSLWantReadError):
                end.do_handshake()
                pending.remove(end)
            server_in.write(client_out.read())
            client_in.write(server_out.read())
    with pytest.raises(ssl.SSLWantReadError):
        ends[0].read(1)
    return ends[0]


def test_servers_issue_no_session_tickets(pki: Path) -> None:
    """Our clients never resume a session; a TLS 1.3 ticket would cost the server CPU at every
    handshake for nothing."""
    server = server_context(pki / "server.pem", pki / "server-key.pem")
    client = handshake(server, client_context(pki / "ca.pem"))
    assert client.version() == "TLSv1.3" and client.selected_alpn_protocol() == "h2"
    assert client.session is not None and not client.session.has_ticket


def test_a_client_given_a_ca_trusts_it_alone(pki: Path) -> None:
    """Not the system's CAs besides: any public CA's certificate for a cluster's host name
    would pass (and loading them all costs every CLI call 30 ms)."""
    context = client_context(pki / "ca.pem")
    assert [ca["subject"] for ca in context.get_ca_certs()] == [
        ((("organizationName", "burst"),), (("commonName", "burst cluster CA"),))
    ]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname

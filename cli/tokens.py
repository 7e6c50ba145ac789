"""`burstd token`: create, list and revoke tokens (docs/security.md).

The commands go through the running controller, with an admin token found as ``burst`` finds
its own (``--token-file``, ``BURST_TOKEN``, ``cli.token_file``, the state directory's
``admin.token``), over the admin RPCs. When nothing listens at the controller's address they work
directly on the state directory instead (locked as a controller locks it), and say so: the
changes then take effect when the controller starts. Exit codes are ``burst``'s
(cli/exitcodes.py).
"""

from __future__ import annotations

import dataclasses
import json
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import cyclopts
from cyclopts import Parameter

from cli.exitcodes import die

if TYPE_CHECKING:
    from burstd.client import Client
    from burstd.config import Config
    from burstd.controller.tokens import Tokens
    from proto.burst.v1 import token_pb2

T = TypeVar("T")

token_app = cyclopts.App(
    name="token",
    help=(
        "Create, list and revoke tokens: through the running controller (an admin token), or on "
        "its state directory when no controller runs."
    ),
    version_flags=[],
)


@Parameter(name="*")
@dataclasses.dataclass
class Where:
    """Which controller, and the admin token to show it."""

    controller: Annotated[str | None, Parameter(metavar="HOST:PORT")] = None
    """Controller address (default: BURST_CONTROLLER, else cli.controller_addr, else
    127.0.0.1:50051)."""
    config: Annotated[Path | None, Parameter(metavar="FILE")] = None
    """Configuration file (default: ./burst.toml or ./burst.config.json, if present)."""
    token_file: Annotated[Path | None, Parameter(metavar="FILE")] = None
    """File holding an admin token (default: BURST_TOKEN, else cli.token_file, else admin.token
    in the state directory)."""
    state_dir: Annotated[Path | None, Parameter(metavar="DIR")] = None
    """The controller's state directory (default: BURST_STATE_DIR, else controller.state_dir,
    else ~/.local/state/burst): its admin.token, and its store when no controller runs."""
    tls_ca: Annotated[Path | None, Parameter(metavar="FILE")] = None
    """Connect over TLS, trusting this CA (default: BURST_TLS_CA, else cli.tls_ca), as `burst`."""
    tls_cert: Annotated[Path | None, Parameter(metavar="FILE")] = None
    """Client certificate for mutual TLS (default: BURST_TLS_CERT, else cli.tls_cert)."""
    tls_key: Annotated[Path | None, Parameter(metavar="FILE")] = None
    """The private key of --tls-cert (default: BURST_TLS_KEY, else cli.tls_key)."""


def _fail(message: str) -> NoReturn:
    die("burstd", message)


def _time(seconds: float) -> str:
    if not seconds:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _describe(info: token_pb2.TokenInfo) -> str:
    bound = f", workers {', '.join(info.worker_ids)}" if info.worker_ids else ""
    expires = f", expires {_time(info.expires_at)}" if info.expires_at else ", never expires"
    return f"token {info.token_id}: user {info.user}, role {info.role}{expires}{bound}"


def _run(
    where: Where,
    online: Callable[[Client], Awaitable[T]],
    offline: Callable[[Tokens], T],
) -> T:
    """``online`` with a client of the running controller, else ``offline`` on its store."""
    from burstd.config import ConfigError, load_config, parse_hostport, with_overrides

    try:
        loaded = load_config(where.config)
        addr = with_overrides(loaded.cli, controller_addr=where.controller).controller_addr
    except ConfigError as error:
        _fail(str(error))
    state_dir = where.state_dir or loaded.controller.state_dir
    host, port = parse_hostport(addr)
    try:
        with socket.create_connection((host, port), timeout=5.0):
            pass
    except ConnectionRefusedError:
        return _offline(loaded, state_dir, addr, offline)
    except OSError as error:
        _fail(f"cannot reach controller at {addr}: {error.strerror or error}")
    return _online(loaded, where, state_dir, addr, online)


def _online(
    loaded: Config,
    where: Where,
    state_dir: Path,
    addr: str,
    online: Callable[[Client], Awaitable[T]],
) -> T:
    import trio

    from burstd import credentials, tlsconfig, transport
    from burstd.client import Client
    from burstd.config import ConfigError, with_overrides
    from cli.exitcodes import for_status

    try:
        token = credentials.find_token(
            token_file=where.token_file,
            config_token_file=loaded.cli.token_file,
            state_dir=state_dir,
            default_name=credentials.ADMIN_TOKEN,
        )
        tls_settings = with_overrides(
            loaded.cli, tls_ca=where.tls_ca, tls_cert=where.tls_cert, tls_key=where.tls_key
        )
        tls = tlsconfig.client_context(tls_settings, "cli")
    except (credentials.TokenNotFound, ConfigError, tlsconfig.TlsSetupError) as error:
        _fail(str(error))

    async def session() -> T:
        async with Client.connect(addr, token=token, tls=tls) as client:
            return await online(client)

    try:
        return trio.run(session)
    except transport.RpcError as error:
        die("burstd", f"{error.code.name}: {error.message}", for_status(error.code.name))


def _offline(loaded: Config, state_dir: Path, addr: str, offline: Callable[[Tokens], T]) -> T:
    from burstd.controller.store import Store, StoreError
    from burstd.controller.tokens import TokenError, Tokens

    if loaded.controller.store == "memory":
        _fail(
            f'no controller at {addr}, and a controller with store = "memory" keeps its tokens '
            "in memory: start it, then run this again (--controller HOST:PORT)"
        )
    print(
        f"burstd: no controller at {addr}: changing the state directory {state_dir} directly",
        file=sys.stderr,
    )
    try:
        store = Store(state_dir)
    except StoreError as error:
        _fail(f"{error} (its controller listens elsewhere: give --controller HOST:PORT)")
    try:
        tokens = Tokens(store.path)
        try:
            return offline(tokens)
        except TokenError as error:
            _fail(str(error))
        finally:
            tokens.close()
    finally:
        store.close()


@token_app.command
def create(
    *,
    role: Annotated[str, Parameter(help="client, worker or admin.")],
    user: Annotated[str, Parameter(help="The user the token acts for (its jobs' owner).")],
    expires: Annotated[
        str | None, Parameter(help="Lifetime: 90s, 15m, 12h, 30d, 2w (default: never).")
    ] = None,
    worker_id: Annotated[
        Sequence[str],
        Parameter(
            help="A worker id a worker token may act as (repeatable; default: any).",
            negative=(),
        ),
    ] = (),
    where: Where | None = None,
) -> None:
    """Make a token; print what it grants, then the token itself on the last line.

    The token is shown this once: the controller keeps only its SHA-256.
    """
    from burstd.controller.service import token_info
    from burstd.controller.tokens import TokenError, parse_duration

    try:
        expires_in = parse_duration(expires) if expires is not None else 0.0
    except TokenError as error:
        _fail(str(error))

    async def online(client: Client) -> tuple[token_pb2.TokenInfo, str]:
        return await client.create_token(
            user, role, expires_in=expires_in, worker_ids=list(worker_id)
        )

    def offline(tokens: Tokens) -> tuple[token_pb2.TokenInfo, str]:
        token, secret = tokens.create(user, role, expires_in=expires_in, worker_ids=worker_id)
        return token_info(token), secret

    info, secret = _run(where or Where(), online, offline)
    print(_describe(info))
    print(secret)


@token_app.command(name="list")
def list_tokens(
    *,
    json_: Annotated[bool, Parameter(name="--json", negative=())] = False,
    where: Where | None = None,
) -> None:
    """List every token (never the tokens themselves): id, user, role, dates, bound workers."""
    from burstd.controller.service import token_info

    async def online(client: Client) -> list[token_pb2.TokenInfo]:
        return await client.tokens()

    def offline(tokens: Tokens) -> list[token_pb2.TokenInfo]:
        return [token_info(token) for token in tokens.all()]

    infos = _run(where or Where(), online, offline)
    if json_:
        for info in infos:
            times = {
                key: _time(seconds) if (seconds := getattr(info, key)) else None
                for key in ("created_at", "expires_at", "revoked_at")
            }
            print(
                json.dumps(
                    {
                        "token_id": info.token_id,
                        "user": info.user,
                        "role": info.role,
                        **times,
                        "worker_ids": list(info.worker_ids),
                    }
                )
            )
        return
    rows = [("ID", "USER", "ROLE", "CREATED", "EXPIRES", "REVOKED", "WORKERS")]
    rows += [
        (
            info.token_id,
            info.user,
            info.role,
            _time(info.created_at),
            _time(info.expires_at),
            _time(info.revoked_at),
            ",".join(info.worker_ids) or "-",
        )
        for info in infos
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]))


@token_app.command
def revoke(token_id: str, /, *, where: Where | None = None) -> None:
    """Revoke a token (see `burstd token list` for ids): refused from its next call on."""
    from burstd.controller.service import token_info

    async def online(client: Client) -> token_pb2.TokenInfo:
        return await client.revoke_token(token_id)

    def offline(tokens: Tokens) -> token_pb2.TokenInfo:
        return token_info(tokens.revoke(token_id))

    info = _run(where or Where(), online, offline)
    print(f"revoked {_describe(info)}")

"""Token files, private files, where a program finds the token it sends, and how it sends it.

A controller's first start writes ``admin.token`` and ``worker.token`` into its state directory
(see ``burstd.controller.tokens``); on the same machine the programs find them there, so a local
cluster needs no set-up. The order, first found wins (:func:`find_token`):

1. ``--token-file FILE`` (a flag of ``burst``, ``burstd worker``, ``burstd token``);
2. the variable ``BURST_TOKEN`` (the token itself);
3. the configuration key ``token_file`` (``[cli]`` for ``burst`` and ``burstd token``,
   ``[worker]`` for workers);
4. the state directory (``--state-dir``, ``BURST_STATE_DIR``, the configuration's
   ``controller.state_dir``, or the default): ``admin.token`` for ``burst`` and ``burstd token``
   (whoever runs the cluster owns it), ``worker.token`` for workers.

State directories are made 0700 and the files in them 0600 (:func:`private_dir`,
:func:`private_file`): on a shared machine only the user running the controller reads them; any
other user needs a token of their own (``burstd token create``).

A call carries its token as gRPC metadata ``authorization: Bearer <token>`` (:func:`bearer`),
which ``burstd.auth`` checks on the server. Standard library only: a client imports this module
and not the server's rules.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "ADMIN_TOKEN",
    "ENV_TOKEN",
    "METADATA_KEY",
    "SCHEME",
    "WORKER_TOKEN",
    "TokenNotFound",
    "bearer",
    "find_token",
    "found_token",
    "local_token",
    "private_dir",
    "private_file",
    "read_token",
    "write_token",
]

ADMIN_TOKEN = "admin.token"
WORKER_TOKEN = "worker.token"
ENV_TOKEN = "BURST_TOKEN"
METADATA_KEY = "authorization"
SCHEME = "Bearer "


def bearer(secret: str) -> dict[str, str]:
    """The metadata that carries a token."""
    return {METADATA_KEY: SCHEME + secret}


class TokenNotFound(Exception):
    """No token was given and none could be read: the message says where it looked."""


def private_dir(path: Path) -> None:
    """Make ``path`` (and its parents) if missing; the directory itself is 0700 (tightened if it
    was looser: it is burst's own)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        path.chmod(0o700)


def private_file(path: Path) -> None:
    """Create ``path`` if missing, readable and writable by its owner alone (0600)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    if stat.S_IMODE(path.stat().st_mode) != 0o600:
        path.chmod(0o600)


def write_token(path: Path, secret: str) -> None:
    """Write a token file (0600) whole: a reader never sees half a token."""
    partial = path.with_name(f".{path.name}.new")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, f"{secret}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, path)


def read_token(path: Path) -> str:
    """The token in a file (surrounding white space ignored); OSError if unreadable, ValueError
    if empty."""
    secret = path.read_text(encoding="utf-8").strip()
    if not secret:
        raise ValueError(f"{path}: empty token file")
    return secret


def find_token(
    *,
    token_file: Path | None,
    config_token_file: Path | None,
    state_dir: Path,
    default_name: str,
    env: Mapping[str, str] = os.environ,
) -> str:
    """The token a program sends, in the order of the module's docstring. Raises
    :class:`TokenNotFound` naming the file it could not read."""
    return found_token(
        token_file=token_file,
        config_token_file=config_token_file,
        state_dir=state_dir,
        default_name=default_name,
        env=env,
    )[0]


def found_token(
    *,
    token_file: Path | None,
    config_token_file: Path | None,
    state_dir: Path,
    default_name: str,
    env: Mapping[str, str] = os.environ,
) -> tuple[str, str]:
    """:func:`find_token`'s token, and where it came from in words (``--token-file PATH``,
    ``BURST_TOKEN``, ``token_file PATH``, ``PATH``), for an error about the token itself."""
    if token_file is not None:
        return _read(token_file, "--token-file"), f"--token-file {token_file}"
    from_env = env.get(ENV_TOKEN, "").strip()
    if from_env:
        return from_env, ENV_TOKEN
    if config_token_file is not None:
        return _read(config_token_file, "token_file"), f"token_file {config_token_file}"
    path = state_dir / default_name
    return _read(
        path, f"no --token-file, {ENV_TOKEN} or token_file given, and the state directory's"
    ), str(path)


def local_token(env: Mapping[str, str] = os.environ) -> str:
    """The token of a program that takes no flags or file (``burstd.client``): ``BURST_TOKEN``,
    else the ``admin.token`` of ``BURST_STATE_DIR`` or the default state directory."""
    from burstd.config import default_state_dir

    state_dir = env.get("BURST_STATE_DIR", "").strip()
    return find_token(
        token_file=None,
        config_token_file=None,
        state_dir=Path(state_dir).expanduser() if state_dir else default_state_dir(env),
        default_name=ADMIN_TOKEN,
        env=env,
    )


def _read(path: Path, what: str) -> str:
    try:
        return read_token(path)
    except OSError as error:
        raise TokenNotFound(
            f"{what} {path}: cannot read ({error.strerror or error}); give a token with "
            f"--token-file or {ENV_TOKEN} (`burstd token create` makes one)"
        ) from None
    except ValueError as error:
        raise TokenNotFound(str(error)) from None

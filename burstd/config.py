"""The typed configuration model shared by every burst program.

One file configures the controller, the workers and the CLI. It is TOML (``burst.toml``, the
preferred form) or the Rust prototype's JSON layout (``burst.config.json``); the format is chosen by
the file suffix (``.json`` is JSON, anything else TOML). Both load into the same frozen dataclasses.

Each key is declared once, as a field of its section's dataclass made by :func:`key`: its check,
default, documentation and ``BURST_*`` variable sit on that one line, and loading, variables,
flags (:func:`with_overrides`) and ``burst.example.toml`` (made by :func:`example_file`; run
``python -m burstd.config`` after a change) all follow from it. Adding a key is adding that line.

Precedence, lowest first: built-in defaults, the file, ``BURST_*`` environment variables, command
line flags. The loader applies the first three; CLI code applies flags afterwards with
:func:`with_overrides`, which validates like the loader (``dataclasses.replace`` would not, and it
would not re-derive ``local_queue_capacity`` after a change of ``slots``).

Layout (TOML; the JSON file has the same keys and nesting)::

    [controller]   ControllerConfig
    [worker]       WorkerConfig: this host's worker, and the base of every [[workers]] entry
    [[workers]]    WorkerConfig, one per worker of the cluster (also the peer list for stealing)
    [cli]          CliConfig

A ``[[workers]]`` entry takes every key it does not set from ``[worker]`` (except ``worker_id``).
Every key is optional. Unknown keys, wrong types and out-of-range values are errors
(:class:`ConfigError` names the file and the key); the prototype ignored unknown keys silently.
Keys of the prototype that burst no longer has (:data:`RETIRED`) are ignored with a warning
naming them (:class:`ConfigWarning`), so its tuned configurations keep loading.

Addresses are ``host:port``, ``[ipv6]:port`` or the prototype's ``http://host:port``; the model
stores them normalised to ``host:port`` (``[ipv6]:port`` for IPv6), without a scheme. Listening
addresses (``controller.bind_addr``, ``peer_listen_addr``) may use port 0 (the OS picks one).
Relative paths are relative to the working directory of the process, not to the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import math
import os
import re
import socket
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from burstd import resources
from burstd.host import default_cpus
from burstd.limits import ConnectionLimits
from burstd.policies.quotas import Quota, Quotas
from burstd.policies.routers import ROUTERS as ROUTER_REGISTRY

__all__ = [
    "BOOL",
    "DEFAULT_ADDR",
    "OPTIONAL_PATH",
    "PATH",
    "RENAMED",
    "RETIRED",
    "ROUTERS",
    "SECTIONS",
    "STORES",
    "Check",
    "CliConfig",
    "Config",
    "ConfigError",
    "ConfigWarning",
    "ControllerConfig",
    "Key",
    "QuotasConfig",
    "WorkerConfig",
    "address",
    "choice",
    "default_state_dir",
    "default_worker_id",
    "example_file",
    "format_hostport",
    "integer",
    "key",
    "keys",
    "load_config",
    "number",
    "parse_hostport",
    "string",
    "variables",
    "with_overrides",
    "worker_for",
]

# The router registry is the one list of names (policies are stdlib-only, so config may import it).
ROUTERS: tuple[str, ...] = tuple(ROUTER_REGISTRY)
"""Router names accepted when the caller passes no registry of its own."""

STORES: tuple[str, ...] = ("sqlite", "memory")
"""Controller state stores: ``sqlite`` (durable, under ``state_dir``) or ``memory``."""

DEFAULT_ADDR = "127.0.0.1:50051"

SEARCH_NAMES: tuple[str, ...] = ("burst.toml", "burst.config.json")
"""Files :func:`load_config` looks for in the working directory when given no path, in order."""

ENVIRONMENT = "environment"
"""The ``file`` of a :class:`ConfigError` caused by a ``BURST_*`` variable."""

COMMAND_LINE = "command line"
"""The ``file`` of a :class:`ConfigError` raised by :func:`with_overrides`."""


class ConfigError(Exception):
    """A configuration problem, naming where it is.

    ``str()`` reads ``<file>: <key>: <message>``, e.g.
    ``burst.toml: controller.router: unknown router 'fifo' (valid: biased, power2, roundrobin)``.
    ``file`` is the path as given, ``"environment"`` or ``"command line"``; ``key`` is a dotted
    path (``workers[1].slots``, 0-based index), a variable name (``BURST_SLOTS``) or None for errors
    of the whole file; ``line``/``column`` are set for syntax errors. Programs exit with status 2.
    """

    def __init__(
        self,
        file: str,
        key: str | None,
        message: str,
        *,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.file = file
        self.key = key
        self.message = message
        self.line = line
        self.column = column
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f": line {self.line}"
            if self.column is not None:
                where += f", column {self.column}"
        if self.key:
            where += f": {self.key}"
        return f"{where}: {self.message}"


# Modules that only an unusual case needs (a TOML file, an unknown key, the example file) are
# imported there: every `burst` command loads this module.

# --------------------------------------------------------------------------------------------------
# addresses


_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?")


def parse_hostport(addr: str) -> tuple[str, int]:
    """Split ``host:port``, ``http://host:port`` or ``[ipv6]:port`` into host and port.

    The host is a hostname, an IPv4 address or an IPv6 address (brackets removed). The port may be
    0 (meaningful for listening only). Raises ValueError naming the value.
    """
    text = addr.strip()
    if "://" in text:
        scheme, _, text = text.partition("://")
        if scheme.lower() != "http":
            raise ValueError(
                f"invalid address {addr!r}: unsupported scheme {scheme!r} (use host:port)"
            )
        text = text.removesuffix("/")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"invalid address {addr!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid address {addr!r}: {host!r} is not an IPv6 address") from None
        if not rest.startswith(":"):
            raise ValueError(f"invalid address {addr!r}: expected [ipv6]:port")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"invalid address {addr!r}: expected host:port")
        if ":" in host:
            raise ValueError(
                f"invalid address {addr!r}: put an IPv6 address in brackets, [::1]:port"
            )
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(f"invalid address {addr!r}: bad host {host!r}")
    if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"invalid address {addr!r}: port must be a number 0-65535")
    return host, int(port_text)


def format_hostport(host: str, port: int) -> str:
    """The inverse of :func:`parse_hostport`: ``host:port``, or ``[host]:port`` for IPv6."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --------------------------------------------------------------------------------------------------
# defaults


def default_state_dir(env: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_STATE_HOME/burst`` if that variable holds an absolute path, else
    ``~/.local/state/burst`` (``$HOME`` from ``env``)."""
    xdg = env.get("XDG_STATE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "burst"
    return _home(env) / ".local" / "state" / "burst"


def default_worker_id() -> str:
    """The worker id used when neither flag, variable nor file sets one: the host name.

    It is stable across restarts (a restarted worker is recognised as the same worker) and unique
    per host. A second worker on the same host must be given its own id (``--id``,
    ``BURST_WORKER_ID`` or ``worker_id``); the controller refuses a duplicate live id.
    """
    return socket.gethostname().strip() or "worker"


def _home(env: Mapping[str, str]) -> Path:
    home = env.get("HOME", "")
    return Path(home) if home else Path.home()


# --------------------------------------------------------------------------------------------------
# kinds of value: how a key's value is checked


class _Bad(Exception):
    """A value is wrong; the caller completes the message with file and key."""


def _show(value: object) -> str:
    """A value as it would be written in the file: strings in double quotes, null, true/false."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class _Ctx:
    routers: tuple[str, ...]
    env: Mapping[str, str]


@dataclass(frozen=True)
class Check:
    """How a key's value is checked and converted; ``number`` says how to read it from text
    (a ``BURST_*`` variable or a flag given as a string)."""

    check: Callable[[object, _Ctx], object]
    number: type[int] | type[float] | None = None
    hint: str = ""
    """What values are accepted, when the key's documentation should add it."""

    def convert(self, value: object, ctx: _Ctx, *, text: bool = False) -> object:
        """The checked value; with ``text`` a string is first read as a number if one is wanted."""
        if text and self.number is not None and isinstance(value, str):
            with contextlib.suppress(ValueError):  # else check() reports the original string
                value = self.number(value.strip())
        return self.check(value, ctx)


def integer(minimum: int) -> Check:
    """An integer (not a bool) of at least ``minimum``."""

    def check(value: object, ctx: _Ctx) -> object:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise _Bad(f"expected an integer >= {minimum}, got {_show(value)}")
        return value

    return Check(check, int, f"At least {minimum}.")


def number(minimum: float) -> Check:
    """A finite number (an integer is taken) of at least ``minimum``, as a float."""

    def check(value: object, ctx: _Ctx) -> object:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < minimum
        ):
            raise _Bad(f"expected a number >= {minimum:g}, got {_show(value)}")
        return float(value)

    return Check(check, float, f"At least {minimum:g}.")


def _check_bool(value: object, ctx: _Ctx) -> object:
    if not isinstance(value, bool):
        raise _Bad(f"expected true or false, got {_show(value)}")
    return value


BOOL = Check(_check_bool)
"""``true`` or ``false``."""


def string(*, empty: bool) -> Check:
    """A string; ``empty`` says whether "" is allowed."""

    def check(value: object, ctx: _Ctx) -> object:
        if not isinstance(value, str) or (not empty and not value):
            what = "a string" if empty else "a non-empty string"
            raise _Bad(f"expected {what}, got {_show(value)}")
        return value

    return Check(check)


def address(*, listen: bool, optional: bool = False) -> Check:
    """An address (see :func:`parse_hostport`), stored normalised; port 0 only for ``listen``;
    ``optional`` allows null (unset)."""

    def check(value: object, ctx: _Ctx) -> object:
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise _Bad(f"expected an address host:port, got {_show(value)}")
        try:
            host, port = parse_hostport(value)
        except ValueError as e:
            raise _Bad(str(e)) from None
        if port == 0 and not listen:
            raise _Bad(f"invalid address {value!r}: port 0 is only valid for listening")
        return format_hostport(host, port)

    return Check(check)


def _check_path(value: object, ctx: _Ctx) -> object:
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise _Bad(f"expected a non-empty path, got {_show(value)}")
    if value == "~" or value.startswith("~/"):
        return _home(ctx.env) / value[2:]
    return Path(value)


PATH = Check(_check_path)
"""A non-empty path; a leading ``~/`` is the home directory."""

OPTIONAL_PATH = Check(lambda value, ctx: None if value is None else _check_path(value, ctx))
"""A path as :data:`PATH`, or null (unset)."""


def _check_size(value: object, ctx: _Ctx) -> object:
    if value == "":
        return value
    try:
        resources.parse_size(value if isinstance(value, str) else str(value))
    except ValueError:
        raise _Bad(f'expected a size such as 64G, or "", got {_show(value)}') from None
    return str(value)


SIZE = Check(_check_size)
"""A size (``64G``, ``512M``, bytes), as text; "" for the default."""


def _check_gpus(value: object, ctx: _Ctx) -> object:
    if value == "":
        return value
    try:
        resources.gpu_list(value if isinstance(value, str) else str(value))
    except ValueError as error:
        raise _Bad(str(error)) from None
    return str(value)


def _check_named(value: object, ctx: _Ctx) -> object:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise _Bad(f'expected a list of "NAME=AMOUNT" strings, got {_show(value)}')
    try:
        resources.parse_named(value)
    except ValueError as error:
        raise _Bad(str(error)) from None
    return tuple(value)


def choice(what: str, names: Callable[[_Ctx], Collection[str]]) -> Check:
    """One of ``names(ctx)``; the error lists them, calling the value a ``what``."""

    def check(value: object, ctx: _Ctx) -> object:
        valid = names(ctx)
        if not isinstance(value, str) or value not in valid:
            shown = repr(value) if isinstance(value, str) else _show(value)
            raise _Bad(f"unknown {what} {shown} (valid: {', '.join(sorted(valid))})")
        return value

    return Check(check)


# --------------------------------------------------------------------------------------------------
# keys


_KEY = "burst.key"
"""The metadata entry of a dataclass field that is a configuration key."""


@dataclass(frozen=True)
class Key:
    """What a section's field is as a configuration key: its check, its documentation (one
    paragraph, for ``burst.example.toml``), the ``BURST_*`` variables that set it, and, for a key
    whose default depends on the machine or is unset, a value the example shows commented out."""

    check: Check
    doc: str
    env: tuple[str, ...] = ()
    example: object = None


def key(
    check: Check,
    doc: str,
    *,
    default: object = dataclasses.MISSING,
    factory: Callable[[], object] | None = None,
    env: str | tuple[str, ...] = (),
    example: object = None,
) -> Any:
    """Declare a configuration key: a dataclass field with a ``default`` (or a ``factory`` for
    one that depends on the machine) and its :class:`Key`. Adding a key to a section is one
    ``key()`` line: loading, checks, variables, flags and the example file follow from it."""
    meta = {_KEY: Key(check, doc, (env,) if isinstance(env, str) else env, example)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def keys(section: type[Any]) -> dict[str, Key]:
    """The keys of a section class, in declaration order."""
    return {f.name: f.metadata[_KEY] for f in dataclasses.fields(section) if _KEY in f.metadata}


# --------------------------------------------------------------------------------------------------
# the sections: every key, declared once


_LIMITS = ConnectionLimits()


def _tls_key(example: str) -> Any:
    """``tls_key``, declared alike in every section that has a ``tls_cert``."""
    return key(
        OPTIONAL_PATH,
        "The private key of tls_cert (PEM).",
        default=None,
        env="BURST_TLS_KEY",
        example=example,
    )


@dataclass(frozen=True)
class ControllerConfig:
    """``[controller]``: the controller daemon."""

    bind_addr: str = key(
        address(listen=True),
        "gRPC listen address. Port 0 picks a free port.",
        default=DEFAULT_ADDR,
        env="BURST_LISTEN",
    )
    router: str = key(
        choice("router", lambda ctx: ctx.routers),
        f"Placement policy: {', '.join(ROUTERS)}.",
        default="roundrobin",
        env="BURST_ROUTER",
    )
    submission_buffer_capacity: int = key(
        integer(1),
        "Max jobs accepted but not yet leased (queued or waiting); beyond it SubmitJobs fails"
        " with RESOURCE_EXHAUSTED.",
        default=1_000_000,
    )
    state_dir: Path = key(
        PATH,
        "Where the durable store lives. Default: $XDG_STATE_HOME/burst, else ~/.local/state/burst.",
        factory=default_state_dir,
        env="BURST_STATE_DIR",
        example="~/.local/state/burst",
    )
    store: str = key(
        choice("store", lambda ctx: STORES),
        '"sqlite" (durable, in state_dir) or "memory" (everything lost on restart).',
        default="sqlite",
    )
    lease_ttl_ms: int = key(
        integer(100),
        "A worker silent for this long is declared dead and its jobs are queued again, in ms.",
        default=10_000,
    )
    heartbeat_interval_ms: int = key(
        integer(10),
        "How often workers send a heartbeat, in ms; must be less than lease_ttl_ms.",
        default=1_000,
    )
    heartbeat_budget: int = key(
        integer(1),
        "Heartbeats per second from all workers together. With more workers than this times the "
        "interval (in seconds), the interval and the lease TTL both stretch in proportion, so "
        "idle workers cost the controller a bounded share of its CPU.",
        default=100,
    )
    crash_limit: int = key(
        integer(1),
        "Lost leases after which a job is failed instead of queued again.",
        default=5,
    )
    max_batch: int = key(
        integer(1),
        "Max job specs in one SubmitJobs call or job array.",
        default=1_000_000,
    )
    max_spec_bytes: int = key(
        integer(1),
        "Max encoded size of one job spec, in bytes.",
        default=65_536,
    )
    fixed_cluster: bool = key(
        BOOL,
        "The workers registered are all the cluster has: a job asking for more CPUs, memory, "
        "GPUs or named resources than any of them has is refused at submission. False: it "
        "stays queued, `burst status` saying why, until a worker that can hold it registers.",
        default=False,
    )
    retention_s: float = key(
        number(0),
        "How long finished jobs are kept, in seconds.",
        default=86_400.0,
    )
    events_max: int = key(
        integer(0),
        "Events kept in the stored event log (burst events), the oldest deleted beyond; 0 turns"
        " the log off. Needs the durable store.",
        default=100_000,
    )
    metrics_listen_addr: str | None = key(
        address(listen=True, optional=True),
        "If set, serve Prometheus metrics over HTTP here (docs/operations.md). Unset by default.",
        default=None,
        example="127.0.0.1:9464",
    )
    max_streams_per_connection: int = key(
        integer(1),
        "Calls open at once on one client connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS; "
        "calls multiplexed over one stream count as one).",
        default=_LIMITS.max_streams_per_connection,
    )
    max_connections_per_peer: int = key(
        integer(1),
        "Connections open at once from one IP address; more are closed when accepted.",
        default=_LIMITS.max_connections_per_peer,
    )
    max_pending_requests_per_peer: int = key(
        integer(1),
        "Calls of one IP address whose request has not arrived in full; a connection that opens "
        "more is closed.",
        default=_LIMITS.max_pending_requests_per_peer,
    )
    request_timeout_s: float = key(
        number(0.001),
        "Seconds a call's request may take to arrive after its headers (then DEADLINE_EXCEEDED).",
        default=_LIMITS.request_timeout_s,
    )
    idle_timeout_s: float = key(
        number(0.001),
        "Seconds after which a client connection with no call open is closed.",
        default=_LIMITS.idle_timeout_s,
    )
    quotas: Quotas = field(default_factory=Quotas)
    """The per-user limits: the ``[quotas]`` section (:class:`QuotasConfig`)."""

    tls_cert: Path | None = key(
        OPTIONAL_PATH,
        "Certificate (PEM, with any intermediates) the controller's port presents: with tls_key, "
        "it serves gRPC over TLS only (HTTP/2, ALPN h2). `burstd tls init` makes one. Unset: no "
        "TLS, which a listen address off loopback refuses unless insecure is set.",
        default=None,
        env="BURST_TLS_CERT",
        example="/etc/burst/tls/server.pem",
    )
    tls_key: Path | None = _tls_key("/etc/burst/tls/server-key.pem")
    tls_client_ca: Path | None = key(
        OPTIONAL_PATH,
        "Mutual TLS: if set, only clients and workers presenting a certificate signed by this CA "
        "(PEM) are served. Needs tls_cert.",
        default=None,
        env="BURST_TLS_CLIENT_CA",
        example="/etc/burst/tls/ca.pem",
    )
    insecure: bool = key(
        BOOL,
        "Listen on an address off loopback without TLS (tokens and jobs then cross the network "
        "in clear text; logged as a warning at every start). Otherwise that refuses to start.",
        default=False,
    )

    @property
    def connection_limits(self) -> ConnectionLimits:
        """The limits the controller holds each client to."""
        return ConnectionLimits(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(ConnectionLimits)}
        )


def _check_controller(values: Mapping[str, object], prefix: str) -> tuple[str, str] | None:
    """The rules between keys of ``[controller]``; returns (key, message) of the first broken."""
    ttl = values.get("lease_ttl_ms", ControllerConfig.lease_ttl_ms)
    hb = values.get("heartbeat_interval_ms", ControllerConfig.heartbeat_interval_ms)
    assert isinstance(ttl, int) and isinstance(hb, int)
    if hb >= ttl:
        return (
            f"{prefix}heartbeat_interval_ms",
            f"must be less than {prefix}lease_ttl_ms ({ttl}), got {hb}",
        )
    return None


@dataclass(frozen=True)
class WorkerConfig:
    """A worker: ``[worker]`` (this host's defaults) or one ``[[workers]]`` entry.

    ``BURST_*`` variables of worker keys set every entry, except ``BURST_WORKER_ID``, which names
    this process's worker (``[worker]`` only)."""

    worker_id: str = key(
        string(empty=True),
        "Identity (also --id). Empty: the host name. A second worker on the same host needs its "
        "own id.",
        default="",
        env="BURST_WORKER_ID",
    )
    controller_addr: str = key(
        address(listen=False),
        "Controller address.",
        default=DEFAULT_ADDR,
        env="BURST_CONTROLLER",
    )
    slots: int = key(
        integer(1),
        "CPUs jobs run on (--cpus, or --slots): a job takes one unless it asks for more. "
        "Default: the CPUs of the worker's affinity mask, within its cgroup's CPU quota.",
        factory=default_cpus,
        env="BURST_SLOTS",
        example=4,
    )
    mem: str = key(
        SIZE,
        'Memory jobs may claim (--mem), such as 64G; "": the physical memory, within the '
        "cgroup's memory.max. A job's --mem is enforced (docs/architecture.md).",
        default="",
        example="64G",
    )
    gpus: str = key(
        Check(_check_gpus),
        "GPUs (--gpus): a count (ids 0 to N-1) or a list of ids with a comma (0,2 or 3,); "
        '"": those CUDA_VISIBLE_DEVICES names, else those `nvidia-smi -L` lists, else none.',
        default="",
        example="0,1",
    )
    resources: tuple[str, ...] = key(
        Check(_check_named),
        "Named resources jobs may claim (--resource), as NAME=AMOUNT: a count or a size.",
        default=(),
        example=["scratch=100G", "licence=2"],
    )
    bind_cpus: bool = key(
        BOOL,
        "Pin each job to CPUs of its own (sched_setaffinity; --bind-cpus). False: jobs run on "
        "any of the worker's CPUs, BURST_CPUS telling them how many they have.",
        default=False,
    )
    local_queue_capacity: int = key(
        integer(0),
        "Max jobs held by the worker (queued + running). 0 means 2 x slots; a value below slots "
        "is raised to slots, as the prototype did.",
        default=0,
    )
    retry_interval_ms: int = key(
        integer(10),
        "Base of the back-off after a failed call to the controller, in ms.",
        default=500,
    )
    peer_listen_addr: str | None = key(
        address(listen=True, optional=True),
        "If set, serve StealJobs to peers here (port 0: any free port). Unset by default.",
        default=None,
        example="0.0.0.0:51051",
    )
    peer_advertise_addr: str | None = key(
        address(listen=False, optional=True),
        "Address peers dial. Default: peer_listen_addr.",
        default=None,
        example="worker-1:51051",
    )
    steal_batch_size: int = key(
        integer(0),
        "Max jobs per steal request; 0 lets the steal policy decide.",
        default=0,
    )
    steal_interval_ms: int = key(
        integer(10),
        "Min pause between steal attempts of an idle worker, in ms.",
        default=150,
    )
    steal: bool = key(
        BOOL,
        "Take queued jobs from busier peers when idle (false: as `burstd worker --no-steal`). "
        "Peers can take this worker's jobs whenever it serves StealJobs (peer_listen_addr).",
        default=True,
    )
    output_dir: Path = key(
        PATH,
        "Where <job_id>.stdout and <job_id>.stderr of jobs that name no folder are written.",
        default=Path("."),
        env="BURST_OUTPUT_DIR",
    )
    python: str = key(string(empty=False), "Interpreter for python jobs.", default="python3")
    docker: str = key(string(empty=False), "Docker CLI for docker jobs.", default="docker")
    kill_grace_s: float = key(
        number(0),
        "Seconds between SIGTERM and SIGKILL when a job is stopped.",
        default=5.0,
    )
    token_file: Path | None = key(
        OPTIONAL_PATH,
        "File holding the worker's token (--token-file; BURST_TOKEN holds a token itself). "
        "Unset: worker.token in the state directory (docs/security.md).",
        default=None,
        example="/etc/burst/worker.token",
    )
    metrics_listen_addr: str | None = key(
        address(listen=True, optional=True),
        "If set, serve Prometheus metrics over HTTP here (docs/operations.md). Unset by default.",
        default=None,
        example="127.0.0.1:9465",
    )
    tls_ca: Path | None = key(
        OPTIONAL_PATH,
        "If set, the worker connects to the controller and to its peers over TLS, trusting the "
        "certificates this CA (PEM) signed. Unset: no TLS.",
        default=None,
        env="BURST_TLS_CA",
        example="/etc/burst/tls/ca.pem",
    )
    tls_cert: Path | None = key(
        OPTIONAL_PATH,
        "Certificate (PEM) the peer port presents (then it serves over TLS only, and needs "
        "tls_ca), and that the worker shows the controller and its peers when they ask for a "
        "client certificate. Needed with tls_ca and peer_listen_addr.",
        default=None,
        env="BURST_TLS_CERT",
        example="/etc/burst/tls/server.pem",
    )
    tls_key: Path | None = _tls_key("/etc/burst/tls/server-key.pem")
    tls_client_ca: Path | None = key(
        OPTIONAL_PATH,
        "Mutual TLS on the peer port: if set, only peers presenting a certificate signed by "
        "this CA (PEM) may steal. Needs tls_cert.",
        default=None,
        env="BURST_TLS_CLIENT_CA",
        example="/etc/burst/tls/ca.pem",
    )
    insecure: bool = key(
        BOOL,
        "Serve the peer port on an address off loopback without TLS (logged as a warning at "
        "every start). Otherwise that refuses to start.",
        default=False,
    )
    queue_capacity_derived: bool = field(default=False, init=False, repr=False, compare=False)
    """True when ``local_queue_capacity`` was derived from ``slots`` (set by ``__post_init__``)."""

    def __post_init__(self) -> None:
        derived = self.local_queue_capacity <= 0
        capacity = 2 * self.slots if derived else max(self.local_queue_capacity, self.slots)
        object.__setattr__(self, "local_queue_capacity", capacity)
        object.__setattr__(self, "queue_capacity_derived", derived)


@dataclass(frozen=True)
class QuotasConfig:
    """``[quotas]``: per-user limits on the controller (``burstd.policies.quotas``), and
    ``[quotas.users.NAME]`` tables that override them for one user, key by key."""

    max_queued: int = key(
        integer(0),
        "Max queued jobs of one user, those waiting (for dependencies or a retry delay) "
        "included (0: no limit); a submission past it fails with RESOURCE_EXHAUSTED naming "
        "max_queued.",
        default=0,
    )
    max_running: int = key(
        integer(0),
        "Max jobs of one user on workers, leased or running (0: no limit). The user's other "
        "jobs wait in the queue while other users' jobs start.",
        default=0,
    )
    submit_rate: float = key(
        number(0),
        "Jobs one user may submit per second (0: no limit): a token bucket holding one second "
        "of them (at least one job); a submission larger than that is accepted on a full bucket "
        "and later ones wait for it. Past it, RESOURCE_EXHAUSTED says when to retry.",
        default=0.0,
    )
    users: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    """Per user, the keys its ``[quotas.users.NAME]`` table sets (checked as the ones above)."""

    def quotas(self) -> Quotas:
        """The limits for the job table."""
        return Quotas(
            Quota(self.max_queued, self.max_running, self.submit_rate),
            {user: dict(table) for user, table in self.users.items()},
        )


USERS = "users"
"""The table of ``[quotas]`` that holds one table per user (``[quotas.users.NAME]``)."""


@dataclass(frozen=True)
class CliConfig:
    """``[cli]``: the ``burst`` command."""

    controller_addr: str = key(
        address(listen=False),
        "Controller address of `burst submit`, `burst status`...",
        default=DEFAULT_ADDR,
        env="BURST_CONTROLLER",
    )
    token_file: Path | None = key(
        OPTIONAL_PATH,
        "File holding the token `burst` and `burstd token` send (--token-file; BURST_TOKEN holds "
        "a token itself). Unset: admin.token in the state directory (docs/security.md).",
        default=None,
        example="~/.config/burst/token",
    )
    tls_ca: Path | None = key(
        OPTIONAL_PATH,
        "If set, `burst` and `burstd token` connect over TLS, trusting the certificates this CA "
        "(PEM) signed (--tls-ca). Unset: no TLS.",
        default=None,
        env="BURST_TLS_CA",
        example="~/.config/burst/ca.pem",
    )
    tls_cert: Path | None = key(
        OPTIONAL_PATH,
        "Client certificate (PEM) shown to a controller that asks for one (mutual TLS; "
        "--tls-cert). Needs tls_ca.",
        default=None,
        env="BURST_TLS_CERT",
        example="~/.config/burst/client.pem",
    )
    tls_key: Path | None = _tls_key("~/.config/burst/client-key.pem")


SECTIONS: dict[str, tuple[type[Any], str]] = {
    "controller": (ControllerConfig, "The controller."),
    "worker": (
        WorkerConfig,
        "This host's worker. Every [[workers]] entry takes the keys it does not set from here "
        "(except worker_id).",
    ),
    "cli": (CliConfig, "The `burst` command."),
    "quotas": (
        QuotasConfig,
        "Per-user limits of the controller. A [quotas.users.NAME] table overrides them for user "
        "NAME (the user of its tokens), key by key:\n"
        "[quotas.users.alice]\nmax_running = 100",
    ),
}
"""The tables of the file, with what they configure; ``[[workers]]`` entries are ``worker``'s."""

RETIRED: dict[str, str] = {
    "worker.poll_interval_ms": "workers wait for jobs in a long poll, with no polling interval",
}
"""Keys of the prototype that burst reads and ignores, with why; a file that sets one loads
with a warning naming it (``worker.`` keys are retired in ``[[workers]]`` entries too)."""

RENAMED: dict[str, str] = {
    "controller.scheduler": "controller.router",
}
"""Keys of the prototype that have a new name here: an error that gives the new name."""


@dataclass(frozen=True)
class ConfigWarning:
    """A retired key (:data:`RETIRED`) that the file sets, ignored. ``str()`` reads
    ``<file>: <key>: ignored: <why>``, naming the first table that sets it and how many more do."""

    file: str
    key: str
    section: str
    why: str
    also: int = 0

    def __str__(self) -> str:
        more = f" (and in {self.also} more tables)" if self.also else ""
        return f"{self.file}: {self.key}{more}: ignored: {self.why}"


@dataclass(frozen=True)
class Config:
    """The whole file: every program reads the section it needs."""

    controller: ControllerConfig = field(default_factory=ControllerConfig)
    workers: tuple[WorkerConfig, ...] = ()
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    cli: CliConfig = field(default_factory=CliConfig)
    source: Path | None = None
    """The file loaded, or None when only defaults (and the environment) apply."""
    warnings: tuple[ConfigWarning, ...] = field(default=(), compare=False)
    """The retired keys the file sets, one warning each; programs print those of the sections
    they read (:meth:`warnings_for`)."""

    def warnings_for(self, section: str) -> list[str]:
        """The warnings about keys of ``section`` (``controller``, ``worker`` or ``cli``)."""
        return [str(w) for w in self.warnings if w.section == section]


def worker_for(config: Config, worker_id: str | None = None) -> WorkerConfig:
    """The configuration of worker ``worker_id``.

    The id is ``worker_id`` if given and non-empty, else ``config.worker.worker_id`` (file or
    ``BURST_WORKER_ID``), else :func:`default_worker_id`. Returns the ``[[workers]]`` entry with
    that id, else ``config.worker`` with ``worker_id`` set.
    """
    wid = worker_id or config.worker.worker_id or default_worker_id()
    for entry in config.workers:
        if entry.worker_id == wid:
            return entry
    # replace() runs __post_init__ on the copied capacity, which would then count as explicit: a
    # derived capacity stays derived, so that `--slots` derives it again.
    capacity = 0 if config.worker.queue_capacity_derived else config.worker.local_queue_capacity
    return dataclasses.replace(config.worker, worker_id=wid, local_queue_capacity=capacity)


# --------------------------------------------------------------------------------------------------
# loading


def _read(path: Path, shown: str) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(shown, None, f"cannot read: {e.strerror or e}") from None
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ConfigError(shown, None, f"not UTF-8: {e.reason}") from None
        except json.JSONDecodeError as e:
            raise ConfigError(
                shown, None, f"invalid JSON: {e.msg}", line=e.lineno, column=e.colno
            ) from None
        if not isinstance(doc, dict):
            raise ConfigError(shown, None, f"expected a JSON object at the top, got {_show(doc)}")
        return doc
    import tomllib

    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(shown, None, f"not UTF-8: {e.reason}") from None
    except tomllib.TOMLDecodeError as e:
        text = str(e)
        line = column = None
        m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", text)
        if m:
            line, column = int(m.group(1)), int(m.group(2))
            text = text[: m.start()]
        elif m := re.search(r"\s*\(at end of document\)$", text):
            line = data.decode("utf-8").count("\n") + 1
            text = text[: m.start()]
        raise ConfigError(shown, None, f"invalid TOML: {text}", line=line, column=column) from None


def _unknown(shown: str, name: str, valid: Collection[str]) -> ConfigError:
    if name in RENAMED:
        return ConfigError(shown, name, f"unknown key (renamed to {RENAMED[name]})")
    import difflib

    last = name.rpartition(".")[2].partition("[")[0]
    close = difflib.get_close_matches(last, list(valid), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(shown, name, f"unknown key{hint}")


def _table(shown: str, name: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(shown, name, f"expected a table, got {_show(value)}")
    return value


def _section(
    shown: str,
    section: str,
    prefix: str,
    table: Mapping[str, Any],
    ctx: _Ctx,
    retired: dict[str, list[str]],
) -> dict[str, object]:
    """Check one table of ``section`` (shown as ``prefix``) against its keys; returns the
    converted values of the keys present, and adds where each retired key is to ``retired``."""
    spec = keys(SECTIONS[section][0])
    out: dict[str, object] = {}
    for name, value in table.items():
        declared = spec.get(name)
        if declared is None:
            if f"{section}.{name}" not in RETIRED:
                raise _unknown(shown, f"{prefix}.{name}", spec)
            retired.setdefault(f"{section}.{name}", []).append(f"{prefix}.{name}")
            continue
        try:
            out[name] = declared.check.convert(value, ctx)
        except _Bad as e:
            raise ConfigError(shown, f"{prefix}.{name}", str(e)) from None
    return out


def variables() -> dict[str, list[str]]:
    """Each ``BURST_*`` variable, with the keys (``section.key``) it sets, from :class:`Key`."""
    out: dict[str, list[str]] = {}
    for section, (cls, _) in SECTIONS.items():
        for name, declared in keys(cls).items():
            for var in declared.env:
                out.setdefault(var, []).append(f"{section}.{name}")
    return out


def _environment(env: Mapping[str, str], ctx: _Ctx) -> dict[str, dict[str, object]]:
    """The ``BURST_*`` overrides, checked, keyed by section name."""
    out: dict[str, dict[str, object]] = {section: {} for section in SECTIONS}
    for var, targets in variables().items():
        text = env.get(var, "").strip()
        if not text:
            continue  # unset or empty: no override
        for target in targets:
            section, _, name = target.partition(".")
            declared = keys(SECTIONS[section][0])[name]
            try:
                out[section][name] = declared.check.convert(text, ctx, text=True)
            except _Bad as e:
                raise ConfigError(ENVIRONMENT, var, str(e)) from None
    return out


def _locate(path: Path | str | None) -> Path | None:
    if path is not None:
        return Path(path)
    for name in SEARCH_NAMES:
        if Path(name).is_file():
            return Path(name)
    return None


def load_config(
    path: Path | str | None = None,
    *,
    env: Mapping[str, str] = os.environ,
    routers: Collection[str] = ROUTERS,
) -> Config:
    """Load the configuration: defaults, then the file, then ``BURST_*`` variables.

    ``path`` None looks for ``burst.toml`` then ``burst.config.json`` in the working directory and
    uses defaults if neither exists; an explicit path must exist. ``routers`` is the set of valid
    router names (pass the router registry's names; default :data:`ROUTERS`). The variables are
    those the keys declare (:func:`variables`); an empty one counts as unset.

    Raises :class:`ConfigError` for unreadable files, syntax errors (with line), unknown keys, bad
    values and bad variables. A retired key of the prototype (:data:`RETIRED`) is no error: it is
    ignored and named in ``Config.warnings``.
    """
    ctx = _Ctx(routers=tuple(routers), env=env)
    source = _locate(path)
    shown = str(source) if source is not None else ENVIRONMENT
    doc: dict[str, Any] = _read(source, shown) if source is not None else {}

    top = (*SECTIONS, "workers")
    for name in doc:
        if name not in top:
            raise _unknown(shown, name, top)
    retired: dict[str, list[str]] = {}
    tables = {section: dict(_table(shown, section, doc.get(section, {}))) for section in SECTIONS}
    users = _table(shown, f"quotas.{USERS}", tables["quotas"].pop(USERS, {}))
    values = {
        section: _section(shown, section, section, tables[section], ctx, retired)
        for section in SECTIONS
    }
    values["quotas"][USERS] = {
        user: _section(
            shown,
            "quotas",
            f"quotas.{USERS}.{user}",
            _table(shown, f"quotas.{USERS}.{user}", table),
            ctx,
            retired,
        )
        for user, table in users.items()
    }
    items = doc.get("workers", [])
    if not isinstance(items, list):
        raise ConfigError(shown, "workers", f"expected an array of tables, got {_show(items)}")
    entries: list[dict[str, object]] = []
    seen: dict[object, int] = {}
    for i, item in enumerate(items):
        prefix = f"workers[{i}]"
        entry = _section(shown, "worker", prefix, _table(shown, prefix, item), ctx, retired)
        wid = entry.get("worker_id")
        if wid:
            if wid in seen:
                raise ConfigError(
                    shown,
                    f"{prefix}.worker_id",
                    f"duplicate worker id {wid!r} (also workers[{seen[wid]}])",
                )
            seen[wid] = i
        entries.append(entry)
    problem = _check_controller(values["controller"], "controller.")
    if problem:
        raise ConfigError(shown, *problem)

    overrides = _environment(env, ctx)
    for section in SECTIONS:
        values[section].update(overrides[section])
    values["controller"].setdefault("state_dir", default_state_dir(env))
    for_all = {k: v for k, v in overrides["worker"].items() if k != "worker_id"}
    base = {k: v for k, v in values["worker"].items() if k != "worker_id"}
    quotas = QuotasConfig(**values.pop("quotas")).quotas()  # type: ignore[arg-type]
    return Config(
        controller=ControllerConfig(**values["controller"], quotas=quotas),  # type: ignore[arg-type]
        workers=tuple(
            WorkerConfig(**{**base, **entry, **for_all})  # type: ignore[arg-type]
            for entry in entries
        ),
        worker=WorkerConfig(**values["worker"]),  # type: ignore[arg-type]
        cli=CliConfig(**values["cli"]),  # type: ignore[arg-type]
        source=source,
        warnings=tuple(
            ConfigWarning(shown, places[0], name.partition(".")[0], RETIRED[name], len(places) - 1)
            for name, places in retired.items()
        ),
    )


# --------------------------------------------------------------------------------------------------
# flags

S = TypeVar("S", ControllerConfig, WorkerConfig, CliConfig)


def with_overrides(
    section: S,
    *,
    routers: Collection[str] = ROUTERS,
    env: Mapping[str, str] = os.environ,
    **changes: object,
) -> S:
    """A copy of a section with command-line values applied, checked like the file's.

    Changes whose value is None are skipped, so optional flags can be passed straight through::

        ctl = with_overrides(config.controller, bind_addr=listen, router=router, routers=names)
        wrk = with_overrides(worker_for(config, worker_id), slots=slots)
        config = dataclasses.replace(config, controller=ctl)

    A string given for a numeric field is read as a number. When ``slots`` changes and
    ``local_queue_capacity`` was derived (set nowhere), it is derived again from the new ``slots``.
    An unknown field name is a TypeError (a programming error); a bad value is a
    :class:`ConfigError` with file ``"command line"`` and key ``<section>.<field>``.
    """
    name = next(n for n, (cls, _) in SECTIONS.items() if cls is type(section))
    spec = keys(type(section))
    ctx = _Ctx(routers=tuple(routers), env=env)
    values: dict[str, object] = {}
    for field_name, value in changes.items():
        if value is None:
            continue
        declared = spec.get(field_name)
        if declared is None:
            raise TypeError(f"{type(section).__name__} has no field {field_name!r}")
        try:
            values[field_name] = declared.check.convert(value, ctx, text=True)
        except _Bad as e:
            raise ConfigError(COMMAND_LINE, f"{name}.{field_name}", str(e)) from None
    if isinstance(section, ControllerConfig):
        problem = _check_controller({**dataclasses.asdict(section), **values}, "controller.")
        if problem:
            raise ConfigError(COMMAND_LINE, *problem)
    if (
        isinstance(section, WorkerConfig)
        and "slots" in values
        and "local_queue_capacity" not in values
        and section.queue_capacity_derived
    ):
        values["local_queue_capacity"] = 0
    return dataclasses.replace(section, **values)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# the example file: the documentation of every key and variable, made from the declarations

_EXAMPLE_HEAD = """\
burst configuration: one file for the controller, the workers and the `burst` CLI.
Made by `python -m burstd.config > burst.example.toml` from the keys declared in burstd/config.py.

Copy to `burst.toml` (found in the working directory) or pass `--config PATH`. Every key is
optional; the values below are the defaults. Keys commented out have defaults that depend on the
machine or are unset. Unknown keys are errors. The Rust prototype's `burst.config.json` layout
(same sections and keys, in JSON) is read too.

Precedence: defaults < this file < BURST_* environment variables < command line flags.
Addresses: "host:port" (hostname or IP), "[::1]:port", or the prototype's "http://host:port".
Relative paths are relative to the working directory of the program."""

_EXAMPLE_WORKERS = """\
The cluster: one entry per worker (also the peer list for stealing). A worker started with
--id picks its entry; a worker with no entry uses [worker]. No entries by default.
[[workers]]
worker_id = "worker-1"
slots = 4
peer_listen_addr = "0.0.0.0:51051"
peer_advertise_addr = "worker-1:51051"

[[workers]]
worker_id = "worker-2"
peer_listen_addr = "0.0.0.0:51052"
peer_advertise_addr = "worker-2:51052\""""


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(_toml, value)) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def _comment(text: str) -> list[str]:
    import textwrap

    return [
        line
        for paragraph in text.split("\n")
        for line in textwrap.wrap(paragraph, 98, initial_indent="# ", subsequent_indent="# ")
        or ["#"]
    ]


def example_file() -> str:
    """``burst.example.toml``: every key with its documentation and default, every variable.

    Made from the declarations alone (:data:`SECTIONS`, :func:`key`, :data:`RETIRED`), so it
    cannot drift from them; ``tests/test_config.py`` checks the committed file is this text.
    """
    width = max(map(len, variables()))
    lines = _comment(_EXAMPLE_HEAD)
    lines += [
        "#",
        "# Variables (an empty one counts as unset; a worker key's variable sets every [[workers]]",
        "# entry too, except BURST_WORKER_ID, which names this process's worker):",
        *(f"#   {var:<{width}}  {', '.join(targets)}" for var, targets in variables().items()),
        "#",
        *_comment(
            "Keys of the prototype that burst reads and ignores, with a warning: "
            + "; ".join(f"{name} ({why})" for name, why in RETIRED.items())
            + "."
        ),
    ]
    for section, (cls, doc) in SECTIONS.items():
        lines += ["", *_comment(doc), f"[{section}]"]
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for name, declared in keys(cls).items():
            env = f" Variable: {', '.join(declared.env)}." if declared.env else ""
            hint = f" {declared.check.hint}" if declared.check.hint else ""
            lines += _comment(declared.doc + hint + env)
            default = defaults[name]
            if default is dataclasses.MISSING or default is None:
                lines.append(f"# {name} = {_toml(declared.example)}")
            else:
                lines.append(f"{name} = {_toml(default)}")
        if section == "worker":
            lines += ["", *(f"# {line}".rstrip() for line in _EXAMPLE_WORKERS.split("\n"))]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(example_file(), end="")

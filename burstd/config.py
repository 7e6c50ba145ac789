"""The typed configuration model shared by every burst program.

One file configures the controller, the workers and the CLI. It is TOML (``burst.toml``, the
preferred form) or the Rust prototype's JSON layout (``burst.config.json``); the format is chosen by
the file suffix (``.json`` is JSON, anything else TOML). Both load into the same frozen dataclasses.
``burst.example.toml`` at the repository root documents every key with its default.

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

Addresses are ``host:port``, ``[ipv6]:port`` or the prototype's ``http://host:port``; the model
stores them normalised to ``host:port`` (``[ipv6]:port`` for IPv6), without a scheme. Listening
addresses (``controller.bind_addr``, ``peer_listen_addr``) may use port 0 (the OS picks one).
Relative paths are relative to the working directory of the process, not to the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import ipaddress
import json
import math
import os
import re
import socket
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from burstd.policies.routers import ROUTERS as ROUTER_REGISTRY

__all__ = [
    "DEFAULT_ADDR",
    "ROUTERS",
    "STORES",
    "CliConfig",
    "Config",
    "ConfigError",
    "ControllerConfig",
    "WorkerConfig",
    "default_state_dir",
    "default_worker_id",
    "format_hostport",
    "load_config",
    "parse_hostport",
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


def _cpu_count() -> int:
    return os.cpu_count() or 1


# --------------------------------------------------------------------------------------------------
# the model


@dataclass(frozen=True)
class ControllerConfig:
    """``[controller]``: the controller daemon."""

    bind_addr: str = DEFAULT_ADDR
    """gRPC listen address, ``host:port`` (hostname or IP; ``[::1]:port``; port 0 = any)."""
    router: str = "roundrobin"
    """Placement policy; one of the registered router names (:data:`ROUTERS` by default)."""
    submission_buffer_capacity: int = 1_000_000
    """Max queued (accepted, not yet leased) jobs; more is RESOURCE_EXHAUSTED. Prototype key."""
    state_dir: Path = field(default_factory=default_state_dir)
    """Directory of the durable store; see :func:`default_state_dir`."""
    store: str = "sqlite"
    """``sqlite`` (durable, in ``state_dir``) or ``memory`` (lost on restart)."""
    lease_ttl_ms: int = 10_000
    """A worker silent for this long is declared dead and its leases are requeued (>= 100)."""
    heartbeat_interval_ms: int = 1_000
    """How often workers heartbeat; must be < ``lease_ttl_ms``."""
    heartbeat_budget: int = 100
    """Heartbeats per second from all workers together (>= 1): beyond ``heartbeat_budget *
    heartbeat_interval_ms / 1000`` workers, the interval handed to workers and their lease TTL
    stretch in proportion, so idle workers cost the controller a bounded share of its CPU."""
    crash_limit: int = 5
    """Lost leases after which a job is failed instead of requeued (>= 1)."""
    max_batch: int = 1_000_000
    """Max specs per SubmitJobs call or job array."""
    max_spec_bytes: int = 65_536
    """Max encoded size of one job spec."""
    retention_s: float = 86_400.0
    """How long finished jobs are kept, in seconds."""


@dataclass(frozen=True)
class WorkerConfig:
    """A worker: ``[worker]`` (this host's defaults) or one ``[[workers]]`` entry."""

    worker_id: str = ""
    """Identity; "" means derived (see :func:`worker_for` and :func:`default_worker_id`)."""
    controller_addr: str = DEFAULT_ADDR
    """Controller address, ``host:port`` (the prototype's ``http://host:port`` is accepted)."""
    slots: int = field(default_factory=_cpu_count)
    """Max concurrently running jobs; default: the number of CPUs."""
    local_queue_capacity: int = 0
    """Max jobs held (queued + running). Given 0 (the default) it becomes 2 x slots; a value below
    ``slots`` is raised to ``slots``, as the prototype did. Always resolved after construction."""
    poll_interval_ms: int = 250
    """Prototype key: base of the back-off when asking for work fails or finds none (>= 10)."""
    retry_interval_ms: int = 500
    """Prototype key: base of the back-off after a failed call to the controller (>= 10)."""
    peer_listen_addr: str | None = None
    """If set, serve StealJobs to peers here."""
    peer_advertise_addr: str | None = None
    """Address peers dial; default: ``peer_listen_addr``."""
    steal_batch_size: int = 0
    """Max jobs per steal request; 0 = the steal policy decides."""
    steal_interval_ms: int = 150
    """Min pause between steal attempts of an idle worker (>= 10)."""
    steal: bool = True
    """Take queued jobs from busier peers when idle (``burstd worker --no-steal`` also stops it).
    Peers can take this worker's jobs whenever it serves StealJobs (``peer_listen_addr``)."""
    output_dir: Path = Path(".")
    """Where ``<job_id>.stdout`` / ``.stderr`` are written."""
    python: str = "python3"
    """Interpreter for python jobs."""
    docker: str = "docker"
    """Docker CLI for docker jobs."""
    kill_grace_s: float = 5.0
    """Seconds between SIGTERM and SIGKILL when a job is stopped."""
    queue_capacity_derived: bool = field(default=False, init=False, repr=False, compare=False)
    """True when ``local_queue_capacity`` was derived from ``slots`` (set by ``__post_init__``)."""

    def __post_init__(self) -> None:
        derived = self.local_queue_capacity <= 0
        capacity = 2 * self.slots if derived else max(self.local_queue_capacity, self.slots)
        object.__setattr__(self, "local_queue_capacity", capacity)
        object.__setattr__(self, "queue_capacity_derived", derived)


@dataclass(frozen=True)
class CliConfig:
    """``[cli]``: the ``burst`` command."""

    controller_addr: str = DEFAULT_ADDR


@dataclass(frozen=True)
class Config:
    """The whole file: every program reads the section it needs."""

    controller: ControllerConfig = field(default_factory=ControllerConfig)
    workers: tuple[WorkerConfig, ...] = ()
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    cli: CliConfig = field(default_factory=CliConfig)
    source: Path | None = None
    """The file loaded, or None when only defaults (and the environment) apply."""


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
# validation of single values


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
class _Field:
    """How one key is checked and converted; ``number`` says how to read it from text."""

    check: Callable[[object, _Ctx], object]
    number: type[int] | type[float] | None = None

    def convert(self, value: object, ctx: _Ctx, *, text: bool = False) -> object:
        """The checked value; with ``text`` a string is first read as a number if one is wanted."""
        if text and self.number is not None and isinstance(value, str):
            with contextlib.suppress(ValueError):  # else check() reports the original string
                value = self.number(value.strip())
        return self.check(value, ctx)


def _int(minimum: int) -> _Field:
    def check(value: object, ctx: _Ctx) -> object:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise _Bad(f"expected an integer >= {minimum}, got {_show(value)}")
        return value

    return _Field(check, int)


def _float(minimum: float) -> _Field:
    def check(value: object, ctx: _Ctx) -> object:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < minimum
        ):
            raise _Bad(f"expected a number >= {minimum:g}, got {_show(value)}")
        return float(value)

    return _Field(check, float)


def _check_bool(value: object, ctx: _Ctx) -> object:
    if not isinstance(value, bool):
        raise _Bad(f"expected true or false, got {_show(value)}")
    return value


_BOOL = _Field(_check_bool)


def _string(*, empty: bool) -> _Field:
    def check(value: object, ctx: _Ctx) -> object:
        if not isinstance(value, str) or (not empty and not value):
            what = "a string" if empty else "a non-empty string"
            raise _Bad(f"expected {what}, got {_show(value)}")
        return value

    return _Field(check)


def _address(*, listen: bool, optional: bool = False) -> _Field:
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

    return _Field(check)


def _check_path(value: object, ctx: _Ctx) -> object:
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise _Bad(f"expected a non-empty path, got {_show(value)}")
    if value == "~" or value.startswith("~/"):
        return _home(ctx.env) / value[2:]
    return Path(value)


def _choice(what: str, names: Callable[[_Ctx], Collection[str]]) -> _Field:
    def check(value: object, ctx: _Ctx) -> object:
        valid = names(ctx)
        if not isinstance(value, str) or value not in valid:
            shown = repr(value) if isinstance(value, str) else _show(value)
            raise _Bad(f"unknown {what} {shown} (valid: {', '.join(sorted(valid))})")
        return value

    return _Field(check)


_PATH = _Field(_check_path)

_CONTROLLER: dict[str, _Field] = {
    "bind_addr": _address(listen=True),
    "router": _choice("router", lambda ctx: ctx.routers),
    "submission_buffer_capacity": _int(1),
    "state_dir": _PATH,
    "store": _choice("store", lambda ctx: STORES),
    "lease_ttl_ms": _int(100),
    "heartbeat_interval_ms": _int(10),
    "heartbeat_budget": _int(1),
    "crash_limit": _int(1),
    "max_batch": _int(1),
    "max_spec_bytes": _int(1),
    "retention_s": _float(0),
}

_WORKER: dict[str, _Field] = {
    "worker_id": _string(empty=True),
    "controller_addr": _address(listen=False),
    "slots": _int(1),
    "local_queue_capacity": _int(0),
    "poll_interval_ms": _int(10),
    "retry_interval_ms": _int(10),
    "peer_listen_addr": _address(listen=True, optional=True),
    "peer_advertise_addr": _address(listen=False, optional=True),
    "steal_batch_size": _int(0),
    "steal_interval_ms": _int(10),
    "steal": _BOOL,
    "output_dir": _PATH,
    "python": _string(empty=False),
    "docker": _string(empty=False),
    "kill_grace_s": _float(0),
}

_CLI: dict[str, _Field] = {
    "controller_addr": _address(listen=False),
}

_SECTIONS: dict[type[Any], tuple[str, dict[str, _Field]]] = {
    ControllerConfig: ("controller", _CONTROLLER),
    WorkerConfig: ("worker", _WORKER),
    CliConfig: ("cli", _CLI),
}

_ENV: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("BURST_CONTROLLER", (("cli", "controller_addr"), ("worker", "controller_addr"))),
    ("BURST_LISTEN", (("controller", "bind_addr"),)),
    ("BURST_ROUTER", (("controller", "router"),)),
    ("BURST_STATE_DIR", (("controller", "state_dir"),)),
    ("BURST_SLOTS", (("worker", "slots"),)),
    ("BURST_WORKER_ID", (("worker", "worker_id"),)),
    ("BURST_OUTPUT_DIR", (("worker", "output_dir"),)),
)
"""Variable -> the (section, key) pairs it sets. Worker keys apply to every worker entry, except
``worker_id`` which names this process's worker (``[worker]`` only)."""

_RENAMED: dict[str, str] = {
    "controller.scheduler": "controller.router",
}
"""Keys of the prototype that have a new name here."""


def _check_controller(values: Mapping[str, object], prefix: str) -> tuple[str, str] | None:
    """Cross-field rules; returns (key, message) of the first violation."""
    ttl = values.get("lease_ttl_ms", ControllerConfig.lease_ttl_ms)
    hb = values.get("heartbeat_interval_ms", ControllerConfig.heartbeat_interval_ms)
    assert isinstance(ttl, int) and isinstance(hb, int)
    if hb >= ttl:
        return (
            f"{prefix}heartbeat_interval_ms",
            f"must be less than {prefix}lease_ttl_ms ({ttl}), got {hb}",
        )
    return None


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


def _unknown(shown: str, key: str, valid: Collection[str]) -> ConfigError:
    if key in _RENAMED:
        return ConfigError(shown, key, f"unknown key (renamed to {_RENAMED[key]})")
    name = key.rpartition(".")[2].partition("[")[0]
    close = difflib.get_close_matches(name, list(valid), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(shown, key, f"unknown key{hint}")


def _table(shown: str, key: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(shown, key, f"expected a table, got {_show(value)}")
    return value


def _section(
    shown: str, prefix: str, table: Mapping[str, Any], spec: Mapping[str, _Field], ctx: _Ctx
) -> dict[str, object]:
    """Check one table against its fields; returns the converted values of the keys present."""
    out: dict[str, object] = {}
    for key, value in table.items():
        spec_field = spec.get(key)
        if spec_field is None:
            raise _unknown(shown, f"{prefix}.{key}", spec)
        try:
            out[key] = spec_field.convert(value, ctx)
        except _Bad as e:
            raise ConfigError(shown, f"{prefix}.{key}", str(e)) from None
    return out


def _environment(env: Mapping[str, str], ctx: _Ctx) -> dict[str, dict[str, object]]:
    """The ``BURST_*`` overrides, checked, keyed by section name."""
    specs = {"controller": _CONTROLLER, "worker": _WORKER, "cli": _CLI}
    out: dict[str, dict[str, object]] = {name: {} for name in specs}
    for var, targets in _ENV:
        text = env.get(var, "").strip()
        if not text:
            continue  # unset or empty: no override
        for section, key in targets:
            try:
                out[section][key] = specs[section][key].convert(text, ctx, text=True)
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
    router names (pass the router registry's names; default :data:`ROUTERS`).

    Variables (an empty one counts as unset): ``BURST_CONTROLLER`` (``cli.controller_addr`` and
    every worker's ``controller_addr``), ``BURST_LISTEN`` (``controller.bind_addr``),
    ``BURST_ROUTER``, ``BURST_STATE_DIR``, ``BURST_SLOTS`` (every worker), ``BURST_WORKER_ID``
    (``worker.worker_id``: which worker this process is), ``BURST_OUTPUT_DIR`` (every worker).

    Raises :class:`ConfigError` for unreadable files, syntax errors (with line), unknown keys, bad
    values and bad variables.
    """
    ctx = _Ctx(routers=tuple(routers), env=env)
    source = _locate(path)
    shown = str(source) if source is not None else ENVIRONMENT
    doc: dict[str, Any] = _read(source, shown) if source is not None else {}

    top = ("controller", "worker", "workers", "cli")
    for key in doc:
        if key not in top:
            raise _unknown(shown, key, top)
    controller = _section(
        shown,
        "controller",
        _table(shown, "controller", doc.get("controller", {})),
        _CONTROLLER,
        ctx,
    )
    worker = _section(shown, "worker", _table(shown, "worker", doc.get("worker", {})), _WORKER, ctx)
    cli = _section(shown, "cli", _table(shown, "cli", doc.get("cli", {})), _CLI, ctx)
    items = doc.get("workers", [])
    if not isinstance(items, list):
        raise ConfigError(shown, "workers", f"expected an array of tables, got {_show(items)}")
    entries: list[dict[str, object]] = []
    seen: dict[object, int] = {}
    for i, item in enumerate(items):
        prefix = f"workers[{i}]"
        values = _section(shown, prefix, _table(shown, prefix, item), _WORKER, ctx)
        wid = values.get("worker_id")
        if wid:
            if wid in seen:
                raise ConfigError(
                    shown,
                    f"{prefix}.worker_id",
                    f"duplicate worker id {wid!r} (also workers[{seen[wid]}])",
                )
            seen[wid] = i
        entries.append(values)
    problem = _check_controller(controller, "controller.")
    if problem:
        raise ConfigError(shown, *problem)

    overrides = _environment(env, ctx)
    controller.update(overrides["controller"])
    controller.setdefault("state_dir", default_state_dir(env))
    cli.update(overrides["cli"])
    worker.update(overrides["worker"])
    for_all = {k: v for k, v in overrides["worker"].items() if k != "worker_id"}
    base = {k: v for k, v in worker.items() if k != "worker_id"}
    return Config(
        controller=ControllerConfig(**controller),  # type: ignore[arg-type]
        workers=tuple(
            WorkerConfig(**{**base, **entry, **for_all})  # type: ignore[arg-type]
            for entry in entries
        ),
        worker=WorkerConfig(**worker),  # type: ignore[arg-type]
        cli=CliConfig(**cli),  # type: ignore[arg-type]
        source=source,
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
    name, spec = _SECTIONS[type(section)]
    ctx = _Ctx(routers=tuple(routers), env=env)
    values: dict[str, object] = {}
    for key, value in changes.items():
        if value is None:
            continue
        spec_field = spec.get(key)
        if spec_field is None:
            raise TypeError(f"{type(section).__name__} has no field {key!r}")
        try:
            values[key] = spec_field.convert(value, ctx, text=True)
        except _Bad as e:
            raise ConfigError(COMMAND_LINE, f"{name}.{key}", str(e)) from None
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

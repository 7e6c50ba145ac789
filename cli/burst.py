"""`burst`: submit jobs to a burst controller and follow them.

A thin layer over :mod:`burstd.client`: every command opens one connection, makes its calls and
prints the answers, one job per line. Exit codes: the table of :mod:`cli.exitcodes`. Every error
is one line on stderr, ``burst: error: ...``, naming the bad flag or field; never a traceback.

Everything after the CMD/ENTRY/IMAGE of ``burst submit <kind>`` is the job's argv, passed on
verbatim (hyphens, ``--`` and ``--help`` included): :func:`main` marks where it starts with ``--``
before cyclopts parses the line (see :func:`prepare_argv`).

Importing this module is cheap: cyclopts, trio, the client and the protobuf modules are imported
when a command needs them, not at import (``burst --help`` does not pay for the client, and
``burst status ID`` and ``burst submit KIND TARGET...`` do not import cyclopts: see
:func:`_direct`).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import os
import shlex
import sys
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn, TextIO, TypeVar, cast

from burstd import __version__, arrays
from burstd.wire import MAX_CRASH_LIMIT, MAX_PRIORITY
from cli.exitcodes import ExitCode, for_status, reader_gone

if TYPE_CHECKING:
    import ssl

    import cyclopts
    from cyclopts import Parameter, validators

    from burstd.client import Client
    from burstd.transport import Channel
    from proto.burst.v1 import job_pb2, worker_pb2

    # The commands' annotations name them; _apps sets them with cyclopts, which reads them.
    _RAW: Parameter
    _TOKENS: Parameter

__all__ = [
    "KINDS",
    "JobCommand",
    "UsageError",
    "build_spec",
    "client_tls",
    "client_token",
    "controller_addr",
    "job_dirs",
    "main",
    "name_outputs",
    "parse_array",
    "parse_env",
    "prepare_argv",
    "read_entries",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

State = Literal["waiting", "queued", "leased", "running", "succeeded", "failed", "cancelled"]


class UsageError(Exception):
    """A command line that parsed but makes no sense (a malformed ``--env``...): exit 2."""


class Failure(Exception):
    """A command that cannot go on: its message is printed as the error, ``code`` is the exit."""

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclasses.dataclass
class _Globals:
    """The options given before the command (set by the meta app on every run)."""

    controller: str | None = None
    config: Path | None = None
    token_file: Path | None = None
    state_dir: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None


_globals = _Globals()


# --------------------------------------------------------------------------------------------------
# the application


_COMMANDS: list[tuple[str, Callable[..., Any], dict[str, Any]]] = []
"""Each command: its parent (``burst`` or ``submit``), its function and its cyclopts options."""


def _command(parent: Literal["burst", "submit"], **options: Any) -> Callable[[F], F]:
    """Make the decorated function a command of ``parent``, as ``@app.command(**options)`` would,
    once cyclopts is built (:func:`_apps`). It is registered by its import path: cyclopts builds
    a command's App and reads its signature only when that command runs, not for every command
    at every start (main resolves them all for help).

    The path names this module as it is loaded (``__main__`` under ``python -m cli.burst``), so that
    resolving it finds these functions and does not load the file a second time."""

    def register(function: F) -> F:
        _COMMANDS.append((parent, function, options))
        return function

    return register


_SUBMIT_USAGE = "Usage: burst submit [OPTIONS] {}"


@functools.cache
def _apps() -> tuple[cyclopts.App, cyclopts.App]:
    """The cyclopts apps of ``burst`` and of ``burst submit``, built at their first use: a line
    that :func:`_direct` runs never imports cyclopts."""
    global Parameter, validators, _RAW, _TOKENS  # (the names the commands' annotations use)
    import cyclopts
    from cyclopts import Parameter, validators

    _RAW = Parameter(allow_leading_hyphen=True)
    _TOKENS = Parameter(allow_leading_hyphen=True, show=False)
    app = cyclopts.App(
        name="burst",
        help=(
            "Submit jobs to a burst controller and follow them.\n\n"
            "The controller is --controller, else BURST_CONTROLLER, else cli.controller_addr of "
            "the configuration file, else 127.0.0.1:50051. The token sent is --token-file, else "
            "BURST_TOKEN, else cli.token_file, else the state directory's admin.token. TLS is on "
            "with --tls-ca, else BURST_TLS_CA, else cli.tls_ca.\n\n"
            "Exit codes:\n\n" + "\n".join(f"- {code.value}: {code.meaning}" for code in ExitCode)
        ),
        usage=(
            "Usage: burst [--controller HOST:PORT] [--config FILE] [--token-file FILE] "
            "[--state-dir DIR] [--tls-ca FILE [--tls-cert FILE --tls-key FILE]] COMMAND [ARGS...]"
        ),
        version=f"burst {__version__}",
        version_flags=[],
        default_parameter=Parameter(negative=(), show_default=False),
    )
    app.meta.version_flags = ["--version"]
    submit_app = cyclopts.App(
        name="submit",
        usage=_SUBMIT_USAGE.format(
            "process CMD [ARGS...] | python ENTRY [ARGS...] | docker IMAGE [ARGS...]"
        ),
        version_flags=[],
    )
    submit_app.meta.version_flags = []
    submit_app.meta.usage = submit_app.usage
    app.command(submit_app.meta, name="submit")
    app.meta.default(_launcher)
    submit_app.meta.default(submit)
    parents = {"burst": app, "submit": submit_app}
    for parent, function, options in _COMMANDS:
        parents[parent].command(f"{__name__}:{function.__name__}", **options)
    # Errors are ours to print (main), as one line: never cyclopts's boxed panels.
    for one in (app, app.meta, submit_app, submit_app.meta):
        one.exit_on_error = one.print_error = False
    return app, submit_app


def _launcher(
    *tokens: Annotated[str, _TOKENS],
    controller: Annotated[str | None, Parameter(metavar="HOST:PORT")] = None,
    config: Annotated[Path | None, Parameter(metavar="FILE")] = None,
    token_file: Annotated[Path | None, Parameter(metavar="FILE")] = None,
    state_dir: Annotated[Path | None, Parameter(metavar="DIR")] = None,
    tls_ca: Annotated[Path | None, Parameter(metavar="FILE")] = None,
    tls_cert: Annotated[Path | None, Parameter(metavar="FILE")] = None,
    tls_key: Annotated[Path | None, Parameter(metavar="FILE")] = None,
) -> Any:
    """Global options.

    Parameters
    ----------
    controller
        Controller address, HOST:PORT (or http://HOST:PORT).
    config
        Configuration file (default: ./burst.toml or ./burst.config.json, if present).
    token_file
        File holding the token to send (default: BURST_TOKEN, else cli.token_file, else
        admin.token in the state directory).
    state_dir
        State directory of the local controller, whose admin.token is sent when no other token
        is given (default: BURST_STATE_DIR, else controller.state_dir, else
        ~/.local/state/burst).
    tls_ca
        Connect over TLS, trusting the certificates this CA (PEM) signed (default: BURST_TLS_CA,
        else cli.tls_ca; neither: no TLS).
    tls_cert
        Client certificate (PEM) for a controller that requires one (mutual TLS; default:
        BURST_TLS_CERT, else cli.tls_cert).
    tls_key
        The private key of --tls-cert (default: BURST_TLS_KEY, else cli.tls_key).
    """
    _globals.controller = controller
    _globals.config = config
    _globals.token_file = token_file
    _globals.state_dir = state_dir
    _globals.tls_ca, _globals.tls_cert, _globals.tls_key = tls_ca, tls_cert, tls_key
    return _apps()[0](tokens)


# --------------------------------------------------------------------------------------------------
# building job specs (pure; tested without a controller)


@dataclasses.dataclass(frozen=True)
class JobCommand:
    """What ``burst submit <kind> TARGET ARGS...`` names: the kind, its target and argv."""

    kind: str
    target: str
    args: tuple[str, ...] = ()


def parse_env(items: Iterable[str]) -> dict[str, str]:
    """``K=V`` strings to a mapping (the value may contain ``=``; later ones win)."""
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--env {item!r}: expected KEY=VALUE")
        env[key] = value
    return env


def parse_request(
    cpus: int | None = None, mem: str | None = None, gpus: int = 0, named: Iterable[str] = ()
) -> worker_pb2.Resources | None:
    """What ``--cpus``, ``--mem``, ``--gpus`` and ``--resource`` ask for; None: one CPU and
    nothing else. Raises ``UsageError`` naming the flag."""
    from burstd import resources
    from burstd.resources_proto import to_message

    try:
        amount = resources.parse_amount(resources.MEM, mem) if mem is not None else 0
    except ValueError as error:
        raise UsageError(f"--mem: {error}") from None
    try:
        extra = resources.parse_named(named)
    except ValueError as error:
        raise UsageError(f"--resource: {error}") from None
    request = resources.make_request(cpus or 1, amount, gpus, extra)
    return None if request is None else to_message(request)


def parse_array(text: str) -> list[range]:
    """An ``--array`` spec (``1-100:2``, ``1,3,7-9``; see :mod:`burstd.arrays`) to its ranges."""
    try:
        return arrays.parse(text)
    except arrays.ArraySpecError as error:
        raise UsageError(f"--array {text!r}: {error}") from None


def read_entries(path: str, stdin: TextIO | None = None) -> list[str]:
    """The lines of ``path`` (``-``: standard input) that are not blank, without their line ends
    (LF or CRLF): a blank line (empty, or only whitespace) is no entry."""
    try:
        if path == "-":
            text = (stdin or sys.stdin).read()
        else:
            text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        detail = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise UsageError(f"--each-line {path}: cannot read: {detail}") from None
    lines = (line.removesuffix("\r") for line in text.split("\n"))
    return [line for line in lines if line.strip()]


def job_dirs(
    kind: str, here: str, *, cwd: str | None = None, output_dir: str | None = None
) -> tuple[str | None, str | None]:
    """The job's working directory and output folder as ``burst submit`` sends them, absolute.

    Relative paths resolve where the user submits, as in Slurm and HyperQueue: the working
    directory is ``cwd`` taken in ``here`` (the directory ``burst submit`` runs in), by default
    ``here`` itself; a relative output folder is taken in the working directory. A docker job's
    ``cwd`` is a path in its container: kept as given (no default), and its output folder, on the
    worker's machine, is taken in ``here``.
    """
    if kind == "docker":
        workdir, host_dir = cwd, here
    else:
        workdir = host_dir = os.path.normpath(os.path.join(here, cwd or "."))
    if output_dir is not None and output_dir.strip():
        output_dir = os.path.normpath(os.path.join(host_dir, output_dir))
    return workdir, output_dir


def build_spec(
    job: JobCommand,
    *,
    output_dir: str | None = None,
    env: Iterable[str] = (),
    cwd: str | None = None,
    timeout: float | None = None,
    retries: int = 0,
    name: str = "",
    retry_on_exit: Iterable[int] = (),
    crash_limit: int = 0,
    after: Iterable[str] = (),
    after_any: bool = False,
    priority: int = 0,
    retry_delay: float = 0.0,
    max_fails: int = 0,
) -> job_pb2.JobSpec:
    """The JobSpec for ``job`` and the options of ``burst submit`` (``env`` as ``K=V`` strings)."""
    from burstd import client

    builders = {"process": client.process, "python": client.python, "docker": client.docker}
    return builders[job.kind](
        job.target,
        *job.args,
        output_dir=output_dir,
        env=parse_env(env),
        cwd=cwd,
        timeout=timeout,
        retries=retries,
        name=name,
        retry_on_exit=retry_on_exit,
        crash_limit=crash_limit,
        after=after,
        after_any=after_any,
        priority=priority,
        retry_delay=retry_delay,
        max_fails=max_fails,
    )


def _job_ids(values: Iterable[str]) -> list[str]:
    """The ids of ``--after`` or ``--after-any`` (each comma-separated, repeatable)."""
    ids = [job_id.strip() for value in values for job_id in value.split(",")]
    if not all(ids):
        raise UsageError("--after: an empty job id")
    return list(dict.fromkeys(ids))


def _exit_codes(value: str) -> list[int]:
    """The codes of ``--retry-on-exit`` (comma-separated, 0-255)."""
    try:
        codes = [int(code) for code in value.split(",")]
    except ValueError:
        raise UsageError(f"--retry-on-exit: not a list of exit codes: {value!r}") from None
    if not all(0 <= code <= 255 for code in codes):
        raise UsageError(f"--retry-on-exit: exit codes are 0-255: {value!r}")
    return codes


def name_outputs(
    spec: job_pb2.JobSpec,
    *,
    stdout: str | None = None,
    stderr: str | None = None,
    stream: bool = False,
    array: str | None = None,
) -> None:
    """Set the output patterns (``--stdout``, ``--stderr``) and mode of ``spec``, and name its
    submission when a pattern or the stream mode needs it. Raises ``UsageError`` naming the
    flag of a pattern that is invalid or would leave the output folder."""
    from burstd import outputnames

    patterns = {"--stdout": stdout, "--stderr": stderr}
    for flag, pattern in patterns.items():
        if pattern is None:
            continue
        try:
            outputnames.check_pattern(pattern)
        except ValueError as error:
            raise UsageError(f"{flag}: {error}") from None
        if array is None and outputnames.uses(pattern, "index"):
            raise UsageError(f"{flag}: {{index}} needs --array")
    if stdout is not None and stdout == stderr:
        raise UsageError("--stderr: the same file as --stdout")
    if stream and (stdout is not None or stderr is not None):
        raise UsageError("--output stream: cannot be combined with --stdout or --stderr")
    spec.stdout_pattern = stdout or ""
    spec.stderr_pattern = stderr or ""
    if stream:
        spec.output_mode = "stream"
    if stream or any(p and outputnames.uses(p, "submission") for p in patterns.values()):
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        spec.submission = f"{stamp}-{os.urandom(3).hex()}"


# No argument of a command line can hold a NUL (argv strings are C strings): it joins the values
# of every --env of `burst submit` into one, which cyclopts then binds once (see prepare_argv).
_ENV_JOIN = "\0"


def _arities(parent: Literal["burst", "submit"]) -> dict[str, int]:
    """Each option of ``parent``'s meta app -> how many tokens follow it (0 for a flag)."""
    app, submit_app = _apps()
    command = (app if parent == "burst" else submit_app).meta
    arities = dict.fromkeys((*command.help_flags, *command.version_flags), 0)
    for argument in command.assemble_argument_collection(parse_docstring=False):
        count = argument.token_count()[0]
        arities.update((name, count) for name in argument.names if name.startswith("-"))
    return arities


def _scan_options(
    tokens: Sequence[str], at: int, parent: Literal["burst", "submit"]
) -> tuple[int, list[int]] | None:
    """The options of ``parent`` (those before its command) from ``tokens[at]`` on: where they
    end (the first token that is neither an option nor an option's value) and where each
    ``--env`` is. None for a line this scan does not follow (an unknown option, ``--``, a missing
    value): cyclopts judges it.

    The arities cost cyclopts an assembly of the command's parameters: they are read only when an
    option is there (``burst submit process CMD`` has none)."""
    envs: list[int] = []
    arities: dict[str, int] | None = None
    while at < len(tokens) and tokens[at].startswith("-"):
        if arities is None:
            arities = _arities(parent)
        name, equals, _ = tokens[at].partition("=")
        arity = arities.get(name)
        if arity is None or name == "--" or at + (0 if equals else arity) >= len(tokens):
            return None
        if name == "--env":
            envs.append(at)
        at += 1 + (0 if equals else arity)
    return at, envs


def prepare_argv(tokens: Sequence[str]) -> list[str]:
    """``tokens`` made ready for cyclopts, in one linear pass: for ``burst submit``, ``--`` put
    right after ``submit [options] <kind>`` and every ``--env`` merged into one.

    The ``--`` passes the job's argv to the kind's command untouched (cyclopts would otherwise
    read options of its own, ``--help``, in it and eat a ``--``); ``submit <kind> --help``
    (nothing else) and a ``--`` already there are left alone. The merge keeps a submission with
    thousands of ``--env`` linear: cyclopts spends time proportional to the rest of the line on
    each option it binds. A line the scan does not follow is returned as it is.
    """
    tokens = list(tokens)
    if "submit" not in tokens:  # (the only line changed)
        return tokens
    found = _scan_options(tokens, 0, "burst")
    if found is None or found[0] >= len(tokens) or tokens[found[0]] != "submit":
        return tokens
    found = _scan_options(tokens, found[0] + 1, "submit")
    if found is None or found[0] >= len(tokens) or tokens[found[0]] not in KINDS:
        return tokens
    kind_at, envs = found
    head, rest = tokens[: kind_at + 1], tokens[kind_at + 1 :]
    if len(envs) > 1:
        values: list[str] = []
        kept: list[str] = []
        at = 0
        for i in envs:
            kept += head[at:i]
            _, equals, value = head[i].partition("=")
            values.append(value if equals else head[i + 1])
            at = i + (1 if equals else 2)
        kept += head[at:]
        head = [*kept[: envs[0]], "--env", _ENV_JOIN.join(values), *kept[envs[0] :]]
    if rest and rest[0] != "--" and rest not in (["--help"], ["-h"]):
        rest = ["--", *rest]
    return [*head, *rest]


# --------------------------------------------------------------------------------------------------
# connecting


def controller_addr(
    flag: str | None = None, config: Path | str | None = None, env: Mapping[str, str] = os.environ
) -> str:
    """The controller address: ``flag``, else BURST_CONTROLLER in ``env``, else
    ``cli.controller_addr`` of the configuration file, else the default. Raises ConfigError."""
    from burstd.config import load_config, with_overrides

    cli_config = load_config(config, env=env).cli
    return with_overrides(cli_config, controller_addr=flag, env=env).controller_addr


def client_token(
    token_file: Path | None = None,
    state_dir: Path | None = None,
    config: Path | str | None = None,
    env: Mapping[str, str] = os.environ,
) -> str:
    """The token ``burst`` sends (see ``burstd.credentials``). Raises ConfigError, or
    UsageError when there is none."""
    from burstd import credentials
    from burstd.config import load_config

    loaded = load_config(config, env=env)
    try:
        return credentials.find_token(
            token_file=token_file,
            config_token_file=loaded.cli.token_file,
            state_dir=state_dir or loaded.controller.state_dir,
            default_name=credentials.ADMIN_TOKEN,
            env=env,
        )
    except credentials.TokenNotFound as error:
        raise UsageError(str(error)) from None


def client_tls(
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    config: Path | str | None = None,
    env: Mapping[str, str] = os.environ,
) -> ssl.SSLContext | None:
    """The TLS context ``burst`` connects with (None: no TLS): each file is the flag, else its
    BURST_TLS_* variable in ``env``, else its ``cli`` key (burstd/tlsconfig.py). Raises
    ConfigError or UsageError naming what cannot be used."""
    from burstd import tlsconfig
    from burstd.config import load_config, with_overrides

    cli_config = load_config(config, env=env).cli
    settings = with_overrides(cli_config, tls_ca=ca, tls_cert=cert, tls_key=key, env=env)
    try:
        return tlsconfig.client_context(settings, "cli")
    except tlsconfig.TlsSetupError as error:
        raise UsageError(str(error)) from None


def _leaf(error: BaseException, types: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of ``types`` in ``error`` or, for a group, in its members."""
    if isinstance(error, types):
        return error
    if isinstance(error, BaseExceptionGroup):
        for member in error.exceptions:
            found = _leaf(member, types)
            if found is not None:
                return found
    return None


def _code_name(code: object) -> str:
    name = getattr(code, "name", None)
    return name if isinstance(name, str) else str(code)


def _run(session: Callable[[Client], Coroutine[Any, Any, int]], *, calls_only: bool = False) -> int:
    """Connect to the controller, run ``session``; an RPC failure becomes its exit code
    (:func:`cli.exitcodes.for_status`), a controller out of reach ``UNREACHABLE``.

    ``calls_only``: the session makes unary calls and nothing else (no stream, no trio of its
    own), so it runs on a blocking connection (``burstd.transport.oneshot``) without trio or
    purerpc, which a command would otherwise spend most of its start-up importing; else in
    trio."""
    addr = controller_addr(_globals.controller, _globals.config)
    token = client_token(_globals.token_file, _globals.state_dir, _globals.config)
    tls = client_tls(_globals.tls_ca, _globals.tls_cert, _globals.tls_key, _globals.config)
    from burstd import logs
    from burstd.transport import RpcError

    try:
        logs.setup_logging("WARNING", component="cli", defer=True)
    except ValueError as error:  # a bad BURST_LOG
        raise UsageError(str(error)) from None

    try:
        return (_run_oneshot if calls_only else _run_trio)(session, addr, token, tls)
    except BaseException as error:
        found = _leaf(error, (RpcError, OSError, Failure))
        if found is None:
            raise
        if isinstance(found, BrokenPipeError):  # our stdout, closed by the reader
            raise found from None
        if isinstance(found, Failure):
            raise found from None
        if isinstance(found, OSError):
            raise Failure(
                ExitCode.UNREACHABLE,
                f"cannot reach controller at {addr}: {found.strerror or found}",
            ) from None
        assert isinstance(found, RpcError)
        code, message = _code_name(found.code), found.message
        if code == "UNAVAILABLE" and "cannot reach controller" not in message:
            message = f"cannot reach controller at {addr}: {message}"
        if code == "UNAVAILABLE" and tls is None and "closed by peer" in message:
            message += " (a controller that serves TLS closes clear-text connections: --tls-ca)"
        raise Failure(for_status(code), f"{code}: {message}") from None


def _run_trio(
    session: Callable[[Client], Coroutine[Any, Any, int]],
    addr: str,
    token: str,
    tls: ssl.SSLContext | None,
) -> int:
    import trio

    from burstd.client import Client

    async def connected() -> int:
        async with Client.connect(addr, token=token, tls=tls) as client:
            return await session(client)

    return trio.run(connected)


def _run_oneshot(
    session: Callable[[Client], Coroutine[Any, Any, int]],
    addr: str,
    token: str,
    tls: ssl.SSLContext | None,
) -> int:
    from burstd import credentials
    from burstd.client import Client
    from burstd.config import parse_hostport
    from burstd.transport import oneshot

    host, port = parse_hostport(addr)
    with oneshot.Channel(host, port, metadata=credentials.bearer(token), tls=tls) as channel:
        # Its unary calls are those of the trio channel; the session makes no other.
        client = Client(cast("Channel", channel))
        return oneshot.run(session(client))


def _generator(iterator: AsyncIterator[T]) -> AsyncGenerator[T, None]:
    """The client's async iterators are generators: typed so, ``aclosing`` can close them early."""
    return cast("AsyncGenerator[T, None]", iterator)


def _error(message: str, kind: str = "error") -> None:
    print(f"burst: {kind}: {message}", file=sys.stderr, flush=True)


def _write_lines(lines: Iterable[str]) -> None:
    out = sys.stdout
    for line in lines:
        out.write(line + "\n")
    out.flush()


def _as_dict(message: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict  # type: ignore[import-untyped]

    data: dict[str, Any] = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return data


def _to_json(data: Mapping[str, Any]) -> str:
    import json

    return json.dumps(data, ensure_ascii=False)


# JobInfo's times: seconds since the epoch on the wire (0: not reached), ISO 8601 UTC in JSON.
_TIMES = ("submitted_at", "started_at", "finished_at")


def _iso(seconds: float) -> str | None:
    """``seconds`` since the epoch in ISO 8601 UTC (``2026-12-07T16:56:47.123456Z``); 0: None."""
    if not seconds:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _job_json(info: job_pb2.JobInfo) -> str:
    """One job as a JSON object with every key of every job: a value that does not apply (no exit
    code after a signal, a time not reached) is null; times are ISO 8601 UTC."""
    given = _as_dict(info)
    data = {  # in the fields' order, the unset ones with the rest
        field.name: None
        if field.has_presence and not info.HasField(field.name)
        else given[field.name]
        for field in info.DESCRIPTOR.fields
    }
    for name in _TIMES:
        data[name] = _iso(getattr(info, name))
    data["attempts"] = [_attempt_dict(attempt) for attempt in info.attempts]
    return _to_json(data)


def _attempt_dict(attempt: job_pb2.AttemptOutput) -> dict[str, Any]:
    """One attempt as ``_job_json`` has it: every key, null where it does not apply, times in
    ISO 8601 UTC, the usage's integers as numbers."""
    given = _as_dict(attempt)
    data = {
        field.name: None
        if field.has_presence and not attempt.HasField(field.name)
        else given[field.name]
        for field in attempt.DESCRIPTOR.fields
    }
    for name in ("started_at", "finished_at"):
        data[name] = _iso(getattr(attempt, name))
    if data["usage"] is not None:
        data["usage"]["max_rss_kib"] = attempt.usage.max_rss_kib
    return data


def _outcome(info: job_pb2.JobInfo) -> str:
    """How a job ended, in one word or two: ``exit 3``, ``signal 9``, ``timeout``... ``-``."""
    return _outcome_of(
        info.reason, info.state, info.HasField("exit_code"), info.exit_code, info.signal
    )


def _outcome_of(reason: str, state: str, has_exit_code: bool, exit_code: int, signal: int) -> str:
    """``_outcome`` of a job given as these fields of its JobInfo."""
    if reason == "exit" or (state == "succeeded" and has_exit_code):
        return f"exit {exit_code}"
    if reason == "signal":
        return f"signal {signal}"
    return reason or "-"


# --------------------------------------------------------------------------------------------------
# submit


def submit(
    *tokens: Annotated[str, _TOKENS],
    output_dir: Annotated[str | None, Parameter(metavar="DIR")] = None,
    env: Annotated[tuple[str, ...], Parameter(metavar="KEY=VALUE", negative=())] = (),
    cwd: Annotated[str | None, Parameter(metavar="DIR")] = None,
    timeout: Annotated[
        float | None, Parameter(metavar="SECONDS", validator=validators.Number(gte=0))
    ] = None,
    retries: Annotated[int, Parameter(metavar="N", validator=validators.Number(gte=0))] = 0,
    name: Annotated[str, Parameter(metavar="NAME")] = "",
    retry_on_exit: Annotated[str | None, Parameter(metavar="CODES")] = None,
    crash_limit: Annotated[
        int, Parameter(metavar="N", validator=validators.Number(gte=0, lte=MAX_CRASH_LIMIT))
    ] = 0,
    after: Annotated[tuple[str, ...], Parameter(metavar="ID[,ID...]", negative=())] = (),
    after_any: Annotated[tuple[str, ...], Parameter(metavar="ID[,ID...]", negative=())] = (),
    priority: Annotated[
        int,
        Parameter(
            metavar="N",
            validator=validators.Number(gte=-MAX_PRIORITY, lte=MAX_PRIORITY),
            allow_leading_hyphen=True,
        ),
    ] = 0,
    retry_delay: Annotated[
        float, Parameter(metavar="SECONDS", validator=validators.Number(gte=0))
    ] = 0.0,
    max_fails: Annotated[
        int, Parameter(metavar="N", validator=validators.Number(gte=0, lte=2**32 - 1))
    ] = 0,
    array: Annotated[str | None, Parameter(metavar="SPEC")] = None,
    each_line: Annotated[str | None, Parameter(metavar="FILE", allow_leading_hyphen=True)] = None,
    then_wait: Annotated[bool, Parameter(name="--wait")] = False,
    stdout: Annotated[str | None, Parameter(metavar="PATTERN")] = None,
    stderr: Annotated[str | None, Parameter(metavar="PATTERN")] = None,
    output: Literal["files", "stream"] = "files",
    cpus: Annotated[int | None, Parameter(metavar="N", validator=validators.Number(gte=1))] = None,
    mem: Annotated[str | None, Parameter(metavar="SIZE")] = None,
    gpus: Annotated[int, Parameter(metavar="N", validator=validators.Number(gte=0))] = 0,
    resource: Annotated[tuple[str, ...], Parameter(metavar="NAME=AMOUNT", negative=())] = (),
    quiet: Annotated[bool, Parameter(name="--quiet", negative=())] = False,
) -> int:
    """Submit jobs; prints one job id per line (with --quiet, the submission id alone).

    With --wait, then waits for them as `burst wait` does (progress on stderr, each failed or
    cancelled job on stdout, its exit code).

    Everything after CMD, ENTRY or IMAGE is the job's argv, passed verbatim (never through a
    shell), but for its placeholders, filled per job: {index} (--array), {entry} (--each-line),
    {job_id} (other braces pass as they are; {{index}} is a literal {index}). Options go before
    the kind.

    Parameters
    ----------
    output_dir
        Folder for `<job_id>.stdout` and `.stderr` (a relative one is taken in the job's working
        directory); default: the worker's output folder.
    env
        KEY=VALUE added to the job's environment; repeatable.
    cwd
        Working directory of the job (a relative one is taken here); default: the directory
        burst submit runs in. For docker, the working directory in the container (default: the
        image's).
    timeout
        Wall-clock limit in seconds (SIGTERM, then SIGKILL); default: none.
    retries
        How many times a non-zero exit is run again (default 0).
    name
        Label shown by status --json and list.
    retry_on_exit
        Comma-separated exit codes (0-255): a failure is retried (--retries) only if it exited
        with one of them; default: any failure.
    crash_limit
        How many times the jobs' workers may be lost before they fail (reason worker_lost);
        default (0): the controller's crash limit.
    after
        Job or submission ids (a submission stands for every job of it): the jobs wait (state
        waiting) until every one succeeded, and fail (reason dependency_failed) as soon as one
        fails or is cancelled; repeatable.
    after_any
        Job or submission ids: the jobs wait until every one ended, whatever the outcome;
        repeatable.
    priority
        -1000 to 1000 (default 0): jobs of a higher priority start first, in the order they
        were submitted within one; within one priority, free slots go round the users.
    retry_delay
        Seconds a failed job waits (state waiting) before its first retry (--retries),
        doubled at each retry after it and stretched by up to half at random; default 0:
        retried at once.
    max_fails
        Once N jobs of this submission failed (after their retries), cancel the rest of it
        (waiting, queued and running jobs); default 0: never.
    array
        One job per index, each with BURST_ARRAY_INDEX: comma-separated N, START-END
        (inclusive) or START-END:STEP items, e.g. 0-999, 1-100:2, 1,3,7-9.
    each_line
        One job per non-blank line of FILE ("-": standard input), each with BURST_ENTRY (the
        line without its LF or CRLF).
    then_wait
        Then wait until they have ended; exit 0 only if all succeeded.
    stdout
        Name of each job's stdout file inside the output folder, with placeholders {job_id},
        {index} (arrays), {attempt}, {submission}; default `{job_id}.stdout`.
    stderr
        The same for stderr; default `{job_id}.stderr`.
    output
        files: two files per job; stream: the output of all jobs of this submission in a few
        log files per worker (read back with `burst logs`).
    cpus
        CPUs each job needs (default 1): it runs on a worker with that many free, with
        BURST_CPUS set (and pinned to them on a worker run with --bind-cpus).
    mem
        Memory each job may use, such as 4G (default: no claim): it runs where that much is
        free, and is stopped with reason `memory` if it uses more.
    gpus
        GPUs each job needs (default 0), its own ones: CUDA_VISIBLE_DEVICES and BURST_GPUS
        name them.
    resource
        NAME=AMOUNT of a named resource the workers offer (--resource licence=1,
        --resource scratch=100G); repeatable.
    quiet
        Print the submission's id (`sub-…`, for status, wait, cancel, list --submission and
        resubmit) instead of the job ids.
    """
    if not tokens:
        raise UsageError("submit: name the job: process CMD, python ENTRY or docker IMAGE")
    if tokens[0].startswith("-") and tokens[0] not in ("--", *_apps()[1].help_flags):
        # (cyclopts would call it an unknown command: the kind's place is where it stands)
        raise UsageError(f"submit: unknown option {tokens[0]}")
    job = _job_command(tokens)
    if not isinstance(job, JobCommand):  # help was printed
        return ExitCode.OK
    if array is not None and each_line is not None:
        raise UsageError("--array and --each-line exclude each other")
    if after and after_any:
        raise UsageError("--after and --after-any exclude each other")
    try:
        here = os.getcwd()
    except OSError as error:
        raise UsageError(f"cannot read the current directory: {error.strerror}") from None
    cwd, output_dir = job_dirs(job.kind, here, cwd=cwd, output_dir=output_dir)
    spec = build_spec(
        job,
        output_dir=output_dir,
        env=[item for value in env for item in value.split(_ENV_JOIN)],
        cwd=cwd,
        timeout=timeout,
        retries=retries,
        name=name,
        retry_on_exit=_exit_codes(retry_on_exit) if retry_on_exit is not None else (),
        crash_limit=crash_limit,
        after=_job_ids(after_any or after),
        after_any=bool(after_any),
        priority=priority,
        retry_delay=retry_delay,
        max_fails=max_fails,
    )
    asked = parse_request(cpus, mem, gpus, resource)
    if asked is not None:
        spec.resources.CopyFrom(asked)
    if array is not None:
        parse_array(array)  # refused here, before connecting
    name_outputs(spec, stdout=stdout, stderr=stderr, stream=output == "stream", array=array)
    entries = read_entries(each_line) if each_line is not None else None
    if entries == []:
        print(f"burst: {each_line}: no lines, nothing submitted", file=sys.stderr)
        return 0

    async def session(client: Client) -> int:
        if array is not None:
            ids = await client.submit_array(spec, array)
        elif entries is not None:
            ids = await client.submit_entries(spec, entries)
        else:
            from burstd import client as client_module
            from burstd import wire

            job_id = await client.submit(spec)
            ids = client_module.Submitted([job_id], wire.alone(job_id))
        _write_lines([ids.submission_id] if quiet else ids)
        return await _follow(client, ids) if then_wait else 0

    # (--wait follows the jobs over a stream: trio)
    return _run(session, calls_only=not then_wait)


@_command("submit", usage=_SUBMIT_USAGE.format("process CMD [ARGS...]"))
def process(cmd: Annotated[str, _RAW], /, *args: Annotated[str, _RAW]) -> JobCommand:
    """Run CMD with ARGS as its argv (CMD is looked up in the worker's PATH).

    Parameters
    ----------
    cmd
        The program to run.
    args
        Its arguments, verbatim.
    """
    return JobCommand("process", cmd, args)


@_command("submit", usage=_SUBMIT_USAGE.format("python ENTRY [ARGS...]"))
def python(entry: Annotated[str, _RAW], /, *args: Annotated[str, _RAW]) -> JobCommand:
    """Run the worker's Python interpreter with ENTRY and ARGS (e.g. script.py, -m pkg, -c CODE).

    Parameters
    ----------
    entry
        The script (or -m, -c...), the interpreter's first argument.
    args
        The following arguments, verbatim.
    """
    return JobCommand("python", entry, args)


@_command("submit", usage=_SUBMIT_USAGE.format("docker IMAGE [ARGS...]"))
def docker(image: Annotated[str, _RAW], /, *args: Annotated[str, _RAW]) -> JobCommand:
    """Run `docker run IMAGE [ARGS...]` on the worker (its container removed when it ends).

    Parameters
    ----------
    image
        The image to run.
    args
        The container's command and arguments, verbatim.
    """
    return JobCommand("docker", image, args)


_KIND_COMMANDS = {command.__name__: command for command in (process, python, docker)}
KINDS = tuple(_KIND_COMMANDS)
"""The job kinds of ``burst submit``, each a subcommand."""


def _job_command(tokens: Sequence[str]) -> object:
    """What the words after ``burst submit``'s options name: a :class:`JobCommand`, or what the
    kind's help returned. A line that :func:`prepare_argv` marked (``KIND -- TARGET ARGS...``)
    calls the kind's command with its words, as cyclopts binds them (the first word is TARGET,
    every other one an argument, verbatim), without building cyclopts; any other goes to it."""
    if len(tokens) > 2 and tokens[0] in KINDS and tokens[1] == "--":
        return _KIND_COMMANDS[tokens[0]](tokens[2], *tokens[3:])
    return _apps()[1](tokens)


# --------------------------------------------------------------------------------------------------
# status, cancel, list, workers


def _known(states: Iterable[str]) -> int:
    """OK, or NO_SUCH_JOB when a state is ``unknown`` (an id the controller does not know)."""
    return ExitCode.NO_SUCH_JOB if "unknown" in states else ExitCode.OK


def _is_submission(text: str) -> bool:
    from burstd import wire

    return text.startswith(wire.SUBMISSION_ID_PREFIX)


# (waiting last: it came last, and lines read by position keep their meaning)
_SUBMISSION_STATES = ("queued", "leased", "running", "succeeded", "failed", "cancelled", "waiting")


def _submission_line(info: job_pb2.SubmissionInfo) -> str:
    """``sub-00000001 total 10 queued 2 leased 0 running 1 succeeded 7 failed 0 cancelled 0
    waiting 0``."""
    counts = " ".join(f"{state} {getattr(info, state)}" for state in _SUBMISSION_STATES)
    return f"{info.submission_id} total {info.total} {counts}"


def _submission_json(info: job_pb2.SubmissionInfo) -> str:
    data = _as_dict(info)
    data["submitted_at"] = _iso(info.submitted_at)
    for key in ("total", *_SUBMISSION_STATES):
        data[key] = int(data[key])
    return _to_json(data)


@_command("burst", usage="Usage: burst status [--json] (JOB | SUB)...")
def status(
    *job: str,
    job_id: Annotated[tuple[str, ...], Parameter(name="--job-id", metavar="JOB")] = (),
    json: Annotated[bool, Parameter(name="--json")] = False,
) -> int:
    """Print `<job_id> <state>` per job (unknown for an id never submitted: exit 4), and for a
    queued job that waits beyond its turn why, in parentheses (no worker has what it asks for);
    for a submission (`sub-…`) its jobs counted per state.

    Parameters
    ----------
    job
        Job ids, or submission ids.
    job_id
        A job id, as the prototype's `status --job-id ID`; repeatable.
    json
        One JSON object per line with everything known about the job instead.
    """
    as_json = json
    jobs = (*job, *job_id)
    if not jobs:
        raise UsageError("status: name at least one job id")

    async def session(client: Client) -> int:
        states = []
        for one in jobs:
            if _is_submission(one):
                counts = await client.submission(one)
                _write_lines([_submission_json(counts) if as_json else _submission_line(counts)])
                continue
            info = await client.status(one)
            states.append(info.state or "unknown")
            # A queued job that waits beyond its turn says why (JobInfo.waiting).
            text = f"{one} {states[-1]}" + (f" ({info.waiting})" if info.waiting else "")
            _write_lines([_job_json(info) if as_json else text])
        return _known(states)

    return _run(session, calls_only=True)


@_command("burst", usage="Usage: burst cancel (JOB... | SUB... | --all | --state STATE)")
def cancel(
    *job: str,
    all_jobs: Annotated[bool, Parameter(name="--all", negative=())] = False,
    state: Literal["waiting", "queued", "leased", "running"] | None = None,
) -> int:
    """Cancel jobs that have not ended; prints `<job_id> <state>` (the state afterwards; unknown
    for an id never submitted: exit 4), and for a submission, --all or --state how many were
    cancelled.

    Parameters
    ----------
    job
        Job ids, or submission ids (`sub-…`: every unfinished job of it).
    all_jobs
        Every unfinished job of yours.
    state
        Every job of yours in this state.
    """
    submissions = [one for one in job if _is_submission(one)]
    jobs = [one for one in job if not _is_submission(one)]
    if not job and not all_jobs and state is None:
        raise UsageError("cancel: name job or submission ids, or give --all or --state")

    async def session(client: Client) -> int:
        states: list[str] = []
        if jobs:
            states = await client.cancel(jobs)
            _write_lines(f"{job_id} {state}" for job_id, state in zip(jobs, states, strict=False))
        for submission in submissions:
            count = await client.cancel_matching(submission_id=submission)
            _write_lines([f"{submission} cancelled {count} job{'' if count == 1 else 's'}"])
        if all_jobs or state is not None:
            count = await client.cancel_matching(all=all_jobs, state=state or "")
            _write_lines([f"cancelled {count} job{'' if count == 1 else 's'}"])
        return _known(states)

    return _run(session, calls_only=True)


@_command("burst", usage="Usage: burst forget (JOB... | --finished [--older-than SECONDS])")
def forget(
    *job: str,
    finished: Annotated[bool, Parameter(name="--finished")] = False,
    older_than: Annotated[
        float | None, Parameter(metavar="SECONDS", validator=validators.Number(gte=0))
    ] = None,
) -> int:
    """Forget finished jobs, so status and list no longer show them; prints how many were.

    Jobs that have not ended (queued, leased, running) are never forgotten.

    Parameters
    ----------
    job
        Job ids.
    finished
        Every finished job instead.
    older_than
        With --finished: only jobs that finished at least this many seconds ago.
    """
    if bool(job) == finished:
        raise UsageError("forget: name job ids or give --finished (not both)")
    if older_than is not None and not finished:
        raise UsageError("forget: --older-than goes with --finished")

    async def session(client: Client) -> int:
        if finished:
            count = await client.forget_finished(older_than or 0.0)
        else:
            count = await client.forget(job)
        _write_lines([f"forgot {count} job{'' if count == 1 else 's'}"])
        return 0

    return _run(session, calls_only=True)


LIST_PAGE = 5000
"""Jobs per ListJobs call of ``burst list``."""


def _human(seconds: float) -> str:
    """A time for a table: local, to the second; ``-`` when not reached."""
    if not seconds:
        return "-"
    return datetime.datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S")


def _dashed(values: Iterable[str]) -> list[str]:
    """Each value, ``-`` for an empty one."""
    return [value or "-" for value in values]


def _used(columns: job_pb2.JobColumns, show: Callable[[job_pb2.Usage], str]) -> list[str]:
    """What each job's last attempt used, as ``show`` writes it; ``-`` if not measured."""
    return [
        show(usage) if measured else "-"
        for usage, measured in zip(columns.usage, columns.has_usage, strict=True)
    ]


# The fields an outcome is made of (``_outcome_of``).
_OUTCOME = ("reason", "state", "has_exit_code", "exit_code", "signal")
# The reasons ``_outcome`` spells out with a number.
_SPELLED_OUT = frozenset(("exit", "signal"))


def _outcomes(columns: job_pb2.JobColumns) -> Iterable[str]:
    """Each job's ``_outcome``."""
    reasons = list(columns.reason)
    if not _SPELLED_OUT.isdisjoint(reasons) or any(columns.has_exit_code):
        return map(_outcome_of, *(getattr(columns, field) for field in _OUTCOME))
    return _dashed(reasons)  # (most pages: nothing ended with an exit code or a signal)


@dataclasses.dataclass(frozen=True)
class Column:
    """A column of ``burst list``: the JobColumns fields it needs, and its text for each job of
    a page (one value a job, in order)."""

    fields: tuple[str, ...]
    show: Callable[[job_pb2.JobColumns], Iterable[str]]


_USAGE = ("usage", "has_usage")

#: The columns ``burst list --format`` knows.
COLUMNS: dict[str, Column] = {
    "id": Column(("job_id",), lambda c: c.job_id),
    "owner": Column(("owner",), lambda c: _dashed(c.owner)),
    "state": Column(("state",), lambda c: c.state),
    "worker": Column(("worker_id",), lambda c: _dashed(c.worker_id)),
    "outcome": Column(_OUTCOME, lambda c: _outcomes(c)),
    "name": Column(("name",), lambda c: _dashed(c.name)),
    "submission": Column(("submission_id",), lambda c: _dashed(c.submission_id)),
    "priority": Column(("priority",), lambda c: map(str, c.priority)),
    "attempt": Column(("attempt",), lambda c: map(str, c.attempt)),
    "exit": Column(
        ("has_exit_code", "exit_code"),
        lambda c: [
            str(code) if has else "-"
            for has, code in zip(c.has_exit_code, c.exit_code, strict=True)
        ],
    ),
    "signal": Column(("signal",), lambda c: [str(s) if s else "-" for s in c.signal]),
    "reason": Column(("reason",), lambda c: _dashed(c.reason)),
    "submitted": Column(("submitted_at",), lambda c: map(_human, c.submitted_at)),
    "started": Column(("started_at",), lambda c: map(_human, c.started_at)),
    "finished": Column(("finished_at",), lambda c: map(_human, c.finished_at)),
    "user_cpu": Column(_USAGE, lambda c: _used(c, lambda u: f"{u.user_cpu_seconds:.3f}")),
    "system_cpu": Column(_USAGE, lambda c: _used(c, lambda u: f"{u.system_cpu_seconds:.3f}")),
    "max_rss_kib": Column(_USAGE, lambda c: _used(c, lambda u: str(u.max_rss_kib))),
    "command": Column(("command",), lambda c: [" ".join(argv.args) or "-" for argv in c.command]),
}
DEFAULT_COLUMNS = ("id", "state", "worker", "outcome", "name")


def _table(columns: job_pb2.JobColumns, shown: Sequence[Column]) -> str:
    """The lines of ``burst list`` for a page of jobs: the shown columns, space-separated."""
    texts = [column.show(columns) for column in shown]
    return "".join([" ".join(row) + "\n" for row in zip(*texts, strict=True)])


def parse_columns(text: str) -> list[str]:
    """The comma-separated column names of ``--format``; UsageError naming an unknown one."""
    names = [name.strip() for name in text.split(",")]
    for name in names:
        if name not in COLUMNS:
            raise UsageError(f"--format: unknown column {name!r} (columns: {', '.join(COLUMNS)})")
    return names


@_command(
    "burst",
    name="list",
    usage="Usage: burst list [--state STATE] [--submission SUB] [--name NAME] [--limit N]"
    " [--all-users] [--format COLUMNS | --json]",
)
def list_jobs(
    *,
    state: State | None = None,
    submission: Annotated[str, Parameter(metavar="SUB")] = "",
    name: Annotated[str, Parameter(metavar="NAME")] = "",
    limit: Annotated[int | None, Parameter(metavar="N", validator=validators.Number(gte=1))] = None,
    all_users: Annotated[bool, Parameter(name="--all-users", negative=())] = False,
    format: Annotated[str | None, Parameter(metavar="COLUMNS")] = None,
    json: Annotated[bool, Parameter(name="--json")] = False,
) -> int:
    """List your jobs in submission order: `<job_id> <state> <worker> <exit/reason> <name>` per
    line.

    Parameters
    ----------
    state
        Only jobs in this state.
    submission
        Only the jobs of this submission (`sub-…`).
    name
        Only the jobs of this name (submit --name).
    limit
        At most this many jobs.
    all_users
        Every user's jobs, with an owner column after the id (admins only).
    format
        The columns, comma-separated, from: id, owner, state, worker, outcome, name,
        submission, attempt, exit, signal, reason, submitted, started, finished (local times),
        user_cpu, system_cpu (seconds), max_rss_kib (of the last attempt), command. Default:
        id,state,worker,outcome,name.
    json
        One JSON object per line with everything known about each job instead (times in
        ISO 8601).
    """
    as_json = json
    if format is not None:
        columns = parse_columns(format)
    else:
        columns = list(DEFAULT_COLUMNS)
        if all_users:
            columns.insert(1, "owner")
    shown = [COLUMNS[column] for column in columns]
    # Only the fields the columns show travel (a command is decoded from each job's spec).
    fields = list(dict.fromkeys(field for column in shown for field in column.fields))
    filters: dict[str, Any] = {"all_users": all_users, "submission_id": submission, "name": name}

    async def session(client: Client) -> int:
        import trio

        async def lines(after: str, size: int) -> tuple[str, int, str]:
            """A page's lines, how many jobs it held, and the ``after`` of the next one."""
            if as_json:
                jobs, after = await client.list_page(state or "", after, size, **filters)
                return "".join([_job_json(info) + "\n" for info in jobs]), len(jobs), after
            page, after = await client.list_columns(fields, state or "", after, size, **filters)
            return _table(page, shown), len(getattr(page, fields[0])), after

        # The next page is asked for while this one is written (a channel of one page).
        send, receive = trio.open_memory_channel[str](1)

        async def fetch() -> None:
            after, left = "", limit
            async with send:
                while left is None or left > 0:
                    text, count, after = await lines(
                        after, LIST_PAGE if left is None else min(left, LIST_PAGE)
                    )
                    await send.send(text)
                    left = None if left is None else left - count
                    if not after:
                        return

        out = sys.stdout
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetch)
            async with receive:
                async for text in receive:
                    out.write(text)
                    out.flush()
        if client.store_error:
            _error(
                f"the controller's state store is failing ({client.store_error}): jobs are"
                " listed as of its last commit",
                "warning",
            )
        return 0

    return _run(session)


def _attempt_line(attempt: job_pb2.AttemptOutput) -> str:
    """One attempt for ``burst info``: where and when it ran, how it ended, what it used."""
    ended = f"exit {attempt.exit_code}" if attempt.HasField("exit_code") else attempt.reason
    if attempt.signal:
        ended = f"signal {attempt.signal}"
    line = (
        f"  attempt {attempt.attempt} on {attempt.worker_id or '-'}:"
        f" started {_human(attempt.started_at)}, ended {_human(attempt.finished_at)}"
        f" ({ended or 'not yet'}"
        + (f", {attempt.reason}" if attempt.reason not in ("", "exit", "signal") else "")
        + ")"
    )
    if attempt.HasField("usage"):
        usage = attempt.usage
        line += (
            f", cpu {usage.user_cpu_seconds:.3f} s user {usage.system_cpu_seconds:.3f} s"
            f" system, peak memory {usage.max_rss_kib} KiB"
        )
    return line


def _info_lines(info: job_pb2.JobInfo) -> list[str]:
    """``burst info``'s view of a job."""
    lines = [
        f"job {info.job_id} ({info.state}{', ' + _outcome(info) if info.reason else ''})",
        f"  submission {info.submission_id or '-'}, name {info.name or '-'},"
        f" owner {info.owner or '-'}",
        f"  {info.kind or 'command'}: {shlex.join(info.command) if info.command else '-'}",
        f"  working directory: {info.cwd or 'the worker' + chr(39) + 's'}",
        f"  environment: {', '.join(info.env_names) or '-'}",
        f"  submitted {_human(info.submitted_at)}, started {_human(info.started_at)},"
        f" finished {_human(info.finished_at)}",
    ]
    if info.after:
        kind = "after-any" if info.after_any else "after"
        lines.append(f"  dependencies ({kind}): {', '.join(info.after)}")
    if info.error_message:
        lines.append(f"  error: {info.error_message}")
    lines.append(f"  attempts: {len(info.attempts) or '-'}")
    lines += [_attempt_line(attempt) for attempt in info.attempts]
    return lines


@_command("burst", usage="Usage: burst info [--json] JOB...")
def info(*job: str, json: Annotated[bool, Parameter(name="--json")] = False) -> int:
    """Show everything known about jobs: command, working directory, the names of the
    variables the job adds to the environment (never their values), its dependencies (--after
    or --after-any), and every attempt (worker, start and end, exit code
    or signal, CPU time and peak memory). Exit 4 for an unknown id.

    Parameters
    ----------
    job
        Job ids.
    json
        One JSON object per job instead (as status --json: times in ISO 8601).
    """
    as_json = json
    if not job:
        raise UsageError("info: name at least one job id")

    async def session(client: Client) -> int:
        states = []
        for one in job:
            found = await client.status(one)
            states.append(found.state or "unknown")
            if as_json:
                _write_lines([_job_json(found)])
            elif found.state == "unknown":
                _write_lines([f"{one} unknown"])
            else:
                _write_lines(_info_lines(found))
        return _known(states)

    return _run(session, calls_only=True)


@_command("burst", usage="Usage: burst resubmit SUB --failed [--quiet]")
def resubmit(
    submission: str,
    /,
    *,
    failed: Annotated[bool, Parameter(name="--failed", negative=())] = False,
    quiet: Annotated[bool, Parameter(name="--quiet", negative=())] = False,
) -> int:
    """Submit the failed jobs of a submission again, as a new submission with their specs;
    prints the new job ids, one per line (with --quiet, the new submission's id).

    Parameters
    ----------
    submission
        The submission (`sub-…`).
    failed
        Its failed jobs (required: the only choice so far).
    quiet
        Print the new submission's id instead of the job ids.
    """
    if not failed:
        raise UsageError("resubmit: say which jobs: --failed")

    async def session(client: Client) -> int:
        ids = await client.resubmit_failed(submission)
        _write_lines([ids.submission_id] if quiet else ids)
        return 0

    return _run(session, calls_only=True)


@_command("burst", usage="Usage: burst workers [--json]")
def workers(*, json: Annotated[bool, Parameter(name="--json")] = False) -> int:
    """Show the workers: id, host, slots, leased and running jobs, last seen.

    Parameters
    ----------
    json
        One JSON object per worker and line instead of the table.
    """
    as_json = json

    async def session(client: Client) -> int:
        found = await client.workers()
        if as_json:
            _write_lines(_to_json(_as_dict(w)) for w in found)
            return 0
        rows = [("ID", "HOST", "SLOTS", "LEASED", "RUNNING", "LAST SEEN", "STATE")]
        rows += [
            (
                w.worker_id,
                w.hostname or "-",
                str(w.slots),
                str(w.leased),
                str(w.running),
                f"{w.last_seen_ago:.1f}s ago",
                w.state,
            )
            for w in found
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        _write_lines(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in rows
        )
        return 0

    return _run(session, calls_only=True)


@_command("burst", usage="Usage: burst drain WORKER")
def drain(worker: str, /) -> int:
    """Give a worker no new work (admin): the jobs it holds run to their end there.

    It shows as draining in `burst workers`. The drain is stored: the worker id stays drained
    when it registers again (a restarted worker, or after a controller restart) until
    `burst undrain WORKER`.

    Parameters
    ----------
    worker
        The worker's id, as `burst workers` shows it.
    """

    async def session(client: Client) -> int:
        info = await client.drain(worker)
        assert info is not None  # a drained worker is a registered one
        print(f"{info.worker_id}: draining, {info.leased} jobs held ({info.running} running)")
        return 0

    return _run(session, calls_only=True)


# A follower's long poll for new events, in ms.
EVENTS_WAIT_MS = 30_000


@_command("burst", usage="Usage: burst events [--follow] [--job ID] [--worker ID] [--json]")
def events(
    *,
    follow: Annotated[bool, Parameter(name=["--follow", "-f"])] = False,
    job: Annotated[str, Parameter(name="--job", metavar="ID")] = "",
    worker: Annotated[str, Parameter(name="--worker", metavar="ID")] = "",
    json: Annotated[bool, Parameter(name="--json")] = False,
) -> int:
    """Show the stored event log, oldest first: jobs submitted, leased, stolen, started,
    retried, lost, fenced and ended; workers registered, drained, undrained, lost and removed
    (an admin's token sees the workers' events, a client's only jobs').

    Parameters
    ----------
    follow
        Then keep printing new events as they happen, until Ctrl-C.
    job
        Only this job's events.
    worker
        Only the events naming this worker (its own, and its jobs').
    json
        One JSON object per event and line (seq, time in ISO 8601 UTC, kind, job_id,
        worker_id, attempt, detail).
    """
    as_json = json

    def line(event: job_pb2.ClusterEvent) -> str:
        if as_json:
            return _to_json({**_as_dict(event), "seq": event.seq, "time": _iso(event.time)})
        attempt = f"attempt {event.attempt}" if event.attempt else ""
        cells = (event.job_id or "-", event.kind, event.worker_id or "-", attempt, event.detail)
        return f"{_iso(event.time)}  " + "  ".join(f"{cell:<12}" for cell in cells).rstrip()

    async def session(client: Client) -> int:
        after, caught_up = 0, False
        while True:
            reply = await client.events(
                after, job_id=job, worker_id=worker, wait_ms=EVENTS_WAIT_MS if caught_up else 0
            )
            _write_lines(line(event) for event in reply.events)
            caught_up = reply.next_after == after or not reply.events
            if caught_up and not follow:
                return 0
            after = reply.next_after

    return _run(session)


@_command("burst", usage="Usage: burst top")
def top() -> int:
    """A live view of the cluster (admin), refreshed every second: the workers (running jobs,
    slots, jobs/s, last heartbeat), the jobs by state, the throughput, the latest failures.

    Keys: i, r, j, h sort the workers by id, running jobs, jobs/s, last heartbeat; q quits.
    """
    from cli.top import run_top

    addr = controller_addr(_globals.controller, _globals.config)
    return _run(lambda client: run_top(client, addr))


@_command("burst", usage="Usage: burst undrain WORKER")
def undrain(worker: str, /) -> int:
    """End a worker's drain (admin): it gets work again.

    Parameters
    ----------
    worker
        The id of a worker that `burst drain` drained.
    """

    async def session(client: Client) -> int:
        info = await client.drain(worker, undrain=True)
        print(f"{worker}: {'taking work' if info is not None else 'undrained (not registered)'}")
        return 0

    return _run(session, calls_only=True)


# --------------------------------------------------------------------------------------------------
# wait


class Progress:
    """Progress of a wait on stderr: a bar redrawn in place on a terminal, else a plain line at
    most once a second; :meth:`close` writes the summary line.

    The rate is over the jobs waited for, from the submission of the first of them, on the
    controller's clock (``WaitJobsUpdate.first_submitted_at`` and ``sent_at``), also for those
    that ended before the wait began; a wait on every job (which has no such start) counts the
    jobs that ended since its first update. No rate is shown before a job has ended.
    """

    def __init__(
        self, stream: TextIO, *, tty: bool, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stream = stream
        self.tty = tty
        self.clock = clock
        self.started = clock()
        self.first_done: int | None = None
        self.last: job_pb2.WaitJobsUpdate | None = None
        self.shown_at: float | None = None
        self.bar_shown = False

    def _rate(self, u: job_pb2.WaitJobsUpdate) -> float | None:
        """Jobs per second, None before there is one to count."""
        done = u.total - u.pending
        if u.first_submitted_at:
            elapsed = u.sent_at - u.first_submitted_at
        else:
            elapsed = self.clock() - self.started
            done -= self.first_done or 0
        return done / elapsed if done > 0 and elapsed > 0 else None

    def update(self, update: job_pb2.WaitJobsUpdate) -> None:
        done = update.total - update.pending
        if self.first_done is None:
            self.first_done = done
        self.last = update
        now = self.clock()
        interval = 0.1 if self.tty else 1.0
        if self.shown_at is not None and now - self.shown_at < interval and update.pending:
            return
        self.shown_at = now
        if self.tty:
            self.stream.write("\r" + self._bar(update) + "\x1b[K")
            self.bar_shown = True
        elif update.pending:  # (the summary line follows the last update)
            rate = self._rate(update)
            shown = f", {rate:.1f} jobs/s" if rate is not None else ""
            self.stream.write(f"burst: {self._counts(update)}{shown}\n")
        self.stream.flush()

    def clear(self) -> None:
        """Remove the bar (before other output to the terminal)."""
        if self.tty and self.bar_shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.bar_shown = False

    @staticmethod
    def _counts(u: job_pb2.WaitJobsUpdate) -> str:
        return (
            f"{u.total - u.pending}/{u.total} done: {u.succeeded} succeeded, {u.failed} failed, "
            f"{u.cancelled} cancelled"
        )

    def _bar(self, u: job_pb2.WaitJobsUpdate) -> str:
        import shutil

        done = u.total - u.pending
        rate = self._rate(u)
        text = (
            f" {done}/{u.total}  ok {u.succeeded}  failed {u.failed}  cancelled {u.cancelled}"
            + (f"  {rate:.1f}/s" if rate is not None else "")
        )
        columns = shutil.get_terminal_size((80, 24)).columns
        width = max(10, min(40, columns - len(text) - 3))
        filled = width * done // u.total if u.total else width
        return ("[" + "#" * filled + "-" * (width - filled) + "]" + text)[: max(columns - 1, 1)]

    def close(self) -> None:
        """The summary line, replacing the bar."""
        self.clear()
        u = self.last
        elapsed = self.clock() - self.started
        if u is None:
            self.stream.write(f"burst: no answer in {elapsed:.1f} s\n")
        else:
            rate = self._rate(u)
            shown = f" ({rate:.1f} jobs/s)" if rate is not None else ""
            self.stream.write(f"burst: {self._counts(u)} in {elapsed:.1f} s{shown}\n")
        self.stream.flush()


def _failure_line(info: job_pb2.JobInfo) -> str:
    """``<job_id> <state> <reason>: <error>``, e.g. ``job-7 failed timeout: timed out after 5s``."""
    reason = info.reason or "-"
    detail = info.error_message or _outcome(info)
    line = f"{info.job_id} {info.state} {reason}"
    return line if detail in (reason, "-") else f"{line}: {detail}"


@_command("burst", usage="Usage: burst wait (JOB... | SUB | --all) [--timeout SECONDS]")
def wait(
    *job: str,
    all_jobs: Annotated[bool, Parameter(name="--all")] = False,
    timeout: Annotated[
        float | None, Parameter(metavar="SECONDS", validator=validators.Number(gt=0))
    ] = None,
) -> int:
    """Wait until jobs have ended, showing progress on stderr; exit 0 only if all succeeded.

    Each failed or cancelled job named on the command line is printed on stdout as
    `<job_id> <state> <reason>: <error>`. Exits 1 if a job failed or was cancelled, 4 for an
    unknown job id, 5 when --timeout expired first.

    Parameters
    ----------
    job
        Job ids, or one submission id (`sub-…`: every job of it).
    all_jobs
        Wait for every job the controller has instead.
    timeout
        Give up after this many seconds (exit 5).
    """
    if bool(job) == all_jobs:
        raise UsageError("wait: name job ids or give --all (not both)")
    submission = ""
    if any(_is_submission(one) for one in job):
        if len(job) != 1:
            raise UsageError("wait: a submission id goes alone")
        (submission,) = job
        job = ()
    return _run(
        lambda client: _follow(
            client, job, all_jobs=all_jobs, timeout=timeout, submission_id=submission
        )
    )


async def _follow(
    client: Client,
    job_ids: Sequence[str],
    *,
    all_jobs: bool = False,
    timeout: float | None = None,
    submission_id: str = "",
) -> int:
    """Wait for the jobs (``burst wait``, ``burst submit --wait``): progress on stderr, each
    failed or cancelled job on stdout; the exit code of ``burst wait``."""
    import trio

    progress = Progress(sys.stderr, tty=sys.stderr.isatty())
    with trio.move_on_after(timeout if timeout is not None else float("inf")) as scope:
        updates = _generator(client.wait(job_ids, all=all_jobs, submission_id=submission_id))
        async with aclosing(updates):
            async for update in updates:
                failures = [i for i in update.finished if i.state in ("failed", "cancelled")]
                if failures:
                    progress.clear()
                    _write_lines(_failure_line(info) for info in failures)
                progress.update(update)
    progress.close()
    last = progress.last
    if scope.cancelled_caught:
        pending = f"{last.pending} of {last.total} jobs" if last is not None else "jobs"
        _error(f"timed out after {timeout:g} s: {pending} not ended")
        return ExitCode.TIMEOUT
    if last is None or last.pending:
        _error("the controller ended the wait early")
        return ExitCode.UNREACHABLE
    return ExitCode.OK if last.failed == 0 and last.cancelled == 0 else ExitCode.FAILED


@_command("burst", usage="Usage: burst logs JOB [--stderr] [--attempt N] [--tail N] [--follow]")
def logs(
    job: str,
    /,
    *,
    stderr: Annotated[bool, Parameter(name="--stderr", negative=())] = False,
    attempt: Annotated[int, Parameter(metavar="N", validator=validators.Number(gte=1))]
    | None = None,
    tail: Annotated[int, Parameter(metavar="N", validator=validators.Number(gte=1))] | None = None,
    follow: Annotated[bool, Parameter(name="--follow", negative=())] = False,
) -> int:
    """Print a job's output, wherever it ran, through the controller.

    Exits 4 for an unknown job, 1 when the output cannot be read (the job has not started, the
    worker that ran it is gone, the file is missing: the message says which).

    Parameters
    ----------
    job
        Job id.
    stderr
        Its stderr instead of its stdout.
    attempt
        That attempt's output (1 for the first run); default: the latest attempt's.
    tail
        Only the last N lines.
    follow
        Keep printing what the job writes until it ends (a queued job: from its start).
    """

    async def session(client: Client) -> int:
        out = sys.stdout.buffer
        chunks = _generator(
            client.read_output(
                job, stderr=stderr, attempt=attempt or 0, tail=tail or 0, follow=follow
            )
        )
        async with aclosing(chunks):
            async for data in chunks:
                out.write(data)
                out.flush()
        return ExitCode.OK

    return _run(session)


# --------------------------------------------------------------------------------------------------
# entry point


def _direct(tokens: Sequence[str]) -> Callable[[], object] | None:
    """The command of a line that gives no option, for the two commands users run most:
    ``burst status ID...`` (no word starting with ``-``) and ``burst submit KIND -- TARGET
    ARGS...`` as :func:`prepare_argv` marks it; None for any other line, which cyclopts parses.

    Such a line binds no option and every word where cyclopts would (the ids to ``status``'s
    ``job``, the rest to ``submit``'s ``tokens``), the options keep their defaults, the global
    ones included: the function is called with the words, and cyclopts, whose import and
    argument assembly were most of these commands' start-up (docs/benchmarks.md), is not built.
    tests/test_cli_parsing.py runs such lines both ways and compares what they did."""
    if tokens[:1] == ["status"] and not any(token.startswith("-") for token in tokens):
        return functools.partial(status, *tokens[1:])
    if len(tokens) > 3 and tokens[0] == "submit" and tokens[1] in KINDS and tokens[2] == "--":
        return functools.partial(submit, *tokens[1:])
    return None


def _parsed(tokens: Sequence[str]) -> object:
    """Run the line with cyclopts; its errors are UsageErrors."""
    import cyclopts

    app, submit_app = _apps()
    if not set(app.help_flags).isdisjoint(tokens):
        # Help lists each command with its docstring's first line, which cyclopts reads only
        # from a command already resolved (see _command).
        for parent in (app, submit_app):
            parent.resolved_commands()
    try:
        return app.meta(tokens, result_action="return_value")
    except cyclopts.CycloptsError as error:
        raise UsageError(str(error)) from None


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run ``burst`` with ``argv`` (default: ``sys.argv[1:]``) and exit with its status."""
    from burstd.config import ConfigError

    global _globals  # (the meta app sets them from a line's global options; a direct one has none)
    _globals = _Globals()
    tokens = prepare_argv(sys.argv[1:] if argv is None else argv)
    direct = _direct(tokens)
    try:
        try:
            result = direct() if direct is not None else _parsed(tokens)
        finally:
            sys.stdout.flush()  # as `burstd`'s main: a reader gone early is caught below
    except (UsageError, ConfigError) as error:
        _error(" ".join(str(error).split()))
        sys.exit(ExitCode.USAGE)
    except Failure as failure:
        _error(str(failure))
        sys.exit(failure.code)
    except BrokenPipeError:
        reader_gone()
    sys.exit(result if isinstance(result, int) and not isinstance(result, bool) else ExitCode.OK)


if __name__ == "__main__":
    main()

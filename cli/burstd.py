"""`burstd`: run the controller, a worker, or a whole local cluster in the foreground.

Every error is one line on stderr, ``burstd: error: ...``, exit code 2 for a usage or
configuration error; never a traceback.
"""

from __future__ import annotations

import ctypes
import dataclasses
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NoReturn

import cyclopts
import trio
from cyclopts import Parameter

from burstd import __version__, logs, tlsconfig
from burstd.config import (
    Config,
    ConfigError,
    ControllerConfig,
    WorkerConfig,
    format_hostport,
    load_config,
    parse_hostport,
    with_overrides,
    worker_for,
)
from burstd.credentials import ADMIN_TOKEN, WORKER_TOKEN, TokenNotFound, found_token, read_token
from cli.exitcodes import die, reader_gone
from cli.tls import tls_app
from cli.tokens import token_app

# Default queue capacity of the workers of `burstd up`: leasing short jobs in batches of dozens
# saves a poll call per couple of jobs (work stealing rebalances what a worker holds too many of).
UP_QUEUE_CAPACITY = 64
# Default slots of each worker of `burstd up`, at least: a worker's one event loop spawns, reaps
# and reports between its jobs, and with one slot its job and that work alternate instead of
# overlapping (docs/benchmarks.md: one worker runs /bin/true jobs faster with 2 slots than 1).
UP_MIN_SLOTS = 2
_PR_SET_PDEATHSIG = 1  # prctl(2), <linux/prctl.h>

app = cyclopts.App(
    name="burstd",
    help="burst daemons: the controller, a worker, or a local cluster (`burstd up`).",
    version=f"burstd {__version__}",
    version_flags=["--version"],
    # Errors are printed by main, as one line: never cyclopts's boxed panels.
    exit_on_error=False,
    print_error=False,
)
app.command(token_app)
app.command(tls_app)


def _fail(message: str) -> NoReturn:
    die("burstd", message)


def _load(config: Path | None, section: str) -> Config:
    """The configuration, after printing the warnings about keys of ``section`` (the part this
    program reads: retired keys of the prototype, which it ignores)."""
    try:
        loaded = load_config(config)
    except ConfigError as error:
        _fail(str(error))
        raise  # unreachable: _fail exits
    for warning in loaded.warnings_for(section):
        print(f"burstd: warning: {warning}", file=sys.stderr)
    return loaded


def _setup_logs(component: str, level: str, log_format: logs.LogFormat) -> None:
    try:
        logs.setup_logging(level, component=component, log_format=log_format)
    except ValueError as error:
        _fail(str(error))


def _controller_config(
    config: Path | None,
    listen: str | None,
    state_dir: Path | None,
    router: str | None,
    metrics_listen: str | None = None,
    tls: Tls | None = None,
) -> ControllerConfig:
    tls = tls or Tls()
    try:
        return with_overrides(
            _load(config, "controller").controller,
            bind_addr=listen,
            state_dir=state_dir,
            router=router,
            metrics_listen_addr=metrics_listen,
            tls_cert=tls.tls_cert,
            tls_key=tls.tls_key,
            tls_client_ca=tls.tls_client_ca,
            insecure=tls.insecure or None,
        )
    except ConfigError as error:
        _fail(str(error))
        raise


@Parameter(name="*")
@dataclasses.dataclass
class Tls:
    """TLS flags of the daemons (docs/security.md; the config keys of the same names)."""

    tls_cert: Annotated[Path | None, Parameter(metavar="FILE")] = None
    """Certificate (PEM) the server presents: the controller's port, a worker's peer port (a
    worker also shows it when asked for a client certificate). Needs --tls-key."""
    tls_key: Annotated[Path | None, Parameter(metavar="FILE")] = None
    """The private key of --tls-cert (PEM)."""
    tls_client_ca: Annotated[Path | None, Parameter(metavar="FILE")] = None
    """Mutual TLS: serve only clients presenting a certificate this CA signed."""
    insecure: bool = False
    """Allow a listen address off loopback without TLS (clear text; warned at every start)."""


@app.command
def controller(
    *,
    config: Path | None = None,
    listen: str | None = None,
    state_dir: Path | None = None,
    router: str | None = None,
    metrics_listen: str | None = None,
    log_level: str = "INFO",
    log_format: logs.LogFormat = "human",
    tls: Tls | None = None,
) -> None:
    """Run the controller: accepts jobs and leases them to workers.

    Parameters
    ----------
    config
        Configuration file (TOML, or the prototype's JSON); default: burst.toml here.
    listen
        HOST:PORT to serve gRPC on (default 127.0.0.1:50051).
    state_dir
        Folder of the durable store.
    router
        roundrobin, power2 or biased.
    metrics_listen
        HOST:PORT to serve Prometheus metrics on, over HTTP (off unless given).
    log_level
        TRACE, DEBUG, INFO, WARNING or ERROR (the BURST_LOG variable, if set, wins).
    log_format
        human (one readable line a record) or json (one JSON object a line, with job_id and
        worker_id as fields where a record has them).
    """
    from burstd.controller import daemon
    from burstd.controller.store import StoreError

    settings = _controller_config(config, listen, state_dir, router, metrics_listen, tls)
    _setup_logs("controller", log_level, log_format)
    try:
        trio.run(daemon.run_until_signalled, settings)
    except* (OSError, StoreError, tlsconfig.TlsSetupError) as group:
        _fail(_first_leaf(group))


@app.command
def worker(
    *,
    config: Path | None = None,
    id: Annotated[str | None, Parameter(name=["--id", "--worker-id"])] = None,
    controller: str | None = None,
    cpus: int | None = None,
    slots: int | None = None,
    mem: str | None = None,
    gpus: str | None = None,
    resource: Annotated[tuple[str, ...], Parameter(negative=())] = (),
    bind_cpus: bool = False,
    queue_capacity: int | None = None,
    output_dir: Path | None = None,
    peer_listen: str | None = None,
    peer_advertise: str | None = None,
    steal_interval_ms: int | None = None,
    no_steal: bool = False,
    token_file: Path | None = None,
    state_dir: Path | None = None,
    metrics_listen: str | None = None,
    log_level: str = "INFO",
    log_format: logs.LogFormat = "human",
    tls_ca: Annotated[Path | None, Parameter(metavar="FILE")] = None,
    tls: Tls | None = None,
) -> None:
    """Run a worker: leases jobs from the controller and runs them.

    Parameters
    ----------
    config
        Configuration file; a [[workers]] entry with this worker's id is used if present.
    id
        Worker id (default: the host name); unique per worker, stable across restarts.
        --worker-id is the prototype's name for it. A second process started with an id
        replaces the first, which stops its jobs and exits (code 2).
    controller
        Controller address HOST:PORT.
    cpus
        CPUs jobs run on; a job takes one unless it asks for more (default: the CPUs of the
        worker's affinity mask, within its cgroup's CPU quota).
    slots
        The same as --cpus (the prototype's name).
    mem
        Memory jobs may claim, such as 64G (default: the physical memory, within the
        cgroup's memory.max).
    gpus
        GPUs: a count (ids 0 to N-1) or ids with a comma, 0,2 or 3, (default: those
        CUDA_VISIBLE_DEVICES names, else those nvidia-smi -L lists, else none).
    resource
        NAME=AMOUNT of a named resource jobs may claim (scratch=100G, licence=2); repeatable.
    bind_cpus
        Pin each job to CPUs of its own (sched_setaffinity).
    queue_capacity
        CPUs of the jobs held at once, running or waiting for CPUs (default: 2 x cpus).
    output_dir
        Folder for <job_id>.stdout and <job_id>.stderr of jobs that name none.
    peer_listen
        HOST:PORT to serve StealJobs to other workers on (port 0: any free port); without it,
        no other worker takes jobs from this one.
    peer_advertise
        HOST:PORT other workers dial (default: the listen address with the bound port).
    steal_interval_ms
        Pause of an idle worker between steal attempts that found nothing (default 150).
    no_steal
        Never take jobs from other workers (as the config key steal = false).
    token_file
        File holding the worker's token (default: BURST_TOKEN, else the config key token_file,
        else worker.token in the state directory).
    state_dir
        State directory of a controller on this machine, whose worker.token is used when no
        other token is given (default: BURST_STATE_DIR, else controller.state_dir, else
        ~/.local/state/burst).
    metrics_listen
        HOST:PORT to serve Prometheus metrics on, over HTTP (off unless given).
    log_level
        TRACE, DEBUG, INFO, WARNING or ERROR (the BURST_LOG variable, if set, wins).
    log_format
        human (one readable line a record) or json (one JSON object a line, with job_id and
        worker_id as fields where a record has them).
    tls_ca
        Connect to the controller and to peers over TLS, trusting the certificates this CA
        (PEM) signed; with it, a peer port serves TLS (--tls-cert, --tls-key).
    """
    from burstd.worker import daemon
    from burstd.worker.session import Replaced, TokenRefused
    from burstd.worker.steal import static_peers

    loaded = _load(config, "worker")
    tls = tls or Tls()
    if cpus is not None and slots is not None and cpus != slots:
        _fail(f"--cpus {cpus} and --slots {slots}: the same setting, given twice")
    try:
        settings = with_overrides(
            worker_for(loaded, id),
            tls_ca=tls_ca,
            tls_cert=tls.tls_cert,
            tls_key=tls.tls_key,
            tls_client_ca=tls.tls_client_ca,
            insecure=tls.insecure or None,
            controller_addr=controller,
            slots=cpus if cpus is not None else slots,
            mem=mem,
            gpus=gpus,
            resources=resource or None,
            bind_cpus=bind_cpus or None,
            local_queue_capacity=queue_capacity,
            output_dir=output_dir,
            peer_listen_addr=peer_listen,
            peer_advertise_addr=peer_advertise,
            steal_interval_ms=steal_interval_ms,
            metrics_listen_addr=metrics_listen,
        )
    except ConfigError as error:
        _fail(str(error))
        raise
    token, source = _token(
        token_file, settings.token_file, state_dir or loaded.controller.state_dir, WORKER_TOKEN
    )
    _setup_logs("worker", log_level, log_format)
    peers = static_peers(loaded, settings.worker_id)
    try:
        running = daemon.Worker(
            settings, steal=settings.steal and not no_steal, static_peers=peers, token=token
        )
    except tlsconfig.TlsSetupError as error:
        _fail(str(error))
    try:
        trio.run(daemon.run_until_signalled, running)
    except* OSError as group:  # the peer address is taken or cannot be bound
        _fail(_first_leaf(group))
    except* Replaced as group:  # another process took this worker id: it stopped its jobs
        _fail(_first_leaf(group))
    except* TokenRefused as group:  # asking again with the same token cannot succeed
        _fail(f"{_first_leaf(group)}; the token came from {source}")


def _token(
    flag: Path | None, config_token_file: Path | None, state_dir: Path, default_name: str
) -> tuple[str, str]:
    """The token this program sends and where it came from (``burstd.credentials``); exit 2
    if there is none."""
    try:
        return found_token(
            token_file=flag,
            config_token_file=config_token_file,
            state_dir=state_dir,
            default_name=default_name,
        )
    except TokenNotFound as error:
        _fail(str(error))
        raise


def _first_leaf(group: BaseExceptionGroup[Exception]) -> str:
    """The message of the first exception in a (nested) group: a start-up error, not a trace."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return str(error)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@app.command
def up(
    *command: str,
    workers: Annotated[int, Parameter(name=["--workers", "-n"])] = 2,
    slots: int | None = None,
    queue_capacity: int | None = None,
    listen: str | None = None,
    state_dir: Path | None = None,
    config: Path | None = None,
    output_dir: Path | None = None,
    log_level: str = "INFO",
    log_format: logs.LogFormat = "human",
    metrics_listen: str | None = None,
    tls_ca: Annotated[Path | None, Parameter(metavar="FILE")] = None,
    tls: Tls | None = None,
) -> None:
    """Run a controller and N workers on this machine, in the foreground, until Ctrl-C.

    With a COMMAND after `--`, run it once the cluster is ready (BURST_CONTROLLER points at the
    cluster and BURST_TOKEN holds its admin token; with TLS, BURST_TLS_CA names the CA), then
    stop the cluster and exit with the command's exit code. The workers use the worker.token of
    the controller's state directory. With --tls-cert and --tls-key the controller and the
    workers' peer ports serve TLS, and the workers (given --tls-ca) connect over it.

    Parameters
    ----------
    command
        Program and arguments to run against the cluster, after `--`.
    workers
        Number of worker processes.
    slots
        Jobs each worker runs at once (default: CPUs / workers, at least 2).
    queue_capacity
        Jobs each worker holds at once, running or waiting for a slot (default without --config:
        the larger of 64 and 2 x slots, so that short jobs are leased in batches).
    listen
        Controller address HOST:PORT (default 127.0.0.1:50051).
    state_dir
        Folder of the controller's durable store.
    config
        Configuration file, as for `burstd controller`.
    output_dir
        Folder for job output (default: the working directory).
    log_level
        TRACE, DEBUG, INFO, WARNING or ERROR, of every daemon (BURST_LOG, if set, wins).
    log_format
        human or json, of every daemon (json: one JSON object a line, with job_id and worker_id
        as fields where a record has them).
    metrics_listen
        HOST:PORT of the controller's Prometheus metrics (off unless given); worker N serves
        its own on HOST:PORT+N (docs/operations.md).
    tls_ca
        The CA the workers (and the command) trust the controller's certificate with.
    """
    if workers < 1:
        _fail("--workers: must be at least 1")
    tls = tls or Tls()
    settings = _controller_config(config, listen, state_dir, None, metrics_listen, tls)
    worker_metrics = _worker_metrics_addrs(metrics_listen, workers)
    host, port = parse_hostport(settings.bind_addr)
    if port == 0:
        port = _free_port(host)
    addr = format_hostport(host, port)
    # The workers and the command dial it here: a wildcard listen address is this machine.
    dial = format_hostport(_dialable(host), port)
    try:
        client = with_overrides(
            worker_for(_load(config, "worker")),
            tls_ca=tls_ca,
            tls_cert=tls.tls_cert,
            tls_key=tls.tls_key,
        )
        client_tls = tlsconfig.client_context(client, "worker")
    except (ConfigError, tlsconfig.TlsSetupError) as error:
        _fail(str(error))
    tls_flags = [
        *(["--tls-cert", str(tls.tls_cert)] if tls.tls_cert else []),
        *(["--tls-key", str(tls.tls_key)] if tls.tls_key else []),
        *(["--tls-client-ca", str(tls.tls_client_ca)] if tls.tls_client_ca else []),
    ]
    per_worker = slots or up_slots(workers, os.cpu_count() or 1)
    base = [sys.executable, "-m", "cli.burstd"]
    common = ["--config", str(config)] if config else []
    common += ["--log-level", log_level, "--log-format", log_format]
    _setup_logs("up", log_level, log_format)
    from loguru import logger

    children: list[subprocess.Popen[bytes]] = []
    # A SIGTERM or SIGHUP while the command runs stops the cluster as cleanly as Ctrl-C does.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    try:
        controller_cmd = [*base, "controller", *common, "--listen", addr, *tls_flags]
        if tls.insecure:
            controller_cmd.append("--insecure")
        if metrics_listen:
            controller_cmd += ["--metrics-listen", metrics_listen]
        if state_dir:
            controller_cmd += ["--state-dir", str(state_dir)]
        # The daemons get process groups of their own, so a Ctrl-C in the terminal reaches only
        # this process, which stops the workers first (they drain: running jobs finish and are
        # reported) and the controller last. In the terminal's group they would all get SIGINT
        # at once: the controller would be gone before the workers could report, and our SIGTERM
        # would be the workers' second signal, which kills their running jobs.
        # Its last commits are written when SIGTERM stops it: see _ended_with_us.
        children.append(
            subprocess.Popen(
                controller_cmd, process_group=0, preexec_fn=_ended_with_us(signal.SIGTERM)
            )
        )
        # Workers start once the controller listens, so they do not begin by warning about it.
        _wait_listening(host, port, children[0])
        # The tokens its first start wrote (it writes them before it listens): the cluster's
        # own, whatever BURST_TOKEN says.
        worker_token = settings.state_dir / WORKER_TOKEN
        try:
            admin_token = read_token(settings.state_dir / ADMIN_TOKEN)
        except (OSError, ValueError) as error:
            _fail(f"cannot read the controller's admin token: {error}")
        prefix = socket.gethostname()
        for i in range(1, workers + 1):
            cmd = [*base, "worker", *common, "--id", f"{prefix}-{i}", "--controller", dial]
            cmd += ["--token-file", str(worker_token), *tls_flags]
            if tls_ca:
                cmd += ["--tls-ca", str(tls_ca)]
            cmd += ["--slots", str(per_worker)]
            if queue_capacity or not config:
                capacity = queue_capacity or max(UP_QUEUE_CAPACITY, 2 * per_worker)
                cmd += ["--queue-capacity", str(capacity)]
            if output_dir:
                cmd += ["--output-dir", str(output_dir)]
            if worker_metrics:
                cmd += ["--metrics-listen", worker_metrics[i - 1]]
            # Idle workers steal queued jobs from busy ones (any free loopback port each).
            cmd += ["--peer-listen", "127.0.0.1:0"]
            # Killed at once (their job guards stop their jobs): a worker's drain would finish
            # jobs whose results no controller is left to record.
            children.append(
                subprocess.Popen(cmd, process_group=0, preexec_fn=_ended_with_us(signal.SIGKILL))
            )
        logger.info(
            "local cluster up: controller on {}, {} workers x {} slots; Ctrl-C to stop",
            addr,
            workers,
            per_worker,
        )
        if command:
            _wait_ready(dial, workers, admin_token, client_tls)
            env = {**os.environ, "BURST_CONTROLLER": dial, "BURST_TOKEN": admin_token}
            env.update(_tls_variables(client))
            try:
                code = subprocess.call(list(command), env=env)
            except KeyboardInterrupt:
                code = 128 + signal.SIGINT
            _stop_all(children)
            sys.exit(code)
        _supervise(children)
    finally:
        _stop_all(children)


def _worker_metrics_addrs(metrics_listen: str | None, workers: int) -> list[str]:
    """The metrics addresses of ``burstd up``'s workers: worker N's is the controller's port
    plus N, on the same host (none without ``--metrics-listen``)."""
    if not metrics_listen:
        return []
    try:
        host, port = parse_hostport(metrics_listen)
    except ValueError as error:
        _fail(f"--metrics-listen: {error}")
    if port == 0 or port + workers > 65535:
        _fail(
            f"--metrics-listen: {metrics_listen}: worker N serves on PORT+N,"
            f" so PORT must be from 1 to {65535 - workers}"
        )
    return [format_hostport(host, port + n) for n in range(1, workers + 1)]


def up_slots(workers: int, cpus: int) -> int:
    """Default slots of each of ``workers`` on a machine with ``cpus``: a share of the CPUs, but
    never fewer than UP_MIN_SLOTS (so short jobs overlap with the worker's own work)."""
    return max(UP_MIN_SLOTS, cpus // workers)


def _wait_listening(
    host: str, port: int, controller: subprocess.Popen[bytes], timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if controller.poll() is not None:
            _fail(f"the controller exited with code {controller.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    _fail(f"the controller did not listen on {format_hostport(host, port)} within {timeout:.0f} s")


def _dialable(host: str) -> str:
    """The address that reaches a server listening on ``host`` from this machine: the loopback
    address for a wildcard one."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if not address.is_unspecified:
        return host
    return "::1" if address.version == 6 else "127.0.0.1"


def _tls_variables(client: WorkerConfig) -> dict[str, str]:
    """The BURST_TLS_* variables that make `burst` connect as ``client`` does."""
    files = {"BURST_TLS_CA": client.tls_ca}
    if client.tls_ca is not None:
        files |= {"BURST_TLS_CERT": client.tls_cert, "BURST_TLS_KEY": client.tls_key}
    return {name: str(path.resolve()) for name, path in files.items() if path is not None}


def _wait_ready(
    addr: str, workers: int, token: str, tls: ssl.SSLContext | None, timeout: float = 30.0
) -> None:
    """Block until the controller answers and every worker has registered."""
    from burstd.client import BlockingClient
    from burstd.transport import RpcError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with BlockingClient(addr, connect_timeout=1.0, token=token, tls=tls) as client:
                while time.monotonic() < deadline:
                    if len(client.workers()) >= workers:
                        return
                    time.sleep(0.05)
        except RpcError:
            time.sleep(0.1)
    _fail(f"local cluster not ready after {timeout:.0f} s")


def _ended_with_us(signum: int) -> Callable[[], None]:
    """What a daemon child of `up` runs between fork and exec: the kernel sends it ``signum``
    when `up` dies, also of a SIGKILL, which leaves `up` no chance to stop it (otherwise the
    cluster would live on, unseen, after the command that started it). A `up` that died before
    the child asked is seen by its pid: the child then ends before it becomes a daemon."""
    parent = os.getpid()
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork, not in the child

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signum)
        if os.getppid() != parent:
            # Not a signal to itself: this copy of `up` still has `up`'s Python handlers.
            os._exit(128 + signum)

    return preexec


def _supervise(children: list[subprocess.Popen[bytes]]) -> None:
    """Block until a signal arrives or a child exits on its own."""
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    while not received:
        for child in children:
            if child.poll() is not None:
                _fail(f"{_describe(child)} exited with code {child.returncode}")
        time.sleep(0.1)


def _describe(child: subprocess.Popen[bytes]) -> str:
    args = [str(arg) for arg in child.args] if isinstance(child.args, list) else [str(child.args)]
    return " ".join(args[3:6])


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _stop_all(children: list[subprocess.Popen[bytes]], grace: float = 35.0) -> None:
    """Workers first (they drain and report to the controller), then the controller."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    workers, controllers = children[1:], children[:1]
    for group in (workers, controllers):
        for child in group:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in group:
            try:
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def main() -> None:
    try:
        try:
            app()
        finally:
            # Here, not at the interpreter's exit, where a reader gone early is "Exception
            # ignored ... BrokenPipeError" and exit 120 (a pipe's stdout is block-buffered).
            sys.stdout.flush()
    except cyclopts.CycloptsError as error:
        _fail(" ".join(str(error).split()))
    except BrokenPipeError:
        reader_gone()  # `burstd token list | head -1`


if __name__ == "__main__":
    main()

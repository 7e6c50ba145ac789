"""The controller daemon: one nursery holding the gRPC server, the lease reaper, the store
writer (group commits) and the retention pruner.

All job state is in the JobTable; this module only wires it to the network, the disk and the
clock. With ``store = "sqlite"`` (the default) the state directory holds every job: a restarted
controller takes back its queued jobs and waits one lease TTL for workers to claim the leased ones.
"""

from __future__ import annotations

import gc
import os
import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from functools import partial

import trio
from loguru import logger

from burstd import credentials, tlsconfig, transport, wire
from burstd.config import ControllerConfig, format_hostport, parse_hostport
from burstd.controller.admission import Limits
from burstd.controller.events import EventLog
from burstd.controller.metrics import ControllerMetrics
from burstd.controller.outage import MAX_BACKOFF, Outage
from burstd.controller.service import ControllerService, ServiceSettings
from burstd.controller.store import Snapshot, Store, lock_state_dir
from burstd.controller.table import JobState, JobTable
from burstd.controller.tokens import Tokens, local_user
from burstd.controller.writer import StoreUnavailable, StoreWriter
from burstd.metrics import serve_metrics

# Queued jobs read back from the store per pass of a restart's loader (``_load_queue``).
LOAD_SLICE = 10_000
# The pruner looks for jobs past their retention at most this often.
PRUNE_INTERVAL = 60.0
# The cyclic garbage collector's thresholds for the controller process; see tune_gc.
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Collect cyclic garbage rarely: the controller holds millions of long-lived objects (every
    queued job) and makes tens of thousands of short-lived ones per second (requests, rows). With
    the default thresholds (700, 10, 10) a young collection ran every few hundred jobs and a full
    one, walking every queued job, every few seconds: about a sixth of the controller's time, in
    pauses of up to half a second. Its garbage is mostly freed by reference counting; the cycles
    left (trio's cancelled tasks, exceptions) are collected once 50,000 of them have piled up.
    """
    gc.set_threshold(*GC_THRESHOLDS)


def freeze_gc() -> None:
    """What exists once the controller serves (modules, the jobs a restart took back) lives as
    long as the process: leave it out of every later collection."""
    gc.freeze()


def build_table(config: ControllerConfig, durable: bool = False) -> JobTable:
    return JobTable(
        router=config.router,
        max_queued=config.submission_buffer_capacity,
        lease_ttl=config.lease_ttl_ms / 1000,
        crash_limit=config.crash_limit,
        track_changes=durable,
        track_events=durable and config.events_max > 0,
        heartbeat_interval=config.heartbeat_interval_ms / 1000,
        heartbeat_budget=config.heartbeat_budget,
        quotas=config.quotas,
    )


def build_service(
    config: ControllerConfig,
    store: Store | None = None,
    snapshot: Snapshot | None = None,
    tokens: Tokens | None = None,
) -> ControllerService:
    """The service over a fresh table, restored from ``store`` if there is one: its leases
    at once (their workers come back to claim them), the rest from ``snapshot`` later
    (``load_restored``), as a million queued jobs take seconds to read back."""
    table = build_table(config, durable=store is not None)
    writer = None
    if store is not None and snapshot is not None:
        live = snapshot.jobs(
            (JobState.WAITING.value, JobState.LEASED.value, JobState.RUNNING.value)
        )
        # What the waiting ones wait for that is not among them (queued or finished: stored).
        ids = {job.job_id for job in live}
        after = {dep for job in live if job.after for dep in job.after.split(",")} - ids
        known = snapshot.states(after) if after else {}
        table.restore(live, store.next_id(), time.time(), snapshot.total - len(live), known)
        table.drained = store.drained()
        events = EventLog(store, config.events_max) if config.events_max > 0 else None
        writer = StoreWriter(store, table, events)
    settings = ServiceSettings(
        limits=Limits(max_batch=config.max_batch, max_spec_bytes=config.max_spec_bytes),
        fixed_cluster=config.fixed_cluster,
    )
    return ControllerService(table, settings, writer=writer, tokens=tokens)


async def _every(interval: float, task: str, step: Callable[[], Awaitable[None]]) -> None:
    """Run ``step`` every ``interval`` seconds until cancelled. A step the state store fails
    (``StoreUnavailable``: a full disk) is retried with a back-off up to ``interval`` or
    ``MAX_BACKOFF``, whichever is longer, logged once when it starts failing and once when it
    works again: the store's faults degrade the controller, they never end it (promise 8)."""
    outage = Outage(task, first_delay=interval, max_delay=max(interval, MAX_BACKOFF))
    delay = interval
    while True:
        await trio.sleep(delay)
        try:
            await step()
        except StoreUnavailable as error:
            delay = outage.failed(error)
        else:
            outage.succeeded()
            delay = interval


async def load_restored(service: ControllerService, snapshot: Snapshot) -> None:
    """Count the finished jobs of the previous life and read its queued ones back into the
    table, a slice at a time, in a thread, while the controller serves: a call that needs a
    job not read back yet reads the store (status, list) or takes it early (cancel). Once all
    are back they are left out of the garbage collector's walks, as what existed at the start
    is (``freeze_gc``)."""
    table = service.table
    started, after = time.monotonic(), 0
    logger.info("loading the previous life's queue from the store")
    try:
        counts = await trio.to_thread.run_sync(snapshot.counts)
        table.restore_counts(counts)
        while table.unloaded:
            jobs = await trio.to_thread.run_sync(snapshot.queued, after, LOAD_SLICE)
            if not jobs:
                break
            after = jobs[-1].num
            service.restore_queued(jobs, through=after)
        table.restored(time.time())
    finally:
        snapshot.close()
    freeze_gc()
    logger.info(
        "queue loaded: {} queued jobs in {:.1f} s",
        sum(stored.jobs for stored in counts if stored.state is JobState.QUEUED),
        time.monotonic() - started,
    )


async def _reap(service: ControllerService) -> None:
    """Declare lost the workers that stopped talking, so their jobs run elsewhere, and discard
    the submissions sent in pieces whose client stopped sending them."""
    service.expire_workers()
    service.expire_submissions()


async def _prune(service: ControllerService, retention: float) -> None:
    """Forget finished jobs older than the retention period, so the store stays bounded."""
    forgotten = await service.prune(time.time() - retention)
    if forgotten:
        logger.info("forgot {} jobs finished more than {:.0f} s ago", forgotten, retention)


async def run_controller(
    config: ControllerConfig, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled; ``task_status.started`` gets the bound port.

    Raises ``TlsSetupError`` (no TLS off loopback, a TLS file that cannot be loaded: see
    ``burstd.tlsconfig``), ``StoreError`` (a damaged, foreign or busy state directory) or
    ``TransportError`` (address in use) before serving.
    """
    tls = tlsconfig.server_context(config, config.bind_addr, "controller", logger.warning)
    metrics_tls = tlsconfig.metrics_context(config, "controller")
    with ExitStack() as stack:
        store = snapshot = None
        if config.store == "sqlite":
            # The jobs of a store made before jobs had owners become the admin's.
            store = Store(config.state_dir, first_owner=local_user())
            stack.callback(store.close)
            snapshot = store.snapshot()
            stack.callback(snapshot.close)
        else:
            # No jobs there, but the bootstrap tokens: one controller a directory all the same.
            stack.callback(os.close, lock_state_dir(config.state_dir))
        tokens = Tokens(store.path if store is not None else None)
        stack.callback(tokens.close)
        tokens.bootstrap(config.state_dir)
        logger.info(
            "tokens for this machine: {} (admin), {} (workers)",
            config.state_dir / credentials.ADMIN_TOKEN,
            config.state_dir / credentials.WORKER_TOKEN,
        )
        service = build_service(config, store, snapshot, tokens)
        if store is not None:
            table = service.table
            logger.info(
                "state {}: {} leased jobs taken back, {} more to read back, next id {}",
                store.path,
                len(table.orphans),
                table.unloaded,
                wire.job_id(table.next_id),
            )
        host, port = parse_hostport(config.bind_addr)
        rpc = service.rpc_service()
        async with trio.open_nursery() as nursery:
            if config.metrics_listen_addr:
                metrics = ControllerMetrics(service.table)
                rpc = metrics.rpc.instrument(rpc)
                if service.writer is not None:
                    service.writer.on_commit = metrics.committed
                nursery.start_soon(metrics.run)
                await nursery.start(
                    partial(serve_metrics, tls=metrics_tls),
                    config.metrics_listen_addr,
                    metrics.registry,
                )
            if service.writer is not None:
                nursery.start_soon(service.writer.run)
            bound = await nursery.start(
                partial(transport.serve, limits=config.connection_limits, tls=tls),
                host,
                port,
                [rpc, transport.health_service(service.serving)],
            )
            service.table.start_orphan_clock(time.time())
            if snapshot is not None:
                nursery.start_soon(load_restored, service, snapshot)
            reap_every = max(service.table.lease_ttl / 4, 0.05)
            nursery.start_soon(_every, reap_every, "the lease reaper", partial(_reap, service))
            prune_every = min(PRUNE_INTERVAL, max(config.retention_s / 10, 0.1))
            prune = partial(_prune, service, config.retention_s)
            nursery.start_soon(_every, prune_every, "pruning finished jobs", prune)
            logger.info(
                "controller listening on {}{} (router {}, lease TTL {:.1f} s, store {})",
                format_hostport(host, bound),
                "" if tls is None else " over TLS",
                config.router,
                service.table.lease_ttl,
                config.store,
            )
            task_status.started(bound)


async def run_until_signalled(config: ControllerConfig) -> None:
    """Serve until SIGTERM or SIGINT (the process's main: it sets the garbage collector's
    policy, see ``tune_gc``)."""
    tune_gc()
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
            await nursery.start(run_controller, config)
            freeze_gc()
            async for signum in received:
                logger.info("signal {}: stopping", signum)
                nursery.cancel_scope.cancel()
                break

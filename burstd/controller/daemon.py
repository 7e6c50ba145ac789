"""The controller daemon: one nursery holding the gRPC server and the lease reaper.

All job state is in the JobTable; this module only wires it to the network and the clock.
"""

from __future__ import annotations

import signal

import trio
from loguru import logger

from burstd import transport
from burstd.config import ControllerConfig, format_hostport, parse_hostport
from burstd.controller.admission import Limits
from burstd.controller.service import ControllerService, ServiceSettings
from burstd.controller.table import JobTable


def build_service(config: ControllerConfig) -> ControllerService:
    table = JobTable(
        router=config.router,
        max_queued=config.submission_buffer_capacity,
        lease_ttl=config.lease_ttl_ms / 1000,
        crash_limit=config.crash_limit,
    )
    settings = ServiceSettings(
        limits=Limits(max_batch=config.max_batch, max_spec_bytes=config.max_spec_bytes),
        heartbeat_interval_ms=config.heartbeat_interval_ms,
    )
    return ControllerService(table, settings)


async def _reap(service: ControllerService, interval: float) -> None:
    """Declare lost the workers that stopped talking, so their jobs run elsewhere."""
    while True:
        await trio.sleep(interval)
        service.expire_workers()


async def run_controller(
    config: ControllerConfig, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled; ``task_status.started`` gets the bound port."""
    service = build_service(config)
    host, port = parse_hostport(config.bind_addr)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(
            transport.serve,
            host,
            port,
            [service.rpc_service(), transport.health_service(lambda: True)],
        )
        nursery.start_soon(_reap, service, max(service.table.lease_ttl / 4, 0.05))
        logger.info(
            "controller listening on {} (router {}, lease TTL {:.1f} s)",
            format_hostport(host, bound),
            config.router,
            service.table.lease_ttl,
        )
        task_status.started(bound)


async def run_until_signalled(config: ControllerConfig) -> None:
    """Serve until SIGTERM or SIGINT."""
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
            await nursery.start(run_controller, config)
            async for signum in received:
                logger.info("signal {}: stopping", signum)
                nursery.cancel_scope.cancel()
                break

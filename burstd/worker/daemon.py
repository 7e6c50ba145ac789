"""The worker daemon: a trio nursery tree that leases jobs, runs them and reports them.

Shape (after hypercorn's nested nurseries, the outer one holding what must outlive the inner)::

    Worker.run
    ├── outer nursery: session (worker/session.py), reporter, heartbeat, notice poll,
    │                  StealJobs server (with a peer address), steal client (see worker/steal.py),
    │                  output reads (worker/output.py)
    └── inner nursery: lease loop, one runner per slot (each job in its own cancel scope)

The tasks share one ``WorkerState`` (worker/state.py) and wait on it; the local queue
(worker/queue.py) wakes them when it changes. A job's cancel scope is the unit of its lifetime:
a user cancel, a dropped lease or a shutdown cancels that scope, and the executor then kills the
job's whole process group. Shutdown drains: the lease loop stops, unstarted jobs are handed back,
running jobs get ``drain_grace`` seconds, then are stopped; the inner nursery has a deadline
from the start of the drain. The reporter keeps running until every result is acknowledged
(bounded by ``flush_timeout``), because a result is never dropped on purpose.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import math
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import trio
from loguru import logger

from burstd import tlsconfig, transport
from burstd.config import WorkerConfig, format_hostport, parse_hostport
from burstd.host import cpu_ids
from burstd.leases import StopReason
from burstd.metrics import serve_metrics
from burstd.worker.detect import offer_of
from burstd.worker.executor import ExecConfig, Outcome, run_job
from burstd.worker.guard import JobGuard
from burstd.worker.memlimit import MemLimits
from burstd.worker.metrics import WorkerMetrics, outcome_of
from burstd.worker.output import OutputServer
from burstd.worker.queue import LocalJob, LocalQueue, stopped_result
from burstd.worker.session import CALL_TIMEOUT, ControllerLink
from burstd.worker.state import WorkerState
from burstd.worker.steal import PeerServer, StealClient, advertise_addr
from burstd.worker.streamlog import StreamLogs
from proto.burst.v1 import job_pb2, worker_pb2

LONG_POLL_MS = 20_000
NOTICE_POLL_MS = 30_000
# Results per ReportJobResults call: large enough to amortise a call, small enough to stay snappy.
REPORT_BATCH = 2_000
# Start notices alone wait this long for a result to carry them: a short job's result comes
# first, so it costs one call per batch instead of one more call per job.
START_NOTICE_DELAY = 0.05
# While results come in a stream, at most one ReportJobResults call per this many seconds: a
# call costs the worker and the controller far more than one more result in it. A lone result
# goes at once.
REPORT_INTERVAL = 0.02
# The job guard hears the leases' deadline at least this often: its idea of it lags by as much.
GUARD_TOLD_EVERY = 0.25


def _outcome_result(job: LocalJob, outcome: Outcome) -> job_pb2.ReportJobResultRequest:
    usage = outcome.usage
    return job_pb2.ReportJobResultRequest(
        job_id=job.job_id,
        attempt=job.attempt,
        exit_code=outcome.exit_code if outcome.exit_code is not None else -1,
        signal=outcome.signal,
        reason=outcome.reason,
        error_message=outcome.error_message,
        started_at=outcome.started_at,
        finished_at=outcome.finished_at,
        stdout_path=outcome.stdout_path,
        stderr_path=outcome.stderr_path,
        usage=None
        if usage is None
        else job_pb2.Usage(
            user_cpu_seconds=usage.user_cpu,
            system_cpu_seconds=usage.system_cpu,
            max_rss_kib=usage.max_rss_kib,
        ),
    )


class Worker:
    """One worker daemon; ``run()`` until cancelled, ``drain()`` for a graceful stop."""

    def __init__(
        self,
        config: WorkerConfig,
        *,
        peer_addr: str = "",
        drain_grace: float = 30.0,
        steal: bool = True,
        static_peers: Mapping[str, str] | None = None,
        token: str,
    ) -> None:
        """``steal``: take queued jobs from busier peers when idle. Peers can take this worker's
        queued jobs when ``config.peer_listen_addr`` is set. ``static_peers`` (worker id to
        address, from the configuration file) are tried until the controller lists peers.
        ``token``: the worker's (see ``burstd.credentials``). TLS follows ``config``
        (``burstd.tlsconfig``): a setting that cannot work raises ``TlsSetupError`` here."""
        self.log = logger.bind(worker_id=config.worker_id)
        tls = tlsconfig.worker_client(config)
        self.peer_tls = (
            tlsconfig.server_context(config, config.peer_listen_addr, "worker", self.log.warning)
            if config.peer_listen_addr
            else None
        )
        self.metrics_tls = tlsconfig.metrics_context(config, "worker")
        capacity = max(config.local_queue_capacity, config.slots)
        offer, gpus = offer_of(config)
        self.state = WorkerState(
            config, LocalQueue(capacity), token, tls=tls, steals=steal, offer=offer, gpus=gpus
        )
        self.link = ControllerLink(self.state, peer_addr)
        self.stealer = (
            StealClient(self.state, static_peers or {}, hand_back=self._hand_back, link=self.link)
            if steal
            else None
        )
        self.exec_config = ExecConfig(
            worker_id=config.worker_id,
            output_dir=Path(config.output_dir).resolve(),
            python=config.python,
            docker=config.docker,
            kill_grace=config.kill_grace_s,
            streams=StreamLogs(config.worker_id),
            bind_cpus=config.bind_cpus,
            cpu_ids=tuple(cpu_ids()),
            has_gpus=bool(gpus),
        )
        self.output = OutputServer(self.link, self.exec_config, self.state.runs)
        self.drain_grace = drain_grace
        self._guard: JobGuard | None = None  # while ``run`` runs
        self.flush_timeout = 10.0
        self._drain = trio.Event()
        # Jobs run, by outcome (``burstd.worker.metrics.outcome_of``), for the metrics.
        self.ended: collections.Counter[str] = collections.Counter()

    def drain(self) -> None:
        """Stop taking work, hand unstarted jobs back, let running ones finish, then stop."""
        self._drain.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # Before the first job starts, closed after the last one ended (``burstd.worker.guard``).
        self._guard = JobGuard.start(
            self.exec_config.kill_grace, self.exec_config.docker, on_lost=self.log.warning
        )
        memory = MemLimits.start(self.log.warning)
        self.log.info("--mem of jobs enforced by {}", memory.kind)
        self.exec_config = dataclasses.replace(self.exec_config, memory=memory)
        try:
            await self._run(task_status)
        finally:
            self._guard.close()
            memory.close()

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as outer:
            if self.state.config.metrics_listen_addr:
                metrics = WorkerMetrics(self.state, self.ended)
                outer.start_soon(metrics.loop_lag.run)
                await outer.start(
                    functools.partial(serve_metrics, tls=self.metrics_tls),
                    self.state.config.metrics_listen_addr,
                    metrics.registry,
                )
            if self.state.config.peer_listen_addr:
                await self._serve_peers(outer)
            outer.start_soon(self.link.run)
            if self.stealer is not None:
                outer.start_soon(self.stealer.run)
            outer.start_soon(self._heartbeat)
            outer.start_soon(self._reporter)
            outer.start_soon(self._notice_poll)
            outer.start_soon(self._watch_leases)
            outer.start_soon(self.output.run)
            async with trio.open_nursery() as inner:
                inner.start_soon(self._lease_loop)
                for _ in range(self.state.config.slots):
                    inner.start_soon(self._runner)
                task_status.started()
                await self._drain.wait()
                # The jobs' last moment: the drain grace, then the kill grace of those stopped
                # and a while for their results to be recorded.
                inner.cancel_scope.deadline = (
                    trio.current_time() + self.drain_grace + self.exec_config.kill_grace + 10
                )
                await self._drain_jobs()
                inner.cancel_scope.cancel()
            await self._flush_reports()
            outer.cancel_scope.cancel()

    async def _drain_jobs(self) -> None:
        """Take no more work, hand unstarted jobs back, let running ones finish within the drain
        grace, then stop what is left and wait for its "returned" results (stopping the runners
        instead would end the jobs with no result, and the controller would count a lost worker
        and re-run them only after the lease TTL)."""
        state = self.state
        self.log.info("draining: no new work, {} jobs running", len(state.running))
        state.start_draining()
        self._hand_back()
        with trio.move_on_after(self.drain_grace):
            await state.wait_until(self._no_job_running)
        if state.running:
            self.log.warning(
                "drain grace of {:g} s is over: stopping {} jobs",
                self.drain_grace,
                len(state.running),
            )
            state.stop_all(StopReason.RETURNED)
            await state.wait_until(self._no_job_running)

    async def _flush_reports(self) -> None:
        """The reporter outlives the jobs: wait (bounded) until every result is acknowledged."""
        local = self.state.local
        self._hand_back()
        with trio.move_on_after(self.flush_timeout):
            await self.state.wait_until(lambda: not local.has_reports())
        if local.has_reports():
            self.log.warning(
                "stopping with unacknowledged results: the controller will re-run them"
            )

    def _no_job_running(self) -> bool:
        return not self.state.running

    async def _serve_peers(self, nursery: trio.Nursery) -> None:
        """Serve StealJobs; registration then advertises the bound address to the controller."""
        config = self.state.config
        host, port = parse_hostport(config.peer_listen_addr or "")
        server = PeerServer(self.state, self.link, self._hand_back)
        health = transport.health_service(self.serving)
        serve = functools.partial(transport.serve, tls=self.peer_tls)
        bound = await nursery.start(serve, host, port, [server.rpc_service(), health])
        self.link.peer_addr = advertise_addr(config, bound)
        self.log.info(
            "serving steals on {}{} (peers dial {})",
            format_hostport(host, bound),
            "" if self.peer_tls is None else " over TLS",
            self.link.peer_addr,
        )

    def serving(self) -> bool:
        """The health check's answer on the peer port: SERVING while registered with the
        controller and not draining (NOT_SERVING: it takes no new work)."""
        return self.link.registered and not self.state.draining

    def _hand_back(self) -> None:
        """Report every job still waiting for a slot as handed back (the controller re-queues)."""
        returned = self.state.local.return_unstarted()
        if returned:
            self.log.info("handing back {} unstarted jobs", len(returned))

    # -- inner nursery -----------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        local = self.state.local
        # Ask for work in batches: wait until a quarter of the capacity is free, unless no job is
        # left waiting for a slot (then ask at once, so no slot idles).
        min_room = max(1, local.capacity // 4)

        def ask() -> bool:
            room = local.room()
            return room >= min_room or (room > 0 and not local.waiting())

        state = self.state
        while not state.draining:
            if state.leasing or not ask():
                await state.wait_until(lambda: state.draining or (not state.leasing and ask()))
                continue
            room = local.room()
            # While it waits, the controller had nothing for this worker: the steal client
            # reads this to know when the worker is idle.
            state.poll_since = trio.current_time()
            with state.leasing_call():
                try:
                    response = await self._poll(room, LONG_POLL_MS)
                finally:
                    state.poll_since = None
            if response is None:
                continue
            self._take_leases(response.jobs, response.lease_seq)
            state.apply_notices(response.cancel, response.drop)
            # The runners just woken start their jobs before the next request for work is sent
            # (sending it takes a while): they run in trio's next batch, whose order is random,
            # so this task yields until the one after.
            for _ in range(2):
                await trio.lowlevel.checkpoint()

    def _take_leases(self, jobs: Sequence[job_pb2.AssignedJob], lease_seq: int) -> None:
        if self.state.take_leases(jobs, lease_seq) and self.state.draining:
            self._hand_back()  # a call that answered after the drain began

    async def _runner(self) -> None:
        state, local = self.state, self.state.local
        while True:
            job = local.next_queued(state.running_ids) if state.may_start() else None
            if job is None:
                await state.wait_until(state.may_start)
                continue
            await self._run_one(job)

    async def _run_one(self, job: LocalJob) -> None:
        log = self.log.bind(job_id=job.job_id)
        started = time.time()
        outcome: Outcome | None = None
        with self.state.run(job) as running, running.scope:
            if job.cancelled:
                self.state.stop(job, StopReason.CANCELLED)
            outcome = await run_job(
                job.job_id, job.attempt, job.spec, self.exec_config, self._guard, job.grant
            )
        if outcome is not None:
            result = _outcome_result(job, outcome)
        elif running.why is StopReason.DROPPED:
            log.debug("dropped: lease no longer ours")
            return
        else:
            reason = running.why if running.why is StopReason.CANCELLED else StopReason.RETURNED
            result = stopped_result(job, reason, started, time.time())
        log.debug("finished: {} {}", result.reason, result.exit_code)
        self.ended[outcome_of(result.reason, result.exit_code)] += 1
        self.state.local.finish(job, result)

    # -- outer nursery -----------------------------------------------------------------------

    async def _reporter(self) -> None:
        """Send start notices and results in batches, and retry until the controller answers."""
        state = self.state
        local = state.local
        config = state.config
        # After a call that carried several results, jobs are ending in a stream: the next call
        # waits until REPORT_INTERVAL after it, and the results that end meanwhile go with it.
        stream_until = -math.inf
        while True:
            await state.wait_until(local.has_reports)
            if not local.has_results():
                with trio.move_on_after(START_NOTICE_DELAY):
                    await state.wait_until(local.has_results)
            await trio.sleep_until(stream_until)
            sent_at = trio.current_time()
            started, done = local.take_reports()
            done = done[:REPORT_BATCH]
            request = job_pb2.ReportJobResultsRequest(
                worker_id=config.worker_id,
                instance=state.instance,
                started=started,
                results=[j.result for j in done if j.result],
            )
            # The room these results free is filled by the same call, stored in the same commit,
            # where a poll after it would cost another call and another commit.
            room = local.room() + len(done)
            leasing = room > 0 and not (state.draining or state.leasing)
            if leasing:
                request.max_jobs = room
            try:
                with state.leasing_call() if leasing else contextlib.nullcontext():
                    response = await self.link.call(
                        "ReportJobResults", request, job_pb2.ReportJobResultsResponse
                    )
            except transport.RpcError as error:
                self.log.debug("report failed ({}); retrying", error)
                await trio.sleep(0.05)
                continue
            local.acknowledged(done)
            self._take_leases(response.jobs, response.lease_seq)
            stream_until = sent_at + REPORT_INTERVAL if len(request.results) > 1 else -math.inf

    async def _heartbeat(self) -> None:
        local = self.state.local
        last = trio.current_time()
        while True:
            # In steps of at most the unstretched interval: a shorter paced interval handed by a
            # registration meanwhile (a restarted controller, fewer workers) applies at once,
            # since the controller declares us lost by it.
            while (due := last + self.link.paced_interval) > trio.current_time():
                await trio.sleep(min(due - trio.current_time(), self.link.heartbeat_interval))
            config_slots = self.state.config.slots
            # Built in one step with no checkpoint: `held` and `steal_round_done` agree (a job
            # stolen in a round that ended is listed, or was never received).
            request = worker_pb2.HeartbeatRequest(
                worker_id=self.state.config.worker_id,
                instance=self.state.instance,
                held=local.held(),
                lease_seq=local.lease_seq,
                steal_round_done=self.state.steal_done,
                # Only a worker with a free slot may steal soon: the busy ones spare the
                # controller the work of listing peers.
                want_peers=self.state.steals and len(self.state.running) < config_slots,
                verifiers_version=self.state.peer_tokens.version,
            )
            sent = self.state.clock()
            try:
                response = await self.link.call("Heartbeat", request, worker_pb2.HeartbeatResponse)
            except transport.RpcError:
                continue
            finally:
                last = trio.current_time()
            if response.reregister:
                self.link.broken()
                continue
            self.link.pace(response.paced_heartbeat_ms)
            self.state.peer_tokens.update(response.verifiers_version, response.verifiers)
            if request.want_peers:  # (without it, the reply lists none: that is no news)
                self.state.peers = list(response.peers)
            self.state.apply_notices(response.cancel, response.drop)
            self.state.confirmed(sent)

    async def _watch_leases(self) -> None:
        """Stop the running jobs when the leases lapse (``burstd.leases``), and keep the job
        guard told when to stop them itself, should this process be frozen meanwhile."""
        state, lease = self.state, self.state.lease
        while True:
            now = self.state.clock()
            if lease.lapsed(now):
                if state.running:
                    self.log.warning(
                        "no word from the controller for {:.1f} s: stopping {} running jobs"
                        " before the controller may lease them elsewhere",
                        now - lease.heard_at,
                        len(state.running),
                    )
                state.lapse()
                await state.wait_until(lambda: lease.lapsed_at is None)
                continue
            if self._guard is not None:
                self._guard.lease_deadline(lease.stop_at, lease.kill_at)
            await trio.sleep(min(lease.stop_at - now, GUARD_TOLD_EVERY))

    async def _notice_poll(self) -> None:
        """Keep a long-poll open for cancel notices even while the lease loop has no room."""
        while True:
            response = await self._poll(0, NOTICE_POLL_MS)
            if response is not None:
                self.state.apply_notices(response.cancel, response.drop)

    async def _poll(self, max_jobs: int, wait_ms: int) -> job_pb2.PollJobResponse | None:
        """One long-poll for up to ``max_jobs`` jobs; None (after a short pause) if it failed."""
        request = job_pb2.PollJobRequest(
            worker_id=self.state.config.worker_id,
            max_jobs=max_jobs,
            wait_ms=wait_ms,
            batch=True,
            instance=self.state.instance,
        )
        try:
            response: job_pb2.PollJobResponse = await self.link.call(
                "PollJob", request, job_pb2.PollJobResponse, timeout=wait_ms / 1000 + CALL_TIMEOUT
            )
        except transport.RpcError:
            await trio.sleep(0.05)
            return None
        return response


async def run_until_signalled(worker: Worker) -> None:
    """Run a worker; SIGTERM or SIGINT drains it, a second one stops it at once."""
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
            nursery.start_soon(_run_then_cancel, worker, nursery.cancel_scope)
            count = 0
            async for signum in received:
                count += 1
                if count == 1:
                    worker.log.info("signal {}: draining (send again to stop at once)", signum)
                    worker.drain()
                else:
                    worker.log.warning("signal {}: stopping now", signum)
                    nursery.cancel_scope.cancel()


async def _run_then_cancel(worker: Worker, scope: trio.CancelScope) -> None:
    await worker.run()
    scope.cancel()

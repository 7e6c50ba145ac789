"""Hostile input: every method of a real controller and a real worker's peer port gets random
well-formed messages and random bytes, plain and multiplexed, with and without valid tokens.

Each call must end with a status a client's mistake may get (never CANCELLED, UNKNOWN or
INTERNAL, which mean a handler crashed), within its deadline (a hang fails), and afterwards both
daemons still run, answer, logged no unexpected error, and their memory stayed bounded.

``BURST_FUZZ_INPUTS`` sets the number of inputs over all methods: a few hundred in the normal
test run, 100,000 or more in ``tox -e fuzz``.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Iterator, Mapping
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from burstd import auth, transport, wire
from burstd.transport import Channel, RpcError, StatusCode
from proto.burst.v1 import control_pb2, peer_pb2
from proto.grpc.health.v1 import health_pb2
from tests.cluster import Cluster, Daemon, free_port
from tests.proto_strategies import TEXT, messages

INPUTS = int(os.environ.get("BURST_FUZZ_INPUTS", "400"))
BATCH = 25  # inputs sent at once, each example
# RSS a daemon may gain over the whole run: the queue is capped below, so what grows beyond
# this is a leak.
MAX_GROWTH_MB = 200
MAX_QUEUED = 20_000
# A call that must answer at once gets this long; a hang fails the test.
ANSWER_TIMEOUT = 10.0
# A call allowed to wait (a long-poll, a wait) is given up after this long, not failed.
WAIT_TIMEOUT = 0.2

# What a client's mistake may be answered with, whatever it sent.
CLIENT_ERRORS = frozenset(
    {
        StatusCode.OK,
        StatusCode.INVALID_ARGUMENT,
        StatusCode.NOT_FOUND,
        StatusCode.ALREADY_EXISTS,
        StatusCode.FAILED_PRECONDITION,
        StatusCode.RESOURCE_EXHAUSTED,
        StatusCode.UNAUTHENTICATED,
        StatusCode.PERMISSION_DENIED,
    }
)

_WORKER_IDS = st.sampled_from([f"fuzz-w{i}" for i in range(4)])
_JOB_IDS = st.one_of(
    st.integers(1, 3_000).map("job-{:08d}".format),
    st.sampled_from(["", "job-", "job-0", "job-99999999999999999999", "job-00000001 "]),
)
# Field names whose values are often ones the server knows, so calls reach past the lookups.
HINTS: Mapping[str, st.SearchStrategy[Any]] = {
    "job_id": _JOB_IDS,
    "job_ids": _JOB_IDS,
    "after": _JOB_IDS,
    "ListEventsRequest.after": st.integers(0, 3000),  # an event number, not a job id
    "worker_id": _WORKER_IDS,
    "victim_id": _WORKER_IDS,
    "thief_id": _WORKER_IDS,
    "thief_worker_id": _WORKER_IDS,
    "state": st.sampled_from(
        ["queued", "leased", "running", "succeeded", "failed", "cancelled", "unknown"]
    ),
    "reason": st.sampled_from(["exit", "returned", "cancelled", "worker_lost", "timeout"]),
    "attempt": st.integers(0, 4),
    "wait_ms": st.integers(0, 200),
    "max_jobs": st.integers(0, 8),
    "slots": st.integers(1, 8),
    "command": st.just("true"),
    "service": st.sampled_from(["", wire.CONTROLLER_SERVICE]),
}


@dataclass(frozen=True)
class Method:
    server: str  # "controller" or "worker"
    service: str
    name: str
    request: Any  # the request's message class
    response: Any
    streaming: bool

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"

    @property
    def may_wait(self) -> bool:
        return self.streaming or self.name == "PollJob"


def _methods(server: str, service: Any) -> list[Method]:
    from google.protobuf.message_factory import GetMessageClass

    return [
        Method(
            server,
            service.full_name,
            m.name,
            GetMessageClass(m.input_type),
            GetMessageClass(m.output_type),
            m.server_streaming,
        )
        for m in service.methods
    ]


# Every method each server serves, from the descriptors: a new method is fuzzed unasked.
METHODS = [
    *_methods("controller", control_pb2.DESCRIPTOR.services_by_name["ControllerRpc"]),
    *_methods("controller", health_pb2.DESCRIPTOR.services_by_name["Health"]),
    *_methods("worker", peer_pb2.DESCRIPTOR.services_by_name["WorkerPeerRpc"]),
]
EXAMPLES = max(1, math.ceil(INPUTS / (len(METHODS) * BATCH)))


class _Raw(bytes):
    """Bytes sent as they are where the client wants a message."""

    def SerializeToString(self, **kwargs: Any) -> bytes:
        return bytes(self)


@dataclass
class Target:
    daemon: Daemon
    addr: str
    baseline_kb: int
    # Which of the fleet's credentials is a valid token here (the others are refused, and a
    # connection refused MAX_UNAUTHENTICATED times is closed: its other calls are UNAVAILABLE).
    valid: int
    # How much of its log earlier tests checked.
    log_checked: int = 0

    def rss_kb(self) -> int:
        status = Path(f"/proc/{self.daemon.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS"))[6:-2])


@dataclass
class Fleet:
    targets: dict[str, Target]
    # Metadata to send: none, a wrong token, and the valid tokens there are.
    credentials: list[dict[str, str]]


def _config(path: Path) -> Path:
    path.write_text(
        textwrap.dedent(
            f"""\
            [controller]
            submission_buffer_capacity = {MAX_QUEUED}
            [quotas.users.alice]
            max_running = 2
            submit_rate = 50
            [quotas.users.bob]
            max_queued = 100
            """
        )
    )
    return path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A controller no real worker serves (so that no fuzzed job runs), and a worker with a
    controller of its own, whose peer port is fuzzed."""
    with pytest.MonkeyPatch.context() as patch:
        # Debug logs of 100,000 calls would be most of the daemons' work.
        patch.setenv("BURST_LOG", "info")
        fuzzed = Cluster(tmp_path_factory.mktemp("fuzzed"))
        home = Cluster(tmp_path_factory.mktemp("home"))
        try:
            controller = fuzzed.controller("--config", str(_config(fuzzed.tmp / "burst.toml")))
            home.controller()
            peer = f"127.0.0.1:{free_port()}"
            worker = home.worker("fuzz-peer", "--peer-listen", peer, slots=1)
            home.wait_workers(1)
            targets = {
                "controller": Target(controller, fuzzed.addr, 0, valid=2),
                "worker": Target(worker, peer, 0, valid=3),
            }
            for target in targets.values():
                target.baseline_kb = target.rss_kb()
            credentials = [
                {},
                {"authorization": "Bearer not-a-token"},
                auth.bearer(fuzzed.token("admin")),
                auth.bearer(home.token("worker")),  # a thief's, at the peer port
                # two users with quotas, and the controller's workers
                auth.bearer(fuzzed.client_token("alice")),
                auth.bearer(fuzzed.client_token("bob")),
                auth.bearer(fuzzed.token("worker")),
            ]
            yield Fleet(targets, credentials)
        finally:
            fuzzed.close()
            home.close()


def _inputs(method: Method) -> st.SearchStrategy[bytes]:
    """Encoded requests: messages of the method's type, arbitrary bytes, and messages with
    arbitrary bytes after them."""
    encoded = messages(method.request.DESCRIPTOR, HINTS).map(lambda m: m.SerializeToString())
    return st.one_of(
        encoded,
        encoded,
        encoded,
        st.binary(max_size=200),
        st.tuples(encoded, st.binary(min_size=1, max_size=20)).map(b"".join),
    )


def _may_wait(method: Method, data: bytes) -> bool:
    """Whether this request may rightly wait longer than ANSWER_TIMEOUT."""
    if method.streaming:
        return True
    if method.name not in ("PollJob", "TakeOutputReads", "ListEvents"):
        return False
    try:
        return method.request.FromString(data).wait_ms > 0  # type: ignore[no-any-return]
    except Exception:  # not a PollJobRequest: refused at once
        return False


async def _call(channel: Channel, method: Method, data: bytes, refused: bool = False) -> StatusCode:
    """Send one request; the status it ended with (a wait given up on counts as OK). With
    ``refused`` (no valid token) the server may have closed the connection meanwhile."""
    waits = _may_wait(method, data)
    try:
        if method.streaming:
            # The first update comes at once; later ones wait for jobs no worker runs.
            updates = channel.server_stream(
                method.service, method.name, _Raw(data), method.response, timeout=ANSWER_TIMEOUT
            )
            async with aclosing(updates):
                async for _ in updates:
                    break
        else:
            await channel.unary_raw(
                method.service,
                method.name,
                data,
                timeout=WAIT_TIMEOUT if waits else ANSWER_TIMEOUT,
            )
    except RpcError as error:
        # A job's output may rightly not come in time: a --follow read of a job that no
        # worker runs, or a read queued for a fuzzed worker that takes none.
        rightly_late = not method.streaming or method.name == "ReadOutput"
        if error.code is StatusCode.DEADLINE_EXCEEDED and waits and rightly_late:
            return StatusCode.OK
        if refused and error.code is StatusCode.UNAVAILABLE:
            return error.code
        assert error.code in CLIENT_ERRORS, (
            f"{method.path} answered {error.code.name} ({error.message}) to {data!r}"
        )
        return error.code
    return StatusCode.OK


def _check_alive(fleet: Fleet) -> None:
    for name, target in fleet.targets.items():
        assert target.daemon.proc.poll() is None, f"the {name} died: {target.daemon.log()}"
        log = target.daemon.log()
        new, target.log_checked = log[target.log_checked :], len(log)
        assert "unexpected error" not in new and "Traceback" not in new, new
        grown_mb = (target.rss_kb() - target.baseline_kb) / 1024
        assert grown_mb < MAX_GROWTH_MB, f"the {name} grew by {grown_mb:.0f} MB"


async def _answers(target: Target, fleet: Fleet, method: Method) -> None:
    """The server still answers a well-formed call at once."""
    credential = fleet.credentials[target.valid]
    async with transport.open_channel(target.addr, metadata=credential) as channel:
        code = await _call(channel, method, method.request().SerializeToString())
    assert code in CLIENT_ERRORS


async def _send(target: Target, fleet: Fleet, method: Method, batch: list[Call]) -> None:
    async with AsyncExitStack() as stack:
        channels: dict[tuple[int, bool], Channel] = {}
        for _, credential, multiplex in batch:
            if (credential, multiplex) not in channels:
                channels[credential, multiplex] = await stack.enter_async_context(
                    transport.open_channel(
                        target.addr, metadata=fleet.credentials[credential], multiplex=multiplex
                    )
                )
        async with trio.open_nursery() as nursery:
            for data, credential, multiplex in batch:
                refused = credential != target.valid
                nursery.start_soon(_call, channels[credential, multiplex], method, data, refused)


# One input: the encoded request, which of the fleet's credentials, multiplexed or not.
Call = tuple[bytes, int, bool]


@pytest.mark.parametrize("method", METHODS, ids=lambda m: f"{m.server}{m.path}")
def test_random_requests_get_a_clear_answer(fleet: Fleet, method: Method) -> None:
    target = fleet.targets[method.server]
    calls = st.tuples(
        _inputs(method), st.sampled_from(range(len(fleet.credentials))), st.booleans()
    )

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        # The servers' state changes with every input: a failure does not shrink reliably, and
        # its input and the daemons' logs say what went wrong.
        phases=[Phase.explicit, Phase.generate],
    )
    @given(batch=st.lists(calls, min_size=BATCH, max_size=BATCH))
    def fuzz(batch: list[Call]) -> None:
        trio.run(_send, target, fleet, method, batch)

    fuzz()
    _check_alive(fleet)
    trio.run(_answers, target, fleet, method)


def test_the_fuzzed_strings_are_protobuf_text() -> None:
    """The strategies' own check: every text they draw encodes (no lone surrogates)."""

    @given(TEXT)
    def encodes(text: str) -> None:
        health_pb2.HealthCheckRequest(service=text).SerializeToString()

    encodes()

"""The Python client for a burst controller: submit, status, wait, cancel, list.

``Client`` is for trio programs; ``BlockingClient`` wraps it for ordinary scripts::

    from burstd.client import BlockingClient, process

    with BlockingClient("127.0.0.1:50051") as burst:
        ids = burst.submit_array(process("sh", "-c", "echo $BURST_ARRAY_INDEX"), range(100))
        for update in burst.wait(ids):
            print(update.pending, "left")

Both keep one connection open for all calls. Errors from the controller raise
``burstd.transport.RpcError`` with the gRPC status code and the controller's message.

``Client`` also runs on ``burstd.transport.oneshot``'s blocking channel (unary calls only, no
trio): importing this module imports no trio, ``Client.connect`` and ``BlockingClient`` do.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, Unpack

from burstd import arrays, credentials, tlsconfig, transport, wire
from burstd.config import DEFAULT_ADDR, parse_hostport
from proto.burst.v1 import job_pb2

if TYPE_CHECKING:  # imported by the methods that use them: each costs a command's start-up
    import ssl

    import trio

    from proto.burst.v1 import token_pb2

T = TypeVar("T")
CALL_TIMEOUT = 30.0
# Array and entry jobs go in one call up to this many; larger submissions go in pieces of this
# many (still all or nothing: see SubmitJobsRequest), so that no message gets huge.
ARRAY_CHUNK = 100_000


class SpecOptions(TypedDict, total=False):
    """What every kind of job accepts besides its command (all optional; None: the default)."""

    output_dir: str | None  # folder for <job_id>.stdout/.stderr; default: the worker's
    env: Mapping[str, str] | None  # added to the worker's environment
    cwd: str | None  # working directory; default: the worker's
    timeout: float | None  # wall-clock limit in seconds
    retries: int  # how often a failed run is run again
    name: str  # a label shown by `burst status` and `burst list`
    retry_on_exit: Iterable[int]  # retry (within retries) only failures with these exit codes
    crash_limit: int  # its workers may be lost this many times (0: the controller's limit)
    after: Iterable[str]  # job ids: it starts once every one succeeded, fails if one did not
    after_any: bool  # with after: it starts once they ended, however they did
    priority: int  # -1000 to 1000: higher ones start first (default 0)
    retry_delay: float  # seconds before the first retry, doubled at each (0: at once)
    max_fails: int  # its submission's unfinished jobs are cancelled at this many failed (0: never)


def _spec(options: SpecOptions) -> job_pb2.JobSpec:
    spec = job_pb2.JobSpec(
        env=dict(options.get("env") or {}),
        cwd=options.get("cwd") or "",
        timeout_seconds=options.get("timeout") or 0.0,
        retries=options.get("retries", 0),
        name=options.get("name", ""),
        retry_on_exit=list(options.get("retry_on_exit", ())),
        crash_limit=options.get("crash_limit", 0),
        after=list(options.get("after", ())),
        after_any=options.get("after_any", False),
        priority=options.get("priority", 0),
        retry_delay_seconds=options.get("retry_delay", 0.0),
        max_fails=options.get("max_fails", 0),
    )
    output_dir = options.get("output_dir")
    if output_dir is not None:
        spec.output_dir = output_dir
    return spec


def process(command: str, *args: str, **options: Unpack[SpecOptions]) -> job_pb2.JobSpec:
    """A job running ``command`` with ``args`` as its argv (never through a shell)."""
    spec = _spec(options)
    spec.process.command = command
    spec.process.args.extend(args)
    return spec


def python(entry_point: str, *args: str, **options: Unpack[SpecOptions]) -> job_pb2.JobSpec:
    """A job running the worker's Python interpreter with ``entry_point`` and ``args``."""
    spec = _spec(options)
    spec.python.entry_point = entry_point
    spec.python.args.extend(args)
    return spec


def docker(
    image: str, *args: str, command: Iterable[str] = (), **options: Unpack[SpecOptions]
) -> job_pb2.JobSpec:
    """A job running ``docker run image [command...] [args...]`` on the worker, its container
    removed when it ends."""
    spec = _spec(options)
    spec.docker.image = image
    spec.docker.command.extend(command)
    spec.docker.args.extend(args)
    return spec


class Submitted(list[str]):
    """The job ids of a submission, in order, and the submission's id (``sub-…``)."""

    def __init__(self, job_ids: Iterable[str], submission_id: str) -> None:
        super().__init__(job_ids)
        self.submission_id = submission_id


class Client:
    """An open connection to a controller, for trio code. Make one with ``Client.connect``."""

    def __init__(self, channel: transport.Channel) -> None:
        self._channel = channel
        # Why the controller's state store cannot be written, as the last listing said (empty
        # while it can): that listing is the store's as of its last commit.
        self.store_error = ""

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        addr: str = DEFAULT_ADDR,
        *,
        connect_timeout: float = 5.0,
        token: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> AsyncIterator[Client]:
        """Connect to the controller at ``addr``, sending ``token`` with every call (default:
        ``BURST_TOKEN``, else the ``admin.token`` of the local state directory, see
        ``burstd.credentials``; ``credentials.TokenNotFound`` if there is none). Over TLS with
        ``tls`` (``burstd.transport.tls.client_context(ca)``), else with the CA that
        ``BURST_TLS_CA`` names (and the client certificate of ``BURST_TLS_CERT`` and
        ``BURST_TLS_KEY``) if it is set, as ``burst`` and ``burstd up``'s commands do."""
        host, port = parse_hostport(addr)
        if token is None:
            token = credentials.local_token()
        if tls is None:
            tls = tlsconfig.environment_client_context()
        # Unary calls travel over one standing stream (proto/burst/v1/mux.proto): a call costs
        # both sides a fraction of an HTTP/2 stream's CPU, and answers sooner.
        channel = transport.Channel(
            host,
            port,
            connect_timeout=connect_timeout,
            multiplex=True,
            metadata=credentials.bearer(token),
            tls=tls,
        )
        async with channel:
            yield cls(channel)

    async def _call(
        self, method: str, request: Any, response_type: Any, *, waits: float = 0.0
    ) -> Any:
        """One unary call; ``waits``: seconds the controller may hold it (a long poll) on top of
        CALL_TIMEOUT."""
        return await self._channel.unary(
            wire.CONTROLLER_SERVICE, method, request, response_type, timeout=CALL_TIMEOUT + waits
        )

    async def submit(self, spec: job_pb2.JobSpec) -> str:
        """Queue one job; returns its id."""
        response = await self._call(
            "SubmitJob", job_pb2.SubmitJobRequest(spec=spec), job_pb2.SubmitJobResponse
        )
        return str(response.job_id)

    async def submit_many(self, specs: Iterable[job_pb2.JobSpec]) -> Submitted:
        """Queue many different jobs in one call, all or none."""
        response = await self._call(
            "SubmitJobs", job_pb2.SubmitJobsRequest(specs=specs), job_pb2.SubmitJobsResponse
        )
        return Submitted(response.job_ids, response.submission_id)

    async def submit_array(
        self, template: job_pb2.JobSpec, indices: range | str | Iterable[int]
    ) -> Submitted:
        """One job per index (BURST_ARRAY_INDEX), copies of ``template``, in order: a range (any
        step), a spec as ``burst submit --array`` takes (``"1-10:3,20,30-32"``, see
        :mod:`burstd.arrays`) or the indices themselves. All or none, at any size.

        A range with a positive step travels as its bounds, however long; other indices are
        listed on the wire. Raises ``ValueError`` for a malformed spec or an index listed twice.
        """
        if isinstance(indices, str):
            ranges = arrays.parse(indices)
        elif isinstance(indices, range):
            ranges = [indices]
        else:
            ranges = [range(index, index + 1) for index in indices]
        if len(ranges) == 1 and ranges[0].step > 0:
            whole = ranges[0]
            return await self._submit_pieces(
                job_pb2.SubmitJobsRequest(
                    template=template,
                    array_start=whole[first],
                    array_count=min(ARRAY_CHUNK, len(whole) - first),
                    array_step=whole.step,
                )
                for first in range(0, len(whole), ARRAY_CHUNK)
            )
        listed = [index for part in ranges for index in part]
        if len(set(listed)) != len(listed):
            raise ValueError("indices: an index is listed twice")
        return await self._submit_pieces(
            job_pb2.SubmitJobsRequest(
                template=template, array_indices=listed[first : first + ARRAY_CHUNK]
            )
            for first in range(0, len(listed), ARRAY_CHUNK)
        )

    async def submit_entries(self, template: job_pb2.JobSpec, entries: Iterable[str]) -> Submitted:
        """One job per entry (BURST_ENTRY), copies of ``template``. All or none, at any size."""
        entries = list(entries)
        return await self._submit_pieces(
            job_pb2.SubmitJobsRequest(
                template=template, entries=entries[start : start + ARRAY_CHUNK]
            )
            for start in range(0, len(entries), ARRAY_CHUNK)
        )

    async def _submit_pieces(self, pieces: Iterable[job_pb2.SubmitJobsRequest]) -> Submitted:
        """One submission in these pieces, accepted whole by the last one or refused whole
        (one piece: one plain call)."""
        ids: list[str] = []
        submission_id = ""
        requests = iter(pieces)
        request = next(requests, None)
        while request is not None:
            following = next(requests, None)
            if following is not None or submission_id:
                request.submission_id, request.more = submission_id, following is not None
                request.offset = len(ids)
            response = await self._call("SubmitJobs", request, job_pb2.SubmitJobsResponse)
            submission_id = response.submission_id
            ids.extend(response.job_ids)
            request = following
        return Submitted(ids, submission_id)

    async def submission(self, submission_id: str) -> job_pb2.SubmissionInfo:
        """A submission's jobs counted per state. Raises NotFound for an unknown one."""
        info: job_pb2.SubmissionInfo = await self._call(
            "GetSubmission",
            job_pb2.GetSubmissionRequest(submission_id=submission_id),
            job_pb2.SubmissionInfo,
        )
        return info

    async def resubmit_failed(self, submission_id: str) -> Submitted:
        """A new submission of the failed jobs of ``submission_id``, with their specs."""
        response = await self._call(
            "ResubmitJobs",
            job_pb2.ResubmitJobsRequest(submission_id=submission_id, failed=True),
            job_pb2.SubmitJobsResponse,
        )
        return Submitted(response.job_ids, response.submission_id)

    async def status(self, job_id: str) -> job_pb2.JobInfo:
        """Everything known about a job; its state is ``unknown`` for an id never submitted."""
        response = await self._call(
            "GetJobStatus", job_pb2.GetJobStatusRequest(job_id=job_id), job_pb2.GetJobStatusResponse
        )
        info: job_pb2.JobInfo = response.info
        return info

    async def wait(
        self, job_ids: Iterable[str] = (), *, all: bool = False, submission_id: str = ""
    ) -> AsyncIterator[job_pb2.WaitJobsUpdate]:
        """Progress updates until every job (of the caller's with ``all``, of a submission) has
        ended (the last update has ``pending == 0``)."""
        request = job_pb2.WaitJobsRequest(
            job_ids=list(job_ids), all=all, submission_id=submission_id
        )
        async for update in self._channel.server_stream(
            wire.CONTROLLER_SERVICE, "WaitJobs", request, job_pb2.WaitJobsUpdate
        ):
            yield update

    async def read_output(
        self,
        job_id: str,
        *,
        stderr: bool = False,
        attempt: int = 0,
        tail: int = 0,
        follow: bool = False,
    ) -> AsyncIterator[bytes]:
        """A job's stdout (or stderr) wherever it ran, a chunk at a time: one attempt's (0: the
        latest), its last ``tail`` lines only, and with ``follow`` until the job ends."""
        from proto.burst.v1 import output_pb2

        request = output_pb2.ReadOutputRequest(
            job_id=job_id, stderr=stderr, attempt=attempt, tail=tail, follow=follow
        )
        async for chunk in self._channel.server_stream(
            wire.CONTROLLER_SERVICE, "ReadOutput", request, output_pb2.OutputChunk
        ):
            yield chunk.data

    async def cancel(self, job_ids: Iterable[str]) -> list[str]:
        """Cancel jobs that have not ended; returns each job's state afterwards."""
        response = await self._call(
            "CancelJobs",
            job_pb2.CancelJobsRequest(job_ids=list(job_ids)),
            job_pb2.CancelJobsResponse,
        )
        return list(response.states)

    async def cancel_matching(
        self, *, submission_id: str = "", all: bool = False, state: str = ""
    ) -> int:
        """Cancel the unfinished jobs of a submission, or every one of the caller's (``all``),
        or those in ``state`` (each narrows the others); returns how many were."""
        response = await self._call(
            "CancelJobs",
            job_pb2.CancelJobsRequest(submission_id=submission_id, all=all, state=state),
            job_pb2.CancelJobsResponse,
        )
        return int(response.cancelled)

    async def forget(self, job_ids: Iterable[str]) -> int:
        """Forget finished jobs by id (jobs not finished are kept); returns how many were."""
        response = await self._call(
            "ForgetJobs",
            job_pb2.ForgetJobsRequest(job_ids=list(job_ids)),
            job_pb2.ForgetJobsResponse,
        )
        return int(response.forgotten)

    async def forget_finished(self, older_than: float = 0.0) -> int:
        """Forget every job that finished at least ``older_than`` seconds ago; returns how many."""
        response = await self._call(
            "ForgetJobs",
            job_pb2.ForgetJobsRequest(all_finished=True, older_than_seconds=older_than),
            job_pb2.ForgetJobsResponse,
        )
        return int(response.forgotten)

    async def list_jobs(
        self,
        state: str = "",
        *,
        page: int = 1000,
        all_users: bool = False,
        submission_id: str = "",
        name: str = "",
    ) -> AsyncIterator[job_pb2.JobInfo]:
        """Every job of the caller (or every job in ``state``, of a submission, of a name) in
        submission order, fetched a page at a time; ``all_users`` (admins only): every
        user's."""
        after = ""
        while True:
            jobs, after = await self.list_page(
                state, after, page, all_users=all_users, submission_id=submission_id, name=name
            )
            for info in jobs:
                yield info
            if not after:
                return

    async def list_page(
        self,
        state: str = "",
        after: str = "",
        limit: int = 1000,
        *,
        all_users: bool = False,
        submission_id: str = "",
        name: str = "",
        brief: bool = False,
    ) -> tuple[Sequence[job_pb2.JobInfo], str]:
        """At most ``limit`` of the caller's jobs (or of its jobs in ``state``, of a submission,
        of a name; ``all_users``, admins only: of every user's) after the job ``after`` (empty:
        from the first), in submission order, and what to pass as ``after`` for the next page
        (empty: there is none). ``brief``: without what they run and wait for (kind,
        command, cwd, env_names, after, after_any), which the controller then need not decode."""
        response = await self._listing(
            state, after, limit, all_users, submission_id, name, brief=brief
        )
        return response.jobs, str(response.next_after)

    async def list_columns(
        self,
        columns: Sequence[str],
        state: str = "",
        after: str = "",
        limit: int = 1000,
        *,
        all_users: bool = False,
        submission_id: str = "",
        name: str = "",
    ) -> tuple[job_pb2.JobColumns, str]:
        """The page :meth:`list_page` lists, as columns: only the JobColumns fields named in
        ``columns`` filled, one value a job each (a table of many jobs costs the controller and
        the reader far less so than a JobInfo message a job)."""
        response = await self._listing(
            state, after, limit, all_users, submission_id, name, columns=columns
        )
        return response.columns, str(response.next_after)

    async def _listing(
        self,
        state: str,
        after: str,
        limit: int,
        all_users: bool,
        submission_id: str,
        name: str,
        **options: Any,
    ) -> job_pb2.ListJobsResponse:
        """One ListJobs call; ``options``: how the jobs are to be answered."""
        request = job_pb2.ListJobsRequest(
            state=state,
            after=after,
            limit=limit,
            all_users=all_users,
            submission_id=submission_id,
            name=name,
            **options,
        )
        response: job_pb2.ListJobsResponse = await self._call(
            "ListJobs", request, job_pb2.ListJobsResponse
        )
        self.store_error = response.store_error
        return response

    async def workers(self) -> list[job_pb2.WorkerInfo]:
        response = await self._call(
            "ListWorkers", job_pb2.ListWorkersRequest(), job_pb2.ListWorkersResponse
        )
        return list(response.workers)

    async def events(
        self, after: int = 0, *, job_id: str = "", worker_id: str = "", wait_ms: int = 0
    ) -> job_pb2.ListEventsResponse:
        """Stored events numbered above ``after``, of this job and worker (empty: any), waiting
        up to ``wait_ms`` for one when there is none; pass ``next_after`` as ``after`` next."""
        response: job_pb2.ListEventsResponse = await self._call(
            "ListEvents",
            job_pb2.ListEventsRequest(
                after=after, job_id=job_id, worker_id=worker_id, wait_ms=wait_ms
            ),
            job_pb2.ListEventsResponse,
            waits=wait_ms / 1000,
        )
        return response

    async def overview(self, failures: int = 0) -> job_pb2.GetOverviewResponse:
        """Jobs by state, the workers, the jobs ended so far and the latest ``failures`` failed
        jobs (0: the controller's default), as ``burst top`` shows them (admin only)."""
        response: job_pb2.GetOverviewResponse = await self._call(
            "GetOverview",
            job_pb2.GetOverviewRequest(failures=failures),
            job_pb2.GetOverviewResponse,
        )
        return response

    async def drain(self, worker_id: str, *, undrain: bool = False) -> job_pb2.WorkerInfo | None:
        """Give a worker no new work, also once it registers again; the jobs it holds run to
        their end (admin only). Raises NotFound for a worker not registered. ``undrain``: end
        its drain instead (NotFound if it is not drained); None if it is not registered."""
        response: job_pb2.DrainWorkerResponse = await self._call(
            "DrainWorker",
            job_pb2.DrainWorkerRequest(worker_id=worker_id, undrain=undrain),
            job_pb2.DrainWorkerResponse,
        )
        return response.worker if response.HasField("worker") else None

    # -- tokens (an admin token only) --

    async def create_token(
        self,
        user: str,
        role: str,
        *,
        expires_in: float = 0.0,
        worker_ids: Iterable[str] = (),
    ) -> tuple[token_pb2.TokenInfo, str]:
        """A new token for ``user`` with ``role`` (client, worker or admin): what the controller
        keeps of it, and the token itself (shown this once)."""
        from proto.burst.v1 import token_pb2

        response = await self._call(
            "CreateToken",
            token_pb2.CreateTokenRequest(
                user=user, role=role, expires_in_seconds=expires_in, worker_ids=worker_ids
            ),
            token_pb2.CreateTokenResponse,
        )
        return response.info, str(response.token)

    async def tokens(self) -> list[token_pb2.TokenInfo]:
        """Every token the controller knows, revoked ones included, oldest first."""
        from proto.burst.v1 import token_pb2

        response = await self._call(
            "ListTokens", token_pb2.ListTokensRequest(), token_pb2.ListTokensResponse
        )
        return list(response.tokens)

    async def revoke_token(self, token_id: str) -> token_pb2.TokenInfo:
        """Revoke a token: refused from its next call on."""
        from proto.burst.v1 import token_pb2

        response = await self._call(
            "RevokeToken",
            token_pb2.RevokeTokenRequest(token_id=token_id),
            token_pb2.RevokeTokenResponse,
        )
        info: token_pb2.TokenInfo = response.info
        return info


class BlockingClient:
    """``Client`` for code without trio: a background thread runs trio and the connection.

    Use it as a context manager (or call ``close()``); every method blocks until the controller
    answered and raises what the async method raises.
    """

    def __init__(
        self,
        addr: str = DEFAULT_ADDR,
        *,
        connect_timeout: float = 5.0,
        token: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        import trio

        self._ready: queue.Queue[BaseException | None] = queue.Queue()
        self._token: trio.lowlevel.TrioToken | None = None
        self._client: Client | None = None
        self._stop: trio.Event | None = None
        connect = functools.partial(
            Client.connect, addr, connect_timeout=connect_timeout, token=token, tls=tls
        )
        self._thread = threading.Thread(target=trio.run, args=(self._main, connect), daemon=True)
        self._thread.start()
        error = self._ready.get()
        if error is not None:
            self._thread.join()
            raise error

    async def _main(self, connect: Callable[[], AbstractAsyncContextManager[Client]]) -> None:
        import trio

        try:
            async with connect() as client:
                self._client, self._token, self._stop = (
                    client,
                    trio.lowlevel.current_trio_token(),
                    trio.Event(),
                )
                self._ready.put(None)
                await self._stop.wait()
        except BaseException as error:
            if self._token is None:
                self._ready.put(error)
                return
            raise

    def _run(self, fn: Callable[[Client], Awaitable[T]]) -> T:
        import trio

        assert self._client is not None and self._token is not None
        client = self._client
        return trio.from_thread.run(lambda: fn(client), trio_token=self._token)

    def submit(self, spec: job_pb2.JobSpec) -> str:
        return self._run(lambda c: c.submit(spec))

    def submit_many(self, specs: Iterable[job_pb2.JobSpec]) -> Submitted:
        specs = list(specs)
        return self._run(lambda c: c.submit_many(specs))

    def submit_array(
        self, template: job_pb2.JobSpec, indices: range | str | Iterable[int]
    ) -> Submitted:
        if not isinstance(indices, range | str):
            indices = list(indices)
        return self._run(lambda c: c.submit_array(template, indices))

    def submit_entries(self, template: job_pb2.JobSpec, entries: Iterable[str]) -> Submitted:
        entries = list(entries)
        return self._run(lambda c: c.submit_entries(template, entries))

    def submission(self, submission_id: str) -> job_pb2.SubmissionInfo:
        return self._run(lambda c: c.submission(submission_id))

    def resubmit_failed(self, submission_id: str) -> Submitted:
        return self._run(lambda c: c.resubmit_failed(submission_id))

    def cancel_matching(
        self, *, submission_id: str = "", all: bool = False, state: str = ""
    ) -> int:
        return self._run(
            lambda c: c.cancel_matching(submission_id=submission_id, all=all, state=state)
        )

    def status(self, job_id: str) -> job_pb2.JobInfo:
        return self._run(lambda c: c.status(job_id))

    def cancel(self, job_ids: Iterable[str]) -> list[str]:
        job_ids = list(job_ids)
        return self._run(lambda c: c.cancel(job_ids))

    def forget(self, job_ids: Iterable[str]) -> int:
        job_ids = list(job_ids)
        return self._run(lambda c: c.forget(job_ids))

    def forget_finished(self, older_than: float = 0.0) -> int:
        return self._run(lambda c: c.forget_finished(older_than))

    def workers(self) -> list[job_pb2.WorkerInfo]:
        return self._run(lambda c: c.workers())

    def drain(self, worker_id: str, *, undrain: bool = False) -> job_pb2.WorkerInfo | None:
        return self._run(lambda c: c.drain(worker_id, undrain=undrain))

    def list_jobs(
        self, state: str = "", *, all_users: bool = False, submission_id: str = "", name: str = ""
    ) -> list[job_pb2.JobInfo]:
        async def collect(client: Client) -> list[job_pb2.JobInfo]:
            listed = client.list_jobs(
                state, all_users=all_users, submission_id=submission_id, name=name
            )
            return [info async for info in listed]

        return self._run(collect)

    def wait(
        self, job_ids: Iterable[str] = (), *, all: bool = False, submission_id: str = ""
    ) -> Iterator[job_pb2.WaitJobsUpdate]:
        """Yields progress updates as they come, until every job has ended."""
        import trio

        job_ids = list(job_ids)
        updates: queue.Queue[job_pb2.WaitJobsUpdate | BaseException | None] = queue.Queue()

        async def pump(client: Client) -> None:
            try:
                async for update in client.wait(job_ids, all=all, submission_id=submission_id):
                    updates.put(update)
            except Exception as error:
                updates.put(error)
            else:
                updates.put(None)

        assert self._token is not None
        client = self._client
        assert client is not None
        trio.from_thread.run_sync(
            lambda: trio.lowlevel.spawn_system_task(pump, client), trio_token=self._token
        )
        while (item := updates.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        import trio

        if self._stop is not None and self._thread.is_alive():
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join()

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

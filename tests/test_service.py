"""The RPC handlers in process, without a network: what they encode for the worker."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio
import trio.testing

from burstd import transport, wire
from burstd.auth import Caller, Role
from burstd.controller import admission
from burstd.controller import service as service_module
from burstd.controller.admission import SpecError
from burstd.controller.service import ControllerService
from burstd.controller.table import Job, JobTable, NewJob
from proto.burst.v1 import job_pb2, worker_pb2

# The caller of the client calls here: an admin sees every job.
ADMIN = Caller("admin", Role.ADMIN, "token-admin")


def _spec(command: str, **env: str) -> job_pb2.JobSpec:
    return job_pb2.JobSpec(process=job_pb2.ProcessSpec(command=command, args=["a"]), env=env)


# Lengths whose varints take one, two and three bytes.
SPECS = [_spec("true"), _spec("x" * 200), _spec("true", BIG="y" * 20_000)]


async def _service_with_jobs() -> tuple[ControllerService, list[str]]:
    service = ControllerService(JobTable(track_changes=False))
    await service.register_worker(
        worker_pb2.RegisterWorkerRequest(worker_id="w1", slots=4, queue_capacity=4), ADMIN
    )
    reply = await service.submit_jobs(job_pb2.SubmitJobsRequest(specs=SPECS), ADMIN)
    ids = list(reply.job_ids)
    # An attempt that takes two varint bytes, as after many lost leases.
    service.table.jobs[ids[1]].attempt = 300
    return service, ids


async def test_a_batch_poll_carries_each_spec_as_submitted() -> None:
    service, ids = await _service_with_jobs()
    poll = job_pb2.PollJobRequest(worker_id="w1", max_jobs=4, batch=True)
    response = await service.poll_job(poll, ADMIN)
    got = [(job.job_id, job.spec, job.attempt) for job in response.jobs]
    assert got == list(zip(ids, SPECS, [1, 300, 1], strict=True))
    assert response.WhichOneof("result") is None
    # What goes on the wire is the message's own encoding.
    again = job_pb2.PollJobResponse.FromString(response.SerializeToString())
    assert again == response


@pytest.mark.parametrize("batch", [False, True])
async def test_a_poll_with_nothing_to_lease_says_so(batch: bool) -> None:
    service = ControllerService(JobTable(track_changes=False))
    await service.register_worker(worker_pb2.RegisterWorkerRequest(worker_id="w1", slots=1), ADMIN)
    poll = job_pb2.PollJobRequest(worker_id="w1", batch=batch)
    response = await service.poll_job(poll, ADMIN)
    assert list(response.jobs) == []
    assert response.WhichOneof("result") == (None if batch else "empty")


async def test_a_single_poll_carries_one_job_in_its_own_field() -> None:
    service, ids = await _service_with_jobs()
    for job_id, spec, attempt in zip(ids, SPECS, [1, 300, 1], strict=True):
        response = await service.poll_job(job_pb2.PollJobRequest(worker_id="w1"), ADMIN)
        assert response.WhichOneof("result") == "job"
        assert (response.job.job_id, response.job.spec, response.job.attempt) == (
            job_id,
            spec,
            attempt,
        )
        assert list(response.jobs) == []


@pytest.mark.parametrize(
    "value", [0, 1, 127, 128, 300, 16_383, 16_384, 2**21 - 1, 2**21, 2**35, 2**63 - 1, -1, -(2**63)]
)
def test_varints_are_protobufs_own(value: int) -> None:
    """Array jobs' specs carry their index encoded here, beside protobuf's encoding of the rest."""
    encoded = job_pb2.JobSpec(array_index=value).SerializeToString()
    assert b"\x48" + admission.varint(value) == encoded  # array_index: field 9, a varint


def test_an_array_is_made_a_slice_at_a_time_as_it_would_be_at_once() -> None:
    """Admission validates an array once and makes its jobs only when asked for, a slice at a
    time: each job's spec is the template's with its own index, as protobuf encodes it."""
    template = job_pb2.JobSpec(process=job_pb2.ProcessSpec(command="true"), retries=2, name="a")
    request = job_pb2.SubmitJobsRequest(template=template, array_start=126, array_count=5)
    jobs = admission.admit_batch(request, admission.Limits())
    assert len(jobs) == 5
    expected = []
    for index in range(126, 131):
        spec = job_pb2.JobSpec()
        spec.CopyFrom(template)
        spec.array_index = index
        expected.append(spec)
    for part in (jobs[:2], jobs[2:]):
        for job in part:
            assert (job.retries, job.name) == (2, "a")
    made = [*jobs[:2], *jobs[2:]]
    assert [job_pb2.JobSpec.FromString(job.spec) for job in made] == expected
    assert jobs[-1] == made[-1] and jobs[0] == made[0]
    with pytest.raises(IndexError):
        jobs[5]
    # listed specs and an array in one call: the listed ones first
    request.specs.append(template)
    both = admission.admit_batch(request, admission.Limits())
    assert [job.spec for job in both] == [template.SerializeToString(), *(j.spec for j in made)]


def _indices(jobs: Sequence[NewJob]) -> list[int]:
    return [job_pb2.JobSpec.FromString(job.spec).array_index for job in jobs]


def test_an_array_with_a_step_or_listed_indices_gives_each_job_its_own() -> None:
    template = job_pb2.JobSpec(process=job_pb2.ProcessSpec(command="true"))
    limits = admission.Limits()
    stepped = job_pb2.SubmitJobsRequest(template=template, array_start=1, array_count=4)
    stepped.array_step = 3
    assert _indices(admission.admit_batch(stepped, limits)) == [1, 4, 7, 10]
    assert _indices(admission.admit_batch(stepped, limits)[1:3]) == [4, 7]
    listed = job_pb2.SubmitJobsRequest(template=template, array_indices=[5, 0, 300])
    assert _indices(admission.admit_batch(listed, limits)) == [5, 0, 300]
    for bad, message in [
        (
            job_pb2.SubmitJobsRequest(template=template, array_indices=[1, -2]),
            r"array_indices\[1\]",
        ),
        (
            job_pb2.SubmitJobsRequest(template=template, array_indices=[1], entries=["a"]),
            "exclude each other",
        ),
        (
            job_pb2.SubmitJobsRequest(
                template=template, array_start=2**62, array_count=3, array_step=2**62
            ),
            "array_start: out of range",
        ),
    ]:
        with pytest.raises(admission.SpecError, match=message):
            admission.admit_batch(bad, limits)


async def test_a_large_submission_is_built_in_slices_with_other_calls_served_between(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Building a large submission's jobs takes passes of the event loop, not one long one:
    other tasks run between its slices. It is queued whole, under consecutive ids."""
    monkeypatch.setattr(service_module, "SUBMIT_SLICE", 2)
    table = JobTable(track_changes=False)
    log: list[str] = []
    new_jobs = table.new_jobs

    def logged(
        first: int, jobs: Sequence[NewJob], now: float, owner: str, submission: int
    ) -> list[Job]:
        log.append("slice")
        assert not table.jobs  # nothing is queued until every slice is built
        return new_jobs(first, jobs, now, owner, submission)

    monkeypatch.setattr(table, "new_jobs", logged)
    service = ControllerService(table)
    template = job_pb2.JobSpec(process=job_pb2.ProcessSpec(command="true"))
    request = job_pb2.SubmitJobsRequest(template=template, array_count=5)
    submitted: list[str] = []

    async def other() -> None:
        for _ in range(10):
            log.append("other")
            await trio.lowlevel.checkpoint()

    async def submit() -> None:
        submitted.extend((await service.submit_jobs(request, ADMIN)).job_ids)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(submit)
        nursery.start_soon(other)
    slices = [i for i, entry in enumerate(log) if entry == "slice"]
    assert len(slices) == 3
    assert "other" in log[slices[0] : slices[-1]]
    assert submitted == [wire.job_id(n) for n in range(1, 6)]
    assert list(table.jobs) == submitted


async def test_a_registration_with_a_batch_number_near_the_top_of_uint64_is_refused() -> None:
    """Found by tests/test_fuzz.py: the controller numbered the worker's next batch one above
    it, which no longer fit the reply's uint64 (INTERNAL for that worker's polls ever after)."""
    service = ControllerService(JobTable(track_changes=False))
    huge = worker_pb2.RegisterWorkerRequest(worker_id="w1", slots=1, lease_seq=2**64 - 1)
    with pytest.raises(SpecError, match="lease_seq"):
        await service.register_worker(huge, ADMIN)
    assert "w1" not in service.table.workers
    await service.register_worker(
        worker_pb2.RegisterWorkerRequest(worker_id="w1", slots=1, lease_seq=2**40), ADMIN
    )
    await service.submit_jobs(job_pb2.SubmitJobsRequest(specs=SPECS[:1]), ADMIN)
    poll = await service.poll_job(job_pb2.PollJobRequest(worker_id="w1", max_jobs=1), ADMIN)
    assert poll.lease_seq == 2**40 + 1


@pytest.mark.parametrize("after", ["job-99999999999999999999", "job-\u0661", "job-", "x"])
async def test_listing_after_a_string_that_is_no_job_id_is_refused(after: str) -> None:
    service = ControllerService(JobTable(track_changes=False))
    with pytest.raises(SpecError, match="after"):
        await service.list_jobs(job_pb2.ListJobsRequest(after=after), ADMIN)


async def test_every_call_of_a_replaced_worker_process_is_refused_naming_the_id() -> None:
    """Two processes of worker id w1: the second registration replaces the first, whose calls
    (and a long-poll already waiting) are refused with FAILED_PRECONDITION from then on."""
    service = ControllerService(JobTable(track_changes=False))

    def register(instance: int) -> worker_pb2.RegisterWorkerRequest:
        return worker_pb2.RegisterWorkerRequest(
            worker_id="w1", slots=1, queue_capacity=1, instance=instance
        )

    await service.register_worker(register(1), ADMIN)
    waiting = job_pb2.PollJobRequest(
        worker_id="w1", max_jobs=1, wait_ms=10_000, batch=True, instance=1
    )
    first: list[BaseException] = []

    async def poll_first() -> None:
        try:
            await service.poll_job(waiting, ADMIN)
        except transport.FailedPrecondition as error:
            first.append(error)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll_first)
        await trio.testing.wait_all_tasks_blocked()
        await service.register_worker(register(2), ADMIN)
        await service.submit_jobs(job_pb2.SubmitJobsRequest(specs=SPECS[:1]), ADMIN)
    assert len(first) == 1 and "'w1'" in first[0].message  # woken by the job: not handed it
    calls = [
        service.poll_job(job_pb2.PollJobRequest(worker_id="w1", batch=True, instance=1), ADMIN),
        service.heartbeat(worker_pb2.HeartbeatRequest(worker_id="w1", instance=1), ADMIN),
        service.report_job_results(
            job_pb2.ReportJobResultsRequest(worker_id="w1", instance=1), ADMIN
        ),
        service.register_worker(register(1), ADMIN),
    ]
    for call in calls:
        with pytest.raises(transport.FailedPrecondition, match="worker id 'w1'"):
            await call
    # The new process gets the job; the prototype's workers (no instance) are not told apart.
    reply = await service.poll_job(
        job_pb2.PollJobRequest(worker_id="w1", max_jobs=1, batch=True, instance=2), ADMIN
    )
    assert len(reply.jobs) == 1
    await service.heartbeat(worker_pb2.HeartbeatRequest(worker_id="w1"), ADMIN)


async def test_a_brief_listing_leaves_out_what_the_jobs_run() -> None:
    service, ids = await _service_with_jobs()
    full = await service.list_jobs(job_pb2.ListJobsRequest(), ADMIN)
    brief = await service.list_jobs(job_pb2.ListJobsRequest(brief=True), ADMIN)
    assert [info.job_id for info in brief.jobs] == [info.job_id for info in full.jobs] == ids
    assert [(info.kind, list(info.command)) for info in full.jobs] == [
        ("process", [spec.process.command, "a"]) for spec in SPECS
    ]
    assert list(full.jobs[2].env_names) == ["BIG"]
    for info in brief.jobs:
        assert (info.kind, list(info.command), info.cwd, list(info.env_names)) == ("", [], "", [])
    # everything else as in the full listing
    for info in full.jobs:
        for field in ("kind", "command", "env_names", "after", "after_any"):
            info.ClearField(field)
    assert list(brief.jobs) == list(full.jobs)


def columns_of(infos: Sequence[job_pb2.JobInfo], names: Sequence[str]) -> job_pb2.JobColumns:
    """What JobColumns holds of these jobs, by its definition against JobInfo."""
    columns = job_pb2.JobColumns()
    for info in infos:
        last = info.attempts[-1] if info.attempts else job_pb2.AttemptOutput()
        derived = {
            "has_exit_code": info.HasField("exit_code"),
            "usage": last.usage,
            "has_usage": last.HasField("usage"),
            "command": job_pb2.Argv(args=info.command),
        }
        for name in names:
            value = derived[name] if name in derived else getattr(info, name)
            getattr(columns, name).append(value)
    return columns


async def test_a_listing_in_columns_holds_what_jobinfos_hold() -> None:
    """Every JobColumns field, for jobs leased, ended with an exit code (measured) or a signal,
    and retried: the values the full listing's JobInfos have."""
    service, ids = await _service_with_jobs()
    retried = job_pb2.JobSpec(
        process=job_pb2.ProcessSpec(command="x"), retries=1, name="n", priority=4
    )
    more = await service.submit_jobs(job_pb2.SubmitJobsRequest(specs=[retried]), ADMIN)
    ids.append(more.job_ids[0])
    await service.poll_job(job_pb2.PollJobRequest(worker_id="w1", max_jobs=4, batch=True), ADMIN)
    usage = job_pb2.Usage(user_cpu_seconds=0.5, system_cpu_seconds=0.25, max_rss_kib=2048)
    reports = [
        job_pb2.ReportJobResultRequest(worker_id="w1", job_id=ids[0], reason="exit", usage=usage),
        job_pb2.ReportJobResultRequest(worker_id="w1", job_id=ids[1], signal=9, reason="signal"),
        job_pb2.ReportJobResultRequest(worker_id="w1", job_id=ids[3], exit_code=3, reason="exit"),
    ]
    for report in reports:
        await service.report_job_result(report, ADMIN)
    names = list(job_pb2.JobColumns.DESCRIPTOR.fields_by_name)
    full = await service.list_jobs(job_pb2.ListJobsRequest(), ADMIN)
    states = [info.state for info in full.jobs]
    # the last one retried, and leased again at once
    assert states == ["succeeded", "failed", "leased", "leased"], states
    assert [info.attempt for info in full.jobs] == [1, 300, 1, 2]
    listed = await service.list_jobs(job_pb2.ListJobsRequest(columns=names), ADMIN)
    assert list(listed.jobs) == []
    assert listed.columns == columns_of(full.jobs, names)
    assert list(listed.columns.has_usage) == [True, False, False, False]
    # only the fields asked for, each once, a page at a time
    page = await service.list_jobs(
        job_pb2.ListJobsRequest(columns=["state", "state"], limit=2, after=ids[0]), ADMIN
    )
    assert page.columns == job_pb2.JobColumns(state=["failed", "leased"])
    assert page.next_after == ids[2]
    with pytest.raises(SpecError, match="columns: no job column 'colour'"):
        await service.list_jobs(job_pb2.ListJobsRequest(columns=["job_id", "colour"]), ADMIN)

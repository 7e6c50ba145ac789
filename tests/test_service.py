"""The RPC handlers in process, without a network: what they encode for the worker."""

from __future__ import annotations

import pytest

from burstd.controller import admission
from burstd.controller.service import ControllerService
from burstd.controller.table import JobTable
from proto.burst.v1 import job_pb2, worker_pb2


def _spec(command: str, **env: str) -> job_pb2.JobSpec:
    return job_pb2.JobSpec(process=job_pb2.ProcessSpec(command=command, args=["a"]), env=env)


# Lengths whose varints take one, two and three bytes.
SPECS = [_spec("true"), _spec("x" * 200), _spec("true", BIG="y" * 20_000)]


async def _service_with_jobs() -> tuple[ControllerService, list[str]]:
    service = ControllerService(JobTable(track_changes=False))
    await service.register_worker(
        worker_pb2.RegisterWorkerRequest(worker_id="w1", slots=4, queue_capacity=4), {}
    )
    reply = await service.submit_jobs(job_pb2.SubmitJobsRequest(specs=SPECS), {})
    ids = list(reply.job_ids)
    # An attempt that takes two varint bytes, as after many lost leases.
    service.table.jobs[ids[1]].attempt = 300
    return service, ids


async def test_a_batch_poll_carries_each_spec_as_submitted() -> None:
    service, ids = await _service_with_jobs()
    poll = job_pb2.PollJobRequest(worker_id="w1", max_jobs=4, batch=True)
    response = await service.poll_job(poll, {})
    got = [(job.job_id, job.spec, job.attempt) for job in response.jobs]
    assert got == list(zip(ids, SPECS, [1, 300, 1], strict=True))
    assert response.WhichOneof("result") is None
    # What goes on the wire is the message's own encoding.
    again = job_pb2.PollJobResponse.FromString(response.SerializeToString())
    assert again == response


@pytest.mark.parametrize("batch", [False, True])
async def test_a_poll_with_nothing_to_lease_says_so(batch: bool) -> None:
    service = ControllerService(JobTable(track_changes=False))
    await service.register_worker(worker_pb2.RegisterWorkerRequest(worker_id="w1", slots=1), {})
    poll = job_pb2.PollJobRequest(worker_id="w1", batch=batch)
    response = await service.poll_job(poll, {})
    assert list(response.jobs) == []
    assert response.WhichOneof("result") == (None if batch else "empty")


async def test_a_single_poll_carries_one_job_in_its_own_field() -> None:
    service, ids = await _service_with_jobs()
    for job_id, spec, attempt in zip(ids, SPECS, [1, 300, 1], strict=True):
        response = await service.poll_job(job_pb2.PollJobRequest(worker_id="w1"), {})
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
